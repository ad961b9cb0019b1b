"""Time rules of dispatch (issue 16): scheduled jobs (``not_before``) and quiet hours.

- A job with ``not_before`` (UTC) is not started before that time; it keeps its place
  in the queue, and the jobs behind it may start meanwhile.
- A printer with ``quiet_hours = [start, end]`` (local times in ``power.timezone``)
  starts no print from ``start`` until ``end`` (a window may span midnight). A print
  already running carries on.

Pure: times are given (UTC seconds) and the zone is an already loaded ``tzinfo``.
"""

from __future__ import annotations

import datetime as dt

from printfarmd.config import PrinterConfig
from printfarmd.models import Job


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def waits_until(job: Job, wall: float) -> float | None:
    """The UTC time ``job`` may start at, if that is later than ``wall``; else ``None``."""
    if job.not_before is not None and job.not_before > wall:
        return job.not_before
    return None


def quiet_until(config: PrinterConfig, tz: dt.tzinfo, wall: float) -> float | None:
    """If ``wall`` falls in the printer's quiet hours, the UTC time they end; else ``None``.

    The window is ``[start, end)`` in local time; ``start > end`` spans midnight. The end
    is the next local ``end`` after ``wall`` (on a day the clocks change, the zone's
    rules decide what that instant is).
    """
    if len(config.quiet_hours) != 2:
        return None
    start, end = (_minutes(t) for t in config.quiet_hours)
    local = dt.datetime.fromtimestamp(wall, tz)
    now = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60.0
    quiet = start <= now < end if start < end else (now >= start or now < end)
    if not quiet:
        return None
    ends = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if ends <= local:
        ends += dt.timedelta(days=1)  # wall-clock arithmetic in the zone
    return max(ends.timestamp(), wall)


def local_clock(wall: float, tz: dt.tzinfo) -> str:
    """``HH:MM`` of ``wall`` in ``tz`` (for messages)."""
    return dt.datetime.fromtimestamp(wall, tz).strftime("%H:%M")
