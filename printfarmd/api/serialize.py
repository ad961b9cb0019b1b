"""Domain values to JSON-able dicts for the REST API, through the one contract
(``api/shapes.py`` declares each response object once; kept here under the old names)."""

from __future__ import annotations

from typing import Any

from printfarmd.api.shapes import EVENT, JOB, PRINTER, iso
from printfarmd.models import Event, Job, Printer

__all__ = ["event_json", "iso", "job_json", "printer_json"]


def job_json(job: Job) -> dict[str, Any]:
    return JOB.dump(job)


def printer_json(p: Printer, eta: float | None = None) -> dict[str, Any]:
    return PRINTER.dump((p, eta))


def event_json(ev: Event) -> dict[str, Any]:
    return EVENT.dump(ev)
