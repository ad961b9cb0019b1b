"""Upkeep rules in the pure farm core (issue 16): spool-aware routing, usage and cost at
the end of an attempt, maintenance counters, staggered starts, scheduled jobs and quiet
hours. No clock, no threads: the harness plays the owner (decide, apply, dispatch when
asked, fire timers when their time comes) and a dict store that checks conditional
writes, as in ``test_farm_core.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import initialize, invariant, multiple, precondition, rule

from printfarmd.config import PrinterConfig
from printfarmd.core.farm import FarmState, Now, Slot, Tx, decide, eligibility
from printfarmd.core.farm import inputs as i
from printfarmd.core.farm import outputs as out
from printfarmd.core.farm.upkeep_state import Counters, GroupLimit, Policy, SpoolInfo
from printfarmd.drivers.base import JobFinished, StatusReport
from printfarmd.errors import FarmError
from printfarmd.models import Job, JobState, PrinterState
from tests.test_farm_core import MATERIALS, FarmMachine, World

EPOCH = 1_800_000_000.0  # 2027-01-15 08:00 UTC


class Harness:
    """The owner and the store, for the core alone."""

    def __init__(
        self,
        printers: list[PrinterConfig],
        policy: Policy,
        spools: dict[int, SpoolInfo] | None = None,
    ) -> None:
        if spools is None:
            spools = {}
        self.state = FarmState(
            printers=[Slot.from_config(p) for p in printers], policy=policy, spools=spools
        )
        self.mono = 0.0
        self.rows: dict[str, Job] = {}
        self.records: list[Any] = []
        self.effects: list[Any] = []
        self.timers: list[tuple[float, out.TimerKind, str]] = []
        self.starts: list[tuple[float, str, str]] = []  # (wall, printer, job)
        self.step(i.Startup())
        for p in printers:
            self.report(p.id, PrinterState.IDLE)

    @property
    def wall(self) -> float:
        return EPOCH + self.mono

    def now(self) -> Now:
        return Now(self.wall, self.mono)

    def step(self, inp: i.Input) -> Any:
        tx = Tx(self.state)
        layer = Tx(tx)
        try:
            reply = decide(layer, inp, self.now())
        except FarmError as exc:
            return exc
        layer.merge()
        for rec in tx.records:
            if isinstance(rec, out.InsertJob):
                self.rows[rec.job.id] = rec.job
            elif isinstance(rec, out.UpdateJob):
                assert self.rows[rec.job.id].state is rec.expect
                self.rows[rec.job.id] = rec.job
        self.records.extend(tx.records)
        self.effects.extend(tx.effects)
        self.state.apply(tx)
        for effect in tx.effects:
            if isinstance(effect, out.ArmTimer):
                self.timers.append((effect.at, effect.kind, effect.key))
            elif isinstance(effect, out.StartPrint):
                self.starts.append((self.wall, effect.printer_id, effect.job.id))
        if tx.kick and not isinstance(inp, i.Dispatch):
            self.step(i.Dispatch())
        return reply

    def report(self, pid: str, state: PrinterState, job: str | None = None, p: float = 0) -> None:
        self.step(i.Report(StatusReport(pid, state, job, p)))

    def submit(self, **kw: Any) -> list[str]:
        facts = i.FileFacts(filament_weight=kw.pop("weight", None))
        reply = self.step(i.CreateJobs(i.JobRequest(filename="a.gcode", **kw), facts))
        assert not isinstance(reply, FarmError), reply
        return list(reply.ids)

    def accept_starts(self) -> None:
        """Every hand-over in flight is accepted and the printer reports the job."""
        for effect in list(self.effects):
            if isinstance(effect, out.StartPrint):
                self.effects.remove(effect)
                self.step(i.StartResult(effect.printer_id, effect.job.id, i.StartOutcome.ACCEPTED))
                self.report(effect.printer_id, PrinterState.PRINTING, effect.job.id, 1.0)

    def finish(self, pid: str) -> None:
        job = self.state.printers[pid].current_job
        assert job is not None
        self.step(i.Report(JobFinished(pid, job)))
        self.report(pid, PrinterState.IDLE)
        self.step(i.ClearPlate(pid))

    def advance(self, seconds: float) -> None:
        """Time passes; timers that come due fire in order."""
        end = self.mono + seconds
        while True:
            due = sorted(t for t in self.timers if t[0] <= end)
            if not due:
                break
            at, kind, key = due[0]
            self.timers.remove(due[0])
            self.mono = max(self.mono, at)
            self.step(i.TimerFired(kind, key))
        self.mono = end

    def of(self, kind: type) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]


def printer(pid: str, materials: tuple[str, ...] = ("PLA",), **kw: Any) -> PrinterConfig:
    return PrinterConfig(id=pid, materials=materials, **kw)


SPOOLMAN = Policy(spoolman=True, weight_margin=5.0, weight_margin_percent=0.0)


def bind(h: Harness, pid: str, info: SpoolInfo, tool: int = 0) -> None:
    reply = h.step(i.BindSpool(pid, tool, info.id, info))
    assert not isinstance(reply, FarmError), reply


# ====================================================================== spools


def test_a_job_needing_60_g_never_goes_to_a_spool_holding_40_g() -> None:
    h = Harness([printer("light"), printer("heavy")], SPOOLMAN)
    bind(h, "light", SpoolInfo(1, "PLA", ("#FF0000",), remaining=40.0))
    bind(h, "heavy", SpoolInfo(2, "PLA", ("#FF0000",), remaining=500.0))
    (jid,) = h.submit(weight=60.0)
    assert h.rows[jid].printer_id == "heavy"
    assert h.rows[jid].spool_id == 2
    # With the heavy one busy, the next 60 g job waits rather than run the light spool out.
    (second,) = h.submit(weight=60.0)
    assert h.rows[second].state is JobState.QUEUED
    why = eligibility.explain_job(h.state, h.rows[second], h.state.printers.values(), h.wall)
    assert why is not None and "light: spool 1 holds 40 g, the job needs 65 g" in why
    # A light job fits the light spool.
    (small,) = h.submit(weight=20.0)
    assert h.rows[small].printer_id == "light"


def test_colour_and_material_come_from_the_spool() -> None:
    h = Harness([printer("red", ("PLA",)), printer("blue", ("PLA",))], SPOOLMAN)
    bind(h, "red", SpoolInfo(1, "PETG", ("#FF0000",), remaining=900.0))
    bind(h, "blue", SpoolInfo(2, "PLA", ("#0000FF",), remaining=900.0))
    # The spool's material is what the printer holds now: PETG routes to "red".
    assert h.state.printers["red"].capabilities.materials[0] == "PETG"
    (petg,) = h.submit(material="PETG")
    assert h.rows[petg].printer_id == "red"
    (green,) = h.submit(material="PLA", colour="#00ff00")
    assert h.rows[green].state is JobState.QUEUED  # no green spool anywhere
    (blue,) = h.submit(material="PLA", colour="0000ff")
    assert h.rows[blue].printer_id == "blue"


def test_unread_deleted_and_archived_spools_take_no_job() -> None:
    h = Harness([printer("p")], SPOOLMAN)
    h.step(i.BindSpool("p", 0, 7, None))  # Spoolman did not answer at binding
    (jid,) = h.submit(weight=10.0)
    assert h.rows[jid].state is JobState.QUEUED
    h.step(i.SpoolsRefreshed((SpoolInfo(7, "PLA", remaining=100.0, archived=True),)))
    assert h.rows[jid].state is JobState.QUEUED
    h.step(i.SpoolsRefreshed((SpoolInfo(7, "PLA", remaining=100.0),)))
    assert h.rows[jid].state is JobState.PRINTING
    h.accept_starts()
    h.finish("p")
    h.step(i.SpoolsRefreshed((), missing=(7,)))
    (nxt,) = h.submit(weight=10.0)
    assert h.rows[nxt].state is JobState.QUEUED


def test_usage_is_queued_with_the_transition_and_confirmed_once() -> None:
    h = Harness(
        [printer("p", power_watts=120.0)],
        msgspec.structs.replace(SPOOLMAN, energy_price_per_kwh=0.5),
    )
    bind(h, "p", SpoolInfo(3, "PLA", remaining=1000.0, price_per_kg=20.0))
    (_jid,) = h.submit(weight=50.0)
    h.accept_starts()
    h.advance(3600.0)
    h.finish("p")
    (usage,) = h.of(out.RecordUsage)
    assert (usage.status, usage.spool_id, usage.grams, usage.report) == ("completed", 3, 50.0, True)
    assert usage.seconds == pytest.approx(3600.0, abs=1.0)
    assert usage.filament_cost == pytest.approx(1.0)  # 50 g at 20/kg
    assert usage.energy_kwh == pytest.approx(0.12, abs=1e-3)
    assert usage.energy_cost == pytest.approx(0.06, abs=1e-3)
    # The outbox row is written in the very commit of printing -> post_process.
    commit = [r for r in h.records if isinstance(r, out.UpdateJob | out.RecordUsage)]
    ended = next(
        n
        for n, r in enumerate(commit)
        if isinstance(r, out.UpdateJob) and r.job.state is JobState.POST_PROCESS
    )
    assert commit[ended + 1] is usage
    assert list(h.state.pending) == [usage.key]
    # Owed usage counts against the spool until Spoolman confirms it.
    assert h.state.spools[3].remaining == 1000.0
    h.step(i.UsageReported(usage.key, True))
    assert not h.state.pending and h.state.spools[3].remaining == 950.0
    h.step(i.UsageReported(usage.key, True))  # a repeat changes nothing
    assert h.state.spools[3].remaining == 950.0


def test_a_cancel_at_40_percent_reports_40_percent() -> None:
    h = Harness([printer("p")], SPOOLMAN)
    bind(h, "p", SpoolInfo(3, "PLA", remaining=1000.0))
    (jid,) = h.submit(weight=50.0)
    h.accept_starts()
    h.report("p", PrinterState.PRINTING, jid, 40.0)
    h.step(i.Cancel(jid))
    (usage,) = h.of(out.RecordUsage)
    assert (usage.status, usage.grams, usage.fraction) == ("cancelled", 20.0, 0.4)


def test_a_hand_over_the_printer_refused_used_nothing() -> None:
    h = Harness([printer("p")], SPOOLMAN)
    bind(h, "p", SpoolInfo(3, "PLA", remaining=1000.0))
    (jid,) = h.submit(weight=50.0)
    h.step(i.StartResult("p", jid, i.StartOutcome.REFUSED, "busy"))
    (usage,) = h.of(out.RecordUsage)
    assert (usage.grams, usage.report, usage.seconds) == (0.0, False, 0.0)
    assert h.state.printers["p"].counters.prints == 0


@st.composite
def farms(draw: Any) -> tuple[list[tuple[str, SpoolInfo]], list[dict[str, Any]]]:
    n = draw(st.integers(1, 6))
    spools = []
    for k in range(n):
        info = SpoolInfo(
            id=k + 1,
            material=draw(st.sampled_from(("PLA", "PETG"))),
            colours=(draw(st.sampled_from(("#FF0000", "#00FF00", "#0000FF"))),),
            remaining=draw(st.floats(0, 300)),
        )
        spools.append((f"p{k}", info))
    jobs = [
        {
            "weight": draw(st.one_of(st.none(), st.floats(0, 250))),
            "material": draw(st.sampled_from(("PLA", "PETG", None))),
            "colour": draw(st.sampled_from(("FF0000", "00FF00", "0000FF", None))),
        }
        for _ in range(draw(st.integers(1, 12)))
    ]
    return spools, jobs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(farms())
def test_routing_never_starts_a_job_its_spool_cannot_print(farm: Any) -> None:
    """Over random farms: every start is from a spool of the job's material and colour
    holding its weight plus the margin (owed usage counted), and no job waits while an
    idle printer's spool could print it."""
    spools, jobs = farm
    printers = [printer(pid, ("PLA", "PETG")) for pid, _ in spools]
    h = Harness(printers, SPOOLMAN)
    for pid, info in spools:
        bind(h, pid, info)
    for round_ in range(3):
        for job in jobs:
            h.submit(**job)
        h.accept_starts()
        for _, pid, jid in h.starts:
            row = h.rows[jid]
            slot = h.state.printers[pid]
            assert row.spool_id is not None and row.spool_id in slot.spools
            info = h.state.spools[row.spool_id]
            if row.material:
                assert info.material == row.material
            if row.colour:
                assert row.colour in info.colours
        # Liveness: a queued job fits no idle printer.
        for row in h.rows.values():
            if row.state is not JobState.QUEUED:
                continue
            for slot in h.state.printers.values():
                if slot.dispatchable:
                    _sid, why = eligibility.spools.fit(
                        h.state.policy,
                        h.state.spools,
                        eligibility.spools.pending_by_spool(h.state.pending),
                        slot,
                        row,
                    )
                    assert why is not None, (row, slot.id)
        for pid in list(h.state.printers):
            if h.state.printers[pid].current_job is not None:
                h.finish(pid)
        # Spoolman confirms what was used.
        for key in list(h.state.pending):
            h.step(i.UsageReported(key, True))
        h.starts.clear()
        h.advance(60.0 * (round_ + 1))


def test_the_weight_check_counts_usage_spoolman_has_not_confirmed() -> None:
    h = Harness([printer("p")], SPOOLMAN)
    bind(h, "p", SpoolInfo(3, "PLA", remaining=100.0))
    (_a,) = h.submit(weight=50.0)
    h.accept_starts()
    h.finish("p")  # 50 g owed, Spoolman down: still 100 g as last read
    (b,) = h.submit(weight=50.0)
    assert h.rows[b].state is JobState.QUEUED  # 50 g left, 55 needed
    assert h.state.spools[3].remaining == 100.0


# ====================================================================== maintenance


def test_a_printer_crossing_its_threshold_finishes_its_print_and_takes_no_new_job() -> None:
    policy = Policy(every_prints=2)
    h = Harness([printer("p")], policy)
    h.submit(copies=3)
    h.accept_starts()
    h.finish("p")
    assert h.state.printers["p"].counters.prints == 1
    h.accept_starts()
    h.finish("p")  # the second print: due now
    slot = h.state.printers["p"]
    assert slot.maintenance and slot.due is not None and "2 prints" in slot.due
    assert slot.state is PrinterState.MAINTENANCE
    (notice,) = [e for e in h.effects if isinstance(e, out.MaintenanceDue)]
    assert notice.printer_id == "p"
    queued = [j for j in h.rows.values() if j.state is JobState.QUEUED]
    assert len(queued) == 1  # the third copy waits
    h.advance(600.0)
    assert [j for j in h.rows.values() if j.state is JobState.QUEUED] == queued
    reply = h.step(i.RecordMaintenance("p", "alice", "new nozzle, belts tensioned"))
    assert isinstance(reply, Slot) and not reply.maintenance and reply.counters.prints == 0
    assert not [j for j in h.rows.values() if j.state is JobState.QUEUED]
    (entry,) = h.of(out.AppendMaintenance)
    assert (entry.by, entry.counters.prints, entry.due) == ("alice", 2, notice.reason)
    assert len([e for e in h.effects if isinstance(e, out.MaintenanceDue)]) == 1


def test_maintenance_needs_who_and_what() -> None:
    h = Harness([printer("p")], Policy())
    assert isinstance(h.step(i.RecordMaintenance("p", " ", "oiled")), FarmError)
    assert isinstance(h.step(i.RecordMaintenance("p", "bob", "")), FarmError)
    assert isinstance(h.step(i.RecordMaintenance("nope", "bob", "x")), FarmError)
    assert not h.of(out.AppendMaintenance)


def test_hours_and_grams_count_too() -> None:
    h = Harness([printer("p")], Policy(every_hours=1.0))
    h.submit(weight=10.0)
    h.accept_starts()
    h.advance(1800.0)
    h.finish("p")
    assert not h.state.printers["p"].maintenance
    assert h.state.printers["p"].counters == Counters(1800.0, 1, 10.0, EPOCH + 1800.0)
    h.submit()
    h.accept_starts()
    h.advance(1800.0)
    h.finish("p")
    assert h.state.printers["p"].maintenance


# ====================================================================== staggered starts


def test_twenty_printers_forty_jobs_at_most_three_starts_per_minute() -> None:
    policy = Policy(default_limit=GroupLimit(3, 60.0))
    h = Harness([printer(f"p{k:02}") for k in range(20)], policy)
    ids = h.submit(copies=40)
    for _ in range(200):
        h.accept_starts()
        h.advance(7.0)
        for pid, slot in h.state.printers.items():
            job = h.rows.get(slot.current_job or "")
            if job is not None and job.started_at is not None and h.wall - job.started_at > 300:
                h.finish(pid)
    times = sorted(t for t, _, _ in h.starts)
    assert {jid for _, _, jid in h.starts} == set(ids)
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= 3
    # Queued jobs waited in order: starts follow queue positions.
    order = [h.rows[jid].position for _, _, jid in sorted(h.starts)]
    assert order == sorted(order)


def test_groups_have_their_own_budget() -> None:
    policy = Policy(default_limit=GroupLimit(1, 60.0), limits=(("b", GroupLimit(2, 60.0)),))
    printers = [
        printer("a1"),
        printer("a2"),
        printer("b1", power_group="b"),
        printer("b2", power_group="b"),
        printer("b3", power_group="b"),
    ]
    h = Harness(printers, policy)
    h.submit(copies=5)
    by_group = {"default": 0, "b": 0}
    for _, pid, _ in h.starts:
        by_group["b" if pid.startswith("b") else "default"] += 1
    assert by_group == {"default": 1, "b": 2}
    idle = [s for s in h.state.printers.values() if s.dispatchable]
    assert all(eligibility.explain_printer(h.state, s, h.wall, others=[]) for s in idle)


# ====================================================================== schedule, quiet hours


def test_not_before_waits_and_a_timer_starts_it() -> None:
    h = Harness([printer("p")], Policy())
    (later,) = h.submit(not_before=EPOCH + 3600.0)
    (now,) = h.submit()
    assert h.rows[later].state is JobState.QUEUED
    assert h.rows[now].state is JobState.PRINTING  # the job behind it went first
    h.accept_starts()
    h.finish("p")
    assert h.rows[later].state is JobState.QUEUED
    assert any(kind is out.TimerKind.WAKE for _, kind, _ in h.timers)
    h.advance(3599.0)
    assert h.rows[later].state is JobState.QUEUED
    h.advance(2.0)
    assert h.rows[later].state is JobState.PRINTING
    assert h.rows[later].started_at is not None and h.rows[later].started_at >= EPOCH + 3600.0


def test_quiet_hours_hold_starts_until_they_end() -> None:
    # 08:00 UTC at EPOCH; quiet 07:30-09:00 in UTC.
    h = Harness([printer("p", quiet_hours=("07:30", "09:00"))], Policy(tz=dt.UTC))
    (jid,) = h.submit()
    assert h.rows[jid].state is JobState.QUEUED
    why = eligibility.explain_job(h.state, h.rows[jid], h.state.printers.values(), h.wall)
    assert why == "p: quiet hours until 09:00"
    h.advance(3599.0)
    assert h.rows[jid].state is JobState.QUEUED
    h.advance(2.0)
    assert h.rows[jid].state is JobState.PRINTING


def test_quiet_hours_over_midnight_in_a_zone() -> None:
    from zoneinfo import ZoneInfo

    from printfarmd.core.farm import calendar

    tz = ZoneInfo("Europe/Berlin")
    cfg = printer("p", quiet_hours=("22:00", "07:00"))
    night = dt.datetime(2027, 3, 27, 23, 30, tzinfo=tz).timestamp()  # DST starts that night
    ends = calendar.quiet_until(cfg, tz, night)
    assert ends == dt.datetime(2027, 3, 28, 7, 0, tzinfo=tz).timestamp()
    assert (
        calendar.quiet_until(cfg, tz, dt.datetime(2027, 3, 28, 7, 0, tzinfo=tz).timestamp()) is None
    )
    early = dt.datetime(2027, 3, 28, 3, 0, tzinfo=tz).timestamp()
    assert calendar.quiet_until(cfg, tz, early) == ends
    assert (
        calendar.quiet_until(cfg, tz, dt.datetime(2027, 3, 28, 21, 59, tzinfo=tz).timestamp())
        is None
    )


def test_release_respects_spools_and_quiet_hours_but_not_the_schedule() -> None:
    h = Harness([printer("p", quiet_hours=("07:30", "09:00"))], SPOOLMAN)
    bind(h, "p", SpoolInfo(1, "PLA", remaining=10.0))
    (jid,) = h.submit(weight=50.0)
    refused = h.step(i.Release(jid, "p"))
    assert isinstance(refused, FarmError) and "quiet hours" in refused.message
    h.advance(3700.0)
    refused = h.step(i.Release(jid, "p"))
    assert isinstance(refused, FarmError) and "holds 10 g" in refused.message
    (later,) = h.submit(not_before=h.wall + 86400.0)
    h.step(i.SpoolsRefreshed((SpoolInfo(1, "PLA", remaining=10.0),)))
    started = h.step(i.Release(later, "p"))
    assert isinstance(started, Job) and started.state is JobState.PRINTING


# ====================================================================== configuration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[spoolman]\nurl = "spoolman.local"', "spoolman.url: expected an http:// or https:// URL"),
        ("[spoolman]\nweight_margin = -1.0", "spoolman.weight_margin: must be >= 0"),
        ("[spoolman]\nretry_backoff = []", "spoolman.retry_backoff: must not be empty"),
        ('[spoolman]\nfacade_printer = "nope"', 'spoolman.facade_printer: no printer "nope"'),
        ("[maintenance]\nevery_prints = -1", "maintenance.every_prints: must be >= 0"),
        ("[power]\nwindow = 0.0", "power.window: must be > 0"),
        ('[power]\ntimezone = "Mars/Olympus"', 'power.timezone: unknown time zone "Mars/Olympus"'),
        (
            '[[power.groups]]\nname = "a"\n[[power.groups]]\nname = "a"',
            'power.groups[1].name: duplicate group "a"',
        ),
        ("[cost]\nenergy_price_per_kwh = -0.1", "cost.energy_price_per_kwh: must be >= 0"),
        ('[[printers]]\nid = "p"\ntools = 0', "printers[0].tools: must be between 1 and 64"),
        (
            '[[printers]]\nid = "p"\nquiet_hours = ["22:00"]',
            'printers[0].quiet_hours: expected two local times such as ["22:00", "07:00"]',
        ),
        (
            '[[printers]]\nid = "p"\nquiet_hours = ["24:00", "07:00"]',
            'printers[0].quiet_hours: expected two local times such as ["22:00", "07:00"]',
        ),
        (
            '[[printers]]\nid = "p"\nquiet_hours = ["07:00", "07:00"]',
            "printers[0].quiet_hours: the start and the end must differ",
        ),
    ],
)
def test_upkeep_config_errors_name_the_key(text: str, expected: str) -> None:
    import tomllib

    from printfarmd.config import config_from_dict
    from printfarmd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config_from_dict(tomllib.loads(text))
    assert any(line.startswith(expected) for line in info.value.message.splitlines()), (
        info.value.message
    )


def test_the_policy_follows_the_config() -> None:
    import tomllib

    from printfarmd.config import config_from_dict
    from printfarmd.core.farm.upkeep_state import policy_of

    config = config_from_dict(
        tomllib.loads(
            '[spoolman]\nurl = "http://s:7912"\nweight_margin = 2.0\nweight_margin_percent = 10.0\n'
            "[maintenance]\nevery_hours = 200.0\n"
            '[power]\nmax_starts = 3\n[[power.groups]]\nname = "b"\nmax_starts = 1\nwindow = 30.0\n'
        )
    )
    policy = policy_of(config)
    assert policy.spoolman and policy.every_hours == 200.0
    assert policy.needed_grams(100.0) == pytest.approx(112.0)
    assert policy.limit("b") == GroupLimit(1, 30.0)
    assert policy.limit("default") == GroupLimit(3, 60.0)


def test_a_printer_added_at_run_time_keeps_its_spool_and_counters() -> None:
    h = Harness([printer("p")], SPOOLMAN, spools={4: SpoolInfo(4, "PETG", remaining=500.0)})
    counters = Counters(7200.0, 3, 40.0, EPOCH)
    reply = h.step(
        i.AddPrinter(printer("q", ("PLA",)), spools=(4,), counters=counters, due="x", due_at=1.0)
    )
    assert not isinstance(reply, FarmError)
    slot = h.state.printers["q"]
    assert slot.spools == (4,) and slot.counters == counters and slot.due == "x"
    assert slot.capabilities.materials == ("PETG", "PLA")


# ====================================================================== the model, with spools


class UpkeepMachine(FarmMachine):
    """``test_farm_core``'s model of the farm (random commands, reports, timers, outcomes,
    with every invariant it checks), with Spoolman on, a spool bound to each printer and
    jobs that weigh something. Also checked at every step: no start is from a spool that
    could not print the job (material, colour, weight with the owed usage counted), and
    the usage owed to Spoolman is exactly the reported attempts not yet confirmed."""

    @initialize(
        materials=st.lists(st.sampled_from(MATERIALS), min_size=1, max_size=6),
        auto=st.lists(st.booleans(), min_size=6, max_size=6),
        grams=st.lists(st.floats(0, 400), min_size=6, max_size=6),
    )
    def make_farm(self, materials: list[str], auto: list[bool], grams: list[float]) -> None:
        slots = []
        spools: dict[int, SpoolInfo] = {}
        for n, material in enumerate(materials):
            pid = f"p{n}"
            config = PrinterConfig(id=pid, materials=("PLA", "PETG"), auto_clear=auto[n])
            spools[n + 1] = SpoolInfo(n + 1, material, ("#FF0000",), remaining=grams[n])
            slots.append(msgspec.structs.replace(Slot.from_config(config), spools=(n + 1,)))
            self.world[pid] = World()
        self.state = FarmState(printers=slots, policy=SPOOLMAN, spools=spools)
        self.state.printers = {
            s.id: msgspec.structs.replace(
                s, capabilities=eligibility.spools.capabilities(s, spools)
            )
            for s in slots
        }
        self.owed: dict[str, float] = {}
        self.step(i.Startup())
        for pid in self.world:
            self.report(pid, PrinterState.IDLE, None, 0.0)

    @rule(
        target=FarmMachine.jobs,
        weight=st.floats(0, 300),
        material=st.sampled_from((*MATERIALS, None)),
        colour=st.sampled_from(("FF0000", "00FF00", None)),
    )
    def create_weighed(self, weight: float, material: str | None, colour: str | None) -> Any:
        request = i.JobRequest(filename="a.gcode", material=material, colour=colour)
        reply = self.step(i.CreateJobs(request, i.FileFacts(filament_weight=weight)))
        if isinstance(reply, FarmError):
            return multiple()
        self.created.extend(reply.ids)
        return multiple(*reply.ids)

    @precondition(lambda self: bool(self.state.pending))
    @rule(n=st.integers(0, 20), applied=st.booleans())
    def spoolman_settles(self, n: int, applied: bool) -> None:
        keys = sorted(self.state.pending)
        self.step(i.UsageReported(keys[n % len(keys)], applied, None if applied else "gone"))

    @rule(n=st.integers(0, 5), grams=st.floats(0, 400))
    def spoolman_read(self, n: int, grams: float) -> None:
        sid = n % len(self.state.spools) + 1
        info = msgspec.structs.replace(self.state.spools[sid], remaining=grams, missing=False)
        self.step(i.SpoolsRefreshed((info,)))

    def _store(self, records: list[Any]) -> None:
        super()._store(records)
        for rec in records:
            if isinstance(rec, out.RecordUsage) and rec.report:
                assert rec.key not in self.owed, "an attempt's usage recorded twice"
                assert rec.grams is not None and rec.grams > 0
                self.owed[rec.key] = rec.grams
            elif isinstance(rec, out.MarkUsage):
                self.owed.pop(rec.key, None)

    def _effect(self, effect: Any) -> None:
        super()._effect(effect)
        if isinstance(effect, out.StartPrint):
            job = effect.job
            slot = self.state.printers[effect.printer_id]
            assert job.spool_id is not None and job.spool_id in slot.spools, (job, slot)
            info = self.state.spools[job.spool_id]
            owed = eligibility.spools.pending_by_spool(self.state.pending)
            why = eligibility.spools.spool_refusal(self.state.policy, info, job.spool_id, job, owed)
            assert why is None, why

    @invariant()
    def owed_usage_is_the_unconfirmed_reports(self) -> None:
        if not hasattr(self, "owed"):
            return
        assert {k: p.grams for k, p in self.state.pending.items()} == self.owed


UpkeepMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_upkeep_model = UpkeepMachine.TestCase
