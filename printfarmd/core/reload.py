"""What a configuration reload (SIGHUP) does to the printers: a pure plan.

Printers are matched by id. A printer whose driver settings are unchanged but whose
capabilities, name or ``auto_clear`` changed is *updated* in place: its driver (and its
connection) is untouched, even while it prints. A printer whose driver settings changed
is *restarted* (old driver stopped, new one started). Unchanged printers are not
mentioned: nothing happens to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from printfarmd.config import PrinterConfig


class PrinterReloadPlan(msgspec.Struct, frozen=True):
    added: tuple[PrinterConfig, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[PrinterConfig, ...] = ()
    restarted: tuple[PrinterConfig, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated or self.restarted)


def same_driver(a: PrinterConfig, b: PrinterConfig) -> bool:
    """Whether ``a`` and ``b`` need the same driver instance (driver kind and options)."""

    def key(p: PrinterConfig) -> tuple[object, ...]:
        return (p.driver, p.simulator, p.moonraker, p.octoprint, p.prusalink, p.bambu)

    return key(a) == key(b)


def plan_printer_reload(
    old: Mapping[str, PrinterConfig], new: Sequence[PrinterConfig]
) -> PrinterReloadPlan:
    """The changes that turn the printers ``old`` (by id) into ``new``, in config order."""
    new_ids = {p.id for p in new}
    added = tuple(p for p in new if p.id not in old)
    removed = tuple(pid for pid in old if pid not in new_ids)
    changed = [p for p in new if p.id in old and old[p.id] != p]
    updated = tuple(p for p in changed if same_driver(old[p.id], p))
    restarted = tuple(p for p in changed if not same_driver(old[p.id], p))
    return PrinterReloadPlan(added, removed, updated, restarted)
