"""Durable state: the one SQLite file. ``store.store`` is the only module with SQL."""

from printfarmd.store.store import NewEvent, Store, StoreStatistics, open_store

__all__ = ["NewEvent", "Store", "StoreStatistics", "open_store"]
