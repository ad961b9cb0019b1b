"""Durable state: the one SQLite file, or a PostgreSQL database (issue 18). SQL lives
only in this package (see ``store.py``)."""

from printfarmd.core.farm.outputs import NewEvent
from printfarmd.store.store import Store, StoreStatistics, open_backend, open_store

__all__ = ["NewEvent", "Store", "StoreStatistics", "open_backend", "open_store"]
