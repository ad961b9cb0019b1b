"""The values of the farm's upkeep state (issue 16): spools, counters, the policy.

Plain frozen values, imported by ``state`` (the slots and the farm hold them) and by the
rule modules (``spools``, ``upkeep``, ``power``, ``calendar``, ``cost``). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from printfarmd.config import Config, PrinterConfig

#: The group of printers whose ``power_group`` is empty.
DEFAULT_POWER_GROUP = "default"


class SpoolInfo(msgspec.Struct, frozen=True):
    """What the farm knows of one Spoolman spool (as last read, and stored).

    ``remaining`` is Spoolman's remaining weight in grams (``None``: Spoolman does not
    know it, e.g. no initial weight), with the usage the farm reported since the last
    read taken off; ``missing``: Spoolman answered that the spool does not exist.
    """

    id: int
    material: str | None = None
    colours: tuple[str, ...] = ()
    remaining: float | None = None
    used: float = 0.0
    price_per_kg: float | None = None
    name: str = ""
    archived: bool = False
    missing: bool = False
    updated_at: float = 0.0


class PendingUsage(msgspec.Struct, frozen=True):
    """Usage the farm owes Spoolman (an outbox row not yet confirmed)."""

    key: str
    spool_id: int
    grams: float


class Counters(msgspec.Struct, frozen=True):
    """Use of a printer since its last recorded maintenance."""

    print_seconds: float = 0.0
    prints: int = 0
    grams: float = 0.0
    #: When the counting began (the last maintenance, or the first print); UTC.
    since: float | None = None

    @property
    def hours(self) -> float:
        return self.print_seconds / 3600.0


class GroupLimit(msgspec.Struct, frozen=True):
    """At most ``max_starts`` starts within ``window`` seconds (``max_starts`` 0: none)."""

    max_starts: int = 0
    window: float = 60.0


class Policy(msgspec.Struct, frozen=True):
    """The upkeep rules from the configuration (constant while the daemon runs)."""

    spoolman: bool = False
    weight_margin: float = 5.0
    weight_margin_percent: float = 0.0
    every_hours: float = 0.0
    every_prints: int = 0
    every_grams: float = 0.0
    default_limit: GroupLimit = GroupLimit()
    limits: tuple[tuple[str, GroupLimit], ...] = ()
    tz: dt.tzinfo = dt.UTC
    currency: str = "EUR"
    filament_price_per_kg: float = 0.0
    energy_price_per_kwh: float = 0.0

    def limit(self, group: str) -> GroupLimit:
        for name, limit in self.limits:
            if name == group:
                return limit
        return self.default_limit

    def needed_grams(self, weight: float) -> float:
        """The spool weight a job of ``weight`` grams needs: its weight plus the margins."""
        return weight * (1.0 + self.weight_margin_percent / 100.0) + self.weight_margin


def power_group(config: PrinterConfig) -> str:
    return config.power_group.strip() or DEFAULT_POWER_GROUP


def policy_of(config: Config, tz: dt.tzinfo = dt.UTC) -> Policy:
    """The ``Policy`` of ``config`` (``tz``: the quiet hours' zone, resolved by the edge)."""
    sm, mt, pw, cost = config.spoolman, config.maintenance, config.power, config.cost
    return Policy(
        spoolman=bool(sm.url),
        weight_margin=sm.weight_margin,
        weight_margin_percent=sm.weight_margin_percent,
        every_hours=mt.every_hours,
        every_prints=mt.every_prints,
        every_grams=mt.every_grams,
        default_limit=GroupLimit(pw.max_starts, pw.window),
        limits=tuple((g.name, GroupLimit(g.max_starts, g.window)) for g in pw.groups),
        tz=tz,
        currency=cost.currency,
        filament_price_per_kg=cost.filament_price_per_kg,
        energy_price_per_kwh=cost.energy_price_per_kwh,
    )
