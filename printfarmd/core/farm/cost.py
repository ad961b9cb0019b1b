"""What a print attempt costs (issue 16): filament by weight, electricity by time.

- Filament: the grams the attempt used (the file's filament weight times how much of it
  was printed) times the price per kg of the spool it printed from (Spoolman's spool
  price over its initial weight, else the filament's), or ``cost.filament_price_per_kg``
  when that is not known.
- Electricity: the printer's ``power_watts`` (mean draw while printing) times the
  attempt's print time, times ``cost.energy_price_per_kwh``.

Pure.
"""

from __future__ import annotations

import msgspec

from printfarmd.core.farm.upkeep_state import Policy, SpoolInfo


class Cost(msgspec.Struct, frozen=True):
    filament: float = 0.0
    energy_kwh: float = 0.0
    energy: float = 0.0

    @property
    def total(self) -> float:
        return self.filament + self.energy


def price_per_kg(policy: Policy, spool: SpoolInfo | None) -> float:
    if spool is not None and spool.price_per_kg is not None:
        return spool.price_per_kg
    return policy.filament_price_per_kg


def of_attempt(
    policy: Policy, grams: float | None, seconds: float, watts: float, spool: SpoolInfo | None
) -> Cost:
    """The cost of one attempt that used ``grams`` over ``seconds`` on a ``watts`` printer."""
    filament = (grams or 0.0) / 1000.0 * price_per_kg(policy, spool)
    kwh = max(watts, 0.0) * max(seconds, 0.0) / 3_600_000.0
    return Cost(round(filament, 6), round(kwh, 6), round(kwh * policy.energy_price_per_kwh, 6))


def estimate(
    policy: Policy,
    weight: float | None,
    estimated_time: float | None,
    watts: float,
    spool: SpoolInfo | None,
) -> Cost:
    """What a whole print of the job would cost (before it ran)."""
    return of_attempt(policy, weight, estimated_time or 0.0, watts, spool)
