"""The farm core: the live state and the pure decisions on it (no trio, no I/O, no clock).

``decide(tx, input, now)`` is the one entry point (``decide.py``); ``state.py`` holds the
state and the overlay decisions write into; ``inputs.py`` and ``outputs.py`` what goes in
and comes out. The decisions are split by what they decide: ``intake`` (jobs in and out
of the queue), ``dispatch``, ``failures`` (retries, the watchdog), ``reports`` (what
printers say, stray prints), ``fleet`` (printers and the farm as a whole, start-up).
"""

from printfarmd.core.farm.decide import decide
from printfarmd.core.farm.state import FarmState, Now, Settings, Slot, Tx, is_live

__all__ = ["FarmState", "Now", "Settings", "Slot", "Tx", "decide", "is_live"]
