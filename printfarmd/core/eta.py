"""ETA from the slicer's estimate adjusted by a printer's observed speed (pure).

A printer's *speed factor* is how long its prints really take per second of slicer
estimate: an exponentially weighted mean of ``actual / estimated`` over its finished
jobs (recent jobs weigh ``WEIGHT``). A printer with no history uses the estimate as is.
"""

from __future__ import annotations

import math

#: Weight of the newest finished job in the mean.
WEIGHT = 0.3


def learn(factor: float | None, estimated: float | None, actual: float) -> float | None:
    """The new speed factor after a job estimated at ``estimated`` s took ``actual`` s.

    A job without a usable estimate or duration teaches nothing (``factor`` is returned).
    """
    if estimated is None or not (estimated > 0 and actual > 0):
        return factor
    ratio = actual / estimated
    if not math.isfinite(ratio):
        return factor
    return ratio if factor is None else (1 - WEIGHT) * factor + WEIGHT * ratio


def adjusted(estimated: float | None, factor: float | None) -> float | None:
    """The expected duration: the estimate scaled by the printer's factor, if known."""
    if estimated is None:
        return None
    return estimated if factor is None else estimated * factor
