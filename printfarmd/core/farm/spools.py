"""Spools (issue 16): which Spoolman spool each printer's tool holds, and what routing
makes of it.

- **Binding**: each tool of a printer (``printers[].tools``) is bound to a spool id, or
  to none. A spool is in one place: binding it somewhere unbinds it elsewhere.
- **Routing**: a printer with a bound spool takes a job only from a spool that holds the
  job's material (when Spoolman names one), its colour (when the job asks for one) and
  at least the job's filament weight plus the margins (``spoolman.weight_margin`` grams
  and ``weight_margin_percent``) — counting the usage not yet confirmed by Spoolman. A
  spool not read yet, deleted in Spoolman or archived takes no job. A printer with no
  spool bound (or Spoolman off) is routed by its configured materials, as before.
- **Capabilities**: the materials of the bound spools come first in the printer's
  materials (the "loaded" one routing prefers), then what the driver reports or the
  configuration lists.
- **Usage**: ``upkeep.attempt_ended`` queues what a print used (``PendingUsage``); when
  Spoolman confirms it (``UsageReported``) it is taken off the spool's remaining weight
  until the next read.

Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from printfarmd.core.farm import common
from printfarmd.core.farm.inputs import BindSpool, SpoolsRefreshed, UsageReported
from printfarmd.core.farm.outputs import (
    AppendEvent,
    Log,
    MarkUsage,
    NewEvent,
    PutBinding,
    PutSpool,
    SpoolmanKick,
)
from printfarmd.core.farm.state import Now, Slot, Tx, capabilities_of
from printfarmd.core.farm.upkeep_state import PendingUsage, Policy, SpoolInfo
from printfarmd.errors import Conflict, ValidationFailed
from printfarmd.models import Capabilities, Job


def pending_by_spool(pending: Mapping[str, PendingUsage]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in pending.values():
        out[p.spool_id] = out.get(p.spool_id, 0.0) + p.grams
    return out


def left(info: SpoolInfo, pending: Mapping[int, float]) -> float | None:
    """Grams left on the spool, counting usage Spoolman has not confirmed yet."""
    if info.remaining is None:
        return None
    return info.remaining - pending.get(info.id, 0.0)


def bound(slot: Slot) -> list[tuple[int, int]]:
    """(tool, spool id) of each bound tool of ``slot``."""
    return [(tool, sid) for tool, sid in enumerate(slot.spools) if sid is not None]


def spool_refusal(
    policy: Policy,
    info: SpoolInfo | None,
    spool_id: int,
    job: Job,
    pending: Mapping[int, float],
) -> str | None:
    """Why spool ``spool_id`` (``info``) cannot take ``job``, or ``None`` if it can."""
    if info is None:
        return f"spool {spool_id} has not been read from Spoolman yet"
    if info.missing:
        return f"spool {spool_id} no longer exists in Spoolman"
    if info.archived:
        return f"spool {spool_id} is archived in Spoolman"
    if job.material and info.material and info.material != job.material.upper():
        return f"spool {spool_id} holds {info.material}, the job needs {job.material.upper()}"
    if job.colour:
        if not info.colours:
            return f"spool {spool_id} has no colour in Spoolman (the job asks for {job.colour})"
        if job.colour not in info.colours:
            shown = "/".join(info.colours)
            return f"spool {spool_id} is {shown}, the job asks for {job.colour}"
    if job.filament_weight is not None:
        grams = left(info, pending)
        weight = job.filament_weight * (1.0 - min(max(job.resume_progress, 0.0), 100.0) / 100.0)
        need = policy.needed_grams(weight)
        if grams is not None and grams < need:
            return f"spool {spool_id} holds {max(grams, 0.0):.0f} g, the job needs {need:.0f} g"
    return None


def fit(
    policy: Policy,
    spools: Mapping[int, SpoolInfo],
    pending: Mapping[int, float],
    slot: Slot,
    job: Job,
) -> tuple[int | None, str | None]:
    """The spool ``slot`` would print ``job`` from: ``(spool id, None)``, or
    ``(None, reason)`` when no bound spool can take it. ``(None, None)``: the printer has
    no spool bound (or Spoolman is off), so spools do not restrict it."""
    if not policy.spoolman:
        return None, None
    tools = bound(slot)
    if not tools:
        return None, None
    reasons: list[str] = []
    for _, sid in tools:
        why = spool_refusal(policy, spools.get(sid), sid, job, pending)
        if why is None:
            return sid, None
        reasons.append(why)
    return None, "; ".join(reasons)


def spool_pairs(slot: Slot, spools: Mapping[int, SpoolInfo]) -> list[tuple[str, str]]:
    """(material, colour) of ``slot``'s bound spools (known, not deleted, naming a
    material), in tool order; a spool of several colours gives one pair per colour."""
    out: list[tuple[str, str]] = []
    for _, sid in bound(slot):
        info = spools.get(sid)
        if info is None or info.missing or not info.material:
            continue
        out.extend((info.material, c) for c in info.colours or ("",))
    return out


def capabilities(slot: Slot, spools: Mapping[int, SpoolInfo]) -> Capabilities:
    """``slot``'s capabilities: the bound spools' materials (with their colours) first,
    then what the driver reports loaded (``slot.loaded``) or else the configured
    materials; ``colours`` index-aligned with ``materials`` (``""``: unknown)."""
    base = capabilities_of(slot.config)
    if slot.loaded:
        rest = list(zip(slot.loaded, slot.loaded_colours or ("",) * len(slot.loaded), strict=False))
    else:
        rest = [
            (m, base.colours[k] if k < len(base.colours) else "")
            for k, m in enumerate(base.materials)
        ]
    pairs = list(dict.fromkeys([*spool_pairs(slot, spools), *rest]))
    colours = tuple(c for _, c in pairs)
    return msgspec.structs.replace(
        base,
        materials=tuple(m for m, _ in pairs),
        colours=colours if any(colours) else (),
    )


def refresh_capabilities(tx: Tx, slot: Slot) -> Slot:
    """Recompute ``slot``'s capabilities (config, reported, spools); kicks dispatch when
    they change."""
    caps = capabilities(slot, tx.spools)
    if caps == slot.capabilities:
        return slot
    slot = common.set_slot(tx, slot, capabilities=caps)
    tx.kick = True
    return slot


def _put_info(tx: Tx, info: SpoolInfo) -> None:
    spools = dict(tx.spools)
    spools[info.id] = info
    tx.set("spools", spools)
    tx.record(PutSpool(info))


def bind(tx: Tx, cmd: BindSpool, now: Now) -> Slot:
    """Bind ``cmd.spool_id`` to a tool (see the module docstring). Raises ``Conflict``
    when Spoolman is not configured, ``ValidationFailed`` for a tool the printer lacks."""
    if not tx.policy.spoolman:
        raise Conflict("Spoolman is not configured (set spoolman.url)")
    slot = common.get_slot(tx, cmd.printer_id)
    tools = max(slot.config.tools, 1)
    if not 0 <= cmd.tool < tools:
        noun = "tool" if tools == 1 else "tools"
        raise ValidationFailed(
            f"tool: printer {slot.id} has {tools} {noun} (0 to {tools - 1})", field="tool"
        )
    if cmd.spool_id is not None and cmd.spool_id < 0:
        raise ValidationFailed("spool_id: must be >= 0", field="spool_id")
    if isinstance(cmd.info, SpoolInfo) and cmd.info.id == cmd.spool_id:
        known = tx.spools.get(cmd.info.id)
        if known is None or msgspec.structs.replace(
            known, updated_at=0.0
        ) != msgspec.structs.replace(cmd.info, updated_at=0.0):
            _put_info(tx, cmd.info)
    if cmd.spool_id is not None:
        for other in list(tx.slots()):
            for tool, sid in bound(other):
                if sid == cmd.spool_id and (other.id, tool) != (slot.id, cmd.tool):
                    _set_tool(tx, other, tool, None, now, f"moved to {slot.id} tool {cmd.tool}")
        slot = tx.printer(slot.id) or slot
    _set_tool(tx, slot, cmd.tool, cmd.spool_id, now, None)
    tx.effect(SpoolmanKick())
    return tx.printer(slot.id) or slot


def _set_tool(
    tx: Tx, slot: Slot, tool: int, spool_id: int | None, now: Now, reason: str | None
) -> None:
    spools = list(slot.spools) + [None] * max(0, max(slot.config.tools, 1) - len(slot.spools))
    previous = spools[tool] if tool < len(spools) else None
    if previous == spool_id:
        return
    spools[tool] = spool_id
    while spools and spools[-1] is None:
        spools.pop()
    slot = common.set_slot(tx, slot, spools=tuple(spools))
    refresh_capabilities(tx, slot)
    tx.record(
        PutBinding(slot.id, tool, spool_id, now.wall),
        AppendEvent(
            NewEvent(
                "printer.spool_bound",
                now.wall,
                printer_id=slot.id,
                reason=reason,
                data={"tool": tool, "spool_id": spool_id, "previous": previous},
            )
        ),
    )
    tx.effect(
        Log(
            "info",
            "spool bound" if spool_id is not None else "spool unbound",
            {"printer": slot.id, "tool": tool, "spool": spool_id, "previous": previous},
        )
    )
    tx.kick = True


def refreshed(tx: Tx, ev: SpoolsRefreshed, now: Now) -> None:
    """Spoolman was read: keep what changed, recompute the printers that hold it."""
    changed: set[int] = set()
    for info in ev.spools:
        if not isinstance(info, SpoolInfo):
            continue
        known = tx.spools.get(info.id)
        if known is None or msgspec.structs.replace(
            known, updated_at=0.0
        ) != msgspec.structs.replace(info, updated_at=0.0):
            _put_info(tx, info)
            changed.add(info.id)
    for sid in ev.missing:
        known = tx.spools.get(sid)
        if known is None or not known.missing:
            _put_info(
                tx,
                msgspec.structs.replace(known or SpoolInfo(sid), missing=True, updated_at=now.wall),
            )
            changed.add(sid)
            tx.effect(Log("warning", "spool not found in Spoolman", {"spool": sid}))
    if not changed:
        return
    for slot in list(tx.slots()):
        if any(sid in changed for _, sid in bound(slot)):
            refresh_capabilities(tx, slot)
    tx.kick = True


def usage_reported(tx: Tx, ev: UsageReported, now: Now) -> None:
    """Spoolman has the usage ``ev.key`` (or it was dropped): it no longer counts as
    pending, and an applied one is taken off the spool until the next read."""
    status = "sent" if ev.applied else "dropped"
    tx.record(MarkUsage(ev.key, status, now.wall, ev.error))
    entry = tx.pending.get(ev.key)
    if entry is None:
        return
    pending = dict(tx.pending)
    del pending[ev.key]
    tx.set("pending", pending)
    info = tx.spools.get(entry.spool_id)
    if ev.applied and info is not None:
        remaining = None if info.remaining is None else info.remaining - entry.grams
        _put_info(
            tx, msgspec.structs.replace(info, remaining=remaining, used=info.used + entry.grams)
        )
    if not ev.applied:
        tx.effect(
            Log(
                "warning",
                "spool usage not reported",
                {"spool": entry.spool_id, "key": ev.key, "reason": ev.error},
            )
        )
    tx.kick = True
