"""Slicer metadata from G-code comments, on bytes (pure).

This is the foundation's small reader: estimated print time, filament type and
nozzle diameter from PrusaSlicer-family (``; key = value``) and Cura (``;TIME:``)
comments in the head and tail of a file. It never invents a field that the file
does not contain.
"""

from __future__ import annotations

import re

import attrs

HEAD_TAIL_BYTES = 1 << 20

_DURATION = re.compile(r"(?:(\d+)d\s*)?(?:(\d+)h\s*)?(?:(\d+)m\s*)?(?:(\d+)s)?")
_PRUSA_TIME = re.compile(rb";\s*estimated printing time(?: \(normal mode\))?\s*=\s*([^\r\n]+)")
_CURA_TIME = re.compile(rb";TIME:(\d+(?:\.\d+)?)")
_FILAMENT = re.compile(rb";\s*filament_type\s*=\s*([^\r\n;]+)")
_CURA_FILAMENT = re.compile(rb";\s*(?:MATERIAL|Filament type)\s*:\s*([^\r\n]+)")
_NOZZLE = re.compile(rb";\s*nozzle_diameter\s*=\s*([0-9.]+)")


@attrs.frozen
class GcodeMeta:
    estimated_time: float | None = None
    filament_type: str | None = None
    nozzle_diameter: float | None = None


def parse_duration(text: str) -> float | None:
    """``"1h 2m 3s"`` -> 3723.0; ``None`` if no component is present."""
    m = _DURATION.fullmatch(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def parse(head: bytes, tail: bytes = b"") -> GcodeMeta:
    """Metadata from the first and last MiB of a file. Never raises on bad input."""
    blob = head + b"\n" + tail
    est: float | None = None
    if m := _PRUSA_TIME.search(blob):
        est = parse_duration(m.group(1).decode("utf-8", "replace"))
    elif m := _CURA_TIME.search(blob):
        est = float(m.group(1))
    material: str | None = None
    if m := (_FILAMENT.search(blob) or _CURA_FILAMENT.search(blob)):
        first = m.group(1).decode("utf-8", "replace").split(";")[0].strip()
        material = first.upper() or None
    nozzle: float | None = None
    if m := _NOZZLE.search(blob):
        try:
            nozzle = float(m.group(1).split(b",")[0])
        except ValueError:
            nozzle = None
    return GcodeMeta(estimated_time=est, filament_type=material, nozzle_diameter=nozzle)
