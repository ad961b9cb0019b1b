"""Domain values to JSON-able dicts for the REST API (and back for timestamps)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from printfarmd.models import Event, Job, Printer


def iso(ts: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and ``Z``, or ``None``."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "filename": job.filename,
        "name": job.name,
        "state": job.state.value,
        "priority": job.priority,
        "position": job.position,
        "jumped": job.front > 0,
        "copies": job.copies,
        "copy_index": job.copy_index,
        "group_id": job.group_id,
        "material": job.material,
        "colour": job.colour,
        "nozzle_diameter": job.nozzle_diameter,
        "required_tags": list(job.required_tags),
        "min_bed": list(job.min_bed) if job.min_bed else None,
        "sku": job.sku,
        "estimated_time": job.estimated_time,
        "printer_id": job.printer_id,
        "retry_count": job.retry_count,
        "failed_printers": list(job.failed_printers),
        "progress": round(job.progress, 2),
        "eta": iso(job.eta),
        "retry_at": iso(job.retry_at),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "last_error": job.last_error,
        "tracking": job.tracking,
        "source": job.source,
        # issue 16
        "filament_weight": job.filament_weight,
        "not_before": iso(job.not_before),
        "spool_id": job.spool_id,
    }


def printer_json(p: Printer, eta: float | None = None) -> dict[str, Any]:
    caps = p.capabilities
    return {
        "id": p.id,
        "name": p.name,
        "driver": p.driver,
        "state": p.state.value,
        "plate_clear": p.plate_clear,
        "current_job": p.current_job,
        "progress": round(p.progress, 2),
        "eta": iso(eta),
        "message": p.message,
        "maintenance": p.maintenance,
        "auto_clear": p.auto_clear,
        "materials": list(caps.materials),
        "colours": list(caps.colours),
        "nozzle_diameter": caps.nozzle_diameter,
        "bed_size": list(caps.bed_size),
        "tags": list(caps.tags),
        "updated_at": iso(p.updated_at) if p.updated_at else None,
    }


def event_json(ev: Event) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "type": ev.type,
        "at": iso(ev.at),
        "job_id": ev.job_id,
        "printer_id": ev.printer_id,
        "from_state": ev.from_state,
        "to_state": ev.to_state,
        "reason": ev.reason,
        "data": ev.data,
    }
