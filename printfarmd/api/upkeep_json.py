"""The JSON of costs (issue 16), shared by the REST views, the history and the notifier.
Pure: no Quart, no owner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from printfarmd.store.upkeep import Usage

__all__ = ["attempt_cost", "job_cost"]


def job_cost(currency: str, usages: Sequence[Usage]) -> dict[str, Any]:
    """A job's cost over its attempts so far."""
    filament = sum(u.filament_cost for u in usages)
    energy = sum(u.energy_cost for u in usages)
    return {
        "currency": currency,
        "filament": round(filament, 4),
        "energy": round(energy, 4),
        "total": round(filament + energy, 4),
        "filament_g": round(sum(u.grams or 0.0 for u in usages), 3),
        "energy_kwh": round(sum(u.energy_kwh for u in usages), 6),
        "attempts": len(usages),
    }


def attempt_cost(usage: Usage | None) -> dict[str, Any] | None:
    """One history attempt's cost (``None`` for an attempt recorded before issue 16, or
    still printing)."""
    if usage is None:
        return None
    return {
        "currency": usage.currency,
        "filament": round(usage.filament_cost, 4),
        "energy": round(usage.energy_cost, 4),
        "total": round(usage.filament_cost + usage.energy_cost, 4),
        "energy_kwh": round(usage.energy_kwh, 6),
        "spool_id": usage.spool_id,
        "spoolman": usage.report,
    }
