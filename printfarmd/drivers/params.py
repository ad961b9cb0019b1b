"""The print settings a job carries to its printer (``JobSpec.parameters``). Pure.

The names are the MQTT job-handler spec's (``shared/seeds/mqtt-job-handler.md``, the
assignment's ``parameters``): ``layerHeight`` (mm), ``infill`` (percent),
``nozzleTemp`` and ``bedTemp`` (degrees C). They are taken from the file's slicer
comments (``core.gcode_meta``); a setting the file does not state is left out, never
guessed. ``overrides`` (e.g. from a job request) win over the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from printfarmd.core.gcode_meta import GcodeMeta

#: Every parameter name, with the range a value must lie in.
PARAMETER_RANGES: Mapping[str, tuple[float, float]] = {
    "layerHeight": (0.01, 5.0),
    "infill": (0.0, 100.0),
    "nozzleTemp": (0.0, 500.0),
    "bedTemp": (0.0, 200.0),
}


def assignment_parameters(
    meta: GcodeMeta, overrides: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``JobSpec.parameters`` for a file with metadata ``meta``. Pure.

    ``layerHeight`` <- ``layer_height``, ``infill`` <- ``infill``, ``nozzleTemp`` <-
    ``first_layer_extr_temp``, ``bedTemp`` <- ``first_layer_bed_temp``; then
    ``overrides``. Raises ``ValueError`` naming the key for an override that is not one
    of these names, not a finite number, or out of its range.
    """
    derived = {
        "layerHeight": meta.layer_height,
        "infill": meta.infill,
        "nozzleTemp": meta.first_layer_extr_temp,
        "bedTemp": meta.first_layer_bed_temp,
    }
    out = {
        name: float(value)
        for name, value in derived.items()
        if value is not None and _in_range(name, value)
    }
    for name, value in (overrides or {}).items():
        if name not in PARAMETER_RANGES:
            raise ValueError(
                f"parameters.{name}: unknown parameter (known: {', '.join(PARAMETER_RANGES)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"parameters.{name}: expected a number")
        if not _in_range(name, value):
            low, high = PARAMETER_RANGES[name]
            raise ValueError(f"parameters.{name}: must be between {low:g} and {high:g}")
        out[name] = float(value)
    return out


def _in_range(name: str, value: float) -> bool:
    low, high = PARAMETER_RANGES[name]
    return math.isfinite(value) and low <= value <= high
