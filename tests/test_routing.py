"""Routing rules: which printer may take which job, and which one should."""

from __future__ import annotations

from typing import Any

import pytest

from printfarmd.core.routing import (
    Requirements,
    can_print,
    choose_printer,
    incompatibility,
    rank_printers,
    requirements_of,
)
from printfarmd.models import Capabilities, Job, Printer, PrinterState

PLA_04 = Capabilities(materials=("PLA",), nozzle_diameter=0.4, bed_size=(220, 220, 250))
MULTI = Capabilities(
    materials=("PETG", "pla", "ABS"),
    nozzle_diameter=0.6,
    bed_size=(300, 300, 400),
    tags=("enclosure", "hardened"),
)
EMPTY = Capabilities(materials=(), nozzle_diameter=0.4)


def job(**fields: Any) -> Job:
    return Job(id=fields.pop("id", "J1"), filename="x.gcode", **fields)


def printer(pid: str, caps: Capabilities) -> Printer:
    return Printer(id=pid, name=pid, driver="simulator", capabilities=caps, state=PrinterState.IDLE)


# ------------------------------------------------------------------ requirements_of


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, Requirements()),
        ({"material": "pla"}, Requirements(material="PLA")),
        ({"material": " Petg "}, Requirements(material="PETG")),
        ({"material": ""}, Requirements()),
        ({"nozzle_diameter": 0.6}, Requirements(nozzle_diameter=0.6)),
        (
            {"required_tags": ("b", "a", "a")},
            Requirements(required_tags=frozenset({"a", "b"})),
        ),
        ({"min_bed": [200, 200, 100]}, Requirements(min_bed=(200.0, 200.0, 100.0))),
    ],
)
def test_requirements_of(fields: dict[str, object], expected: Requirements) -> None:
    req = requirements_of(job(**fields))
    assert req == expected
    hash(req)  # usable as a queue class key


def test_equal_requirements_are_one_class() -> None:
    a = requirements_of(job(id="A", material="pla", required_tags=("x", "y"), priority=5))
    b = requirements_of(job(id="B", material="PLA", required_tags=("y", "x"), position=9))
    assert a == b
    assert len({a, b}) == 1


# ------------------------------------------------------------------ can_print / incompatibility

CASES: list[tuple[str, Capabilities, Requirements, str | None]] = [
    ("nothing required", EMPTY, Requirements(), None),
    ("no material goes anywhere", EMPTY, Requirements(nozzle_diameter=0.4), None),
    ("material loaded", PLA_04, Requirements(material="PLA"), None),
    ("material case-insensitive", MULTI, Requirements(material="PLA"), None),
    (
        "material missing",
        PLA_04,
        Requirements(material="PETG"),
        "material PETG is not loaded (loaded: PLA)",
    ),
    (
        "material on an empty printer",
        EMPTY,
        Requirements(material="PLA"),
        "material PLA is not loaded (loaded: none)",
    ),
    (
        "material list shown upper-cased",
        MULTI,
        Requirements(material="TPU"),
        "material TPU is not loaded (loaded: PETG, PLA, ABS)",
    ),
    ("nozzle equal", PLA_04, Requirements(nozzle_diameter=0.4), None),
    ("nozzle within 0.001", PLA_04, Requirements(nozzle_diameter=0.401), None),
    ("nozzle within 0.001 below", PLA_04, Requirements(nozzle_diameter=0.399), None),
    (
        "nozzle off by more",
        PLA_04,
        Requirements(nozzle_diameter=0.402),
        "nozzle 0.402 mm is required (fitted: 0.4 mm)",
    ),
    (
        "nozzle different",
        MULTI,
        Requirements(nozzle_diameter=0.4),
        "nozzle 0.4 mm is required (fitted: 0.6 mm)",
    ),
    ("tags present", MULTI, Requirements(required_tags=frozenset({"enclosure"})), None),
    (
        "all tags present",
        MULTI,
        Requirements(required_tags=frozenset({"enclosure", "hardened"})),
        None,
    ),
    (
        "one tag missing",
        MULTI,
        Requirements(required_tags=frozenset({"enclosure", "camera"})),
        "missing tag: camera",
    ),
    (
        "tags missing",
        PLA_04,
        Requirements(required_tags=frozenset({"enclosure", "camera"})),
        "missing tags: camera, enclosure",
    ),
    ("bed fits exactly", PLA_04, Requirements(min_bed=(220.0, 220.0, 250.0)), None),
    ("bed fits", MULTI, Requirements(min_bed=(250.0, 250.0, 250.0)), None),
    (
        "bed too short on z",
        PLA_04,
        Requirements(min_bed=(100.0, 100.0, 251.0)),
        "bed 220x220x250 mm is smaller than the required 100x100x251 mm",
    ),
    (
        "bed too narrow on x",
        PLA_04,
        Requirements(min_bed=(221.0, 10.0, 10.0)),
        "bed 220x220x250 mm is smaller than the required 221x10x10 mm",
    ),
    (
        "first reason wins: material before nozzle",
        PLA_04,
        Requirements(material="ABS", nozzle_diameter=0.8),
        "material ABS is not loaded (loaded: PLA)",
    ),
    (
        "everything fits",
        MULTI,
        Requirements(
            material="ABS",
            nozzle_diameter=0.6,
            required_tags=frozenset({"hardened"}),
            min_bed=(300.0, 300.0, 300.0),
        ),
        None,
    ),
]


@pytest.mark.parametrize(
    ("caps", "req", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_incompatibility_and_can_print(
    caps: Capabilities, req: Requirements, reason: str | None
) -> None:
    assert incompatibility(caps, req) == reason
    assert can_print(caps, req) is (reason is None)


# ------------------------------------------------------------------ ranking / choosing

LOADED_PLA = printer("loaded-pla", Capabilities(materials=("PLA", "PETG")))
SECOND_PLA = printer("second-pla", Capabilities(materials=("PETG", "PLA")))
PLA_ONLY = printer("pla-only", Capabilities(materials=("PLA",)))
VERSATILE = printer(
    "versatile", Capabilities(materials=("PLA", "PETG", "ABS"), tags=("enclosure",))
)
PETG_ONLY = printer("petg-only", Capabilities(materials=("PETG",)))
TWIN_A = printer("twin-a", Capabilities(materials=("PETG",)))
TWIN_B = printer("twin-b", Capabilities(materials=("PETG",)))

ALL = [VERSATILE, SECOND_PLA, PETG_ONLY, LOADED_PLA, PLA_ONLY]


@pytest.mark.parametrize(
    ("req", "printers", "expected"),
    [
        # Loaded spool first (fewest capabilities among those), then the rest by size.
        (Requirements(material="PLA"), ALL, ["pla-only", "loaded-pla", "versatile", "second-pla"]),
        # No material: nobody has "the loaded spool", so smallest printers first.
        (
            Requirements(),
            ALL,
            ["petg-only", "pla-only", "loaded-pla", "second-pla", "versatile"],
        ),
        (Requirements(required_tags=frozenset({"enclosure"})), ALL, ["versatile"]),
        (Requirements(material="TPU"), ALL, []),
        # Equal rank: printer id decides, whatever the input order.
        (Requirements(material="PETG"), [TWIN_B, TWIN_A], ["twin-a", "twin-b"]),
    ],
)
def test_rank_printers(req: Requirements, printers: list[Printer], expected: list[str]) -> None:
    assert [p.id for p in rank_printers(req, printers)] == expected


@pytest.mark.parametrize(
    ("fields", "idle", "expected"),
    [
        ({"material": "pla"}, ALL, "pla-only"),
        ({"material": "PETG"}, ALL, "petg-only"),
        ({"material": "PETG", "required_tags": ("enclosure",)}, ALL, "versatile"),
        ({"material": "TPU"}, ALL, None),
        ({}, [], None),
        # A retry avoids the printer that failed it...
        ({"material": "PLA", "failed_printers": ("pla-only",)}, ALL, "loaded-pla"),
        (
            {"material": "PLA", "failed_printers": ("pla-only", "loaded-pla")},
            ALL,
            "versatile",
        ),
        # ...but falls back to it when nothing else fits.
        ({"material": "PLA", "failed_printers": ("pla-only",)}, [PLA_ONLY, PETG_ONLY], "pla-only"),
        (
            {"material": "PETG", "failed_printers": ("twin-a", "twin-b")},
            [TWIN_B, TWIN_A],
            "twin-a",
        ),
        # Failures on printers that are not idle do not matter.
        ({"material": "PETG", "failed_printers": ("elsewhere",)}, [TWIN_B, TWIN_A], "twin-a"),
        # Nozzle and bed size are honoured too.
        ({"nozzle_diameter": 0.6}, ALL, None),
        (
            {"min_bed": (250.0, 250.0, 100.0)},
            [PLA_ONLY, printer("big", Capabilities(materials=("PLA",), bed_size=(300, 300, 300)))],
            "big",
        ),
    ],
)
def test_choose_printer(
    fields: dict[str, object], idle: list[Printer], expected: str | None
) -> None:
    chosen = choose_printer(job(**fields), idle)
    assert (None if chosen is None else chosen.id) == expected


# ---------------------------------------------------------------- colour (issue 15)

import hypothesis.strategies as st  # noqa: E402
import msgspec  # noqa: E402
from hypothesis import given, settings  # noqa: E402

from printfarmd.config import PrinterConfig  # noqa: E402
from printfarmd.core.farm import dispatch as farm_dispatch  # noqa: E402
from printfarmd.core.farm.state import Slot  # noqa: E402
from printfarmd.core.queue import JobQueue  # noqa: E402
from printfarmd.models import JobState  # noqa: E402

COLOURS = ("#FFFFFF", "#000000", "#FF6600")
MATS = ("PLA", "PETG")


def test_a_colour_goes_only_where_that_colour_is_loaded() -> None:
    white_pla = Capabilities(materials=("PLA", "PETG"), colours=("#FFFFFF", "#000000"))
    assert incompatibility(white_pla, requirements_of(job(colour="#ffffff"))) is None
    assert (
        incompatibility(white_pla, requirements_of(job(material="PETG", colour="#000000"))) is None
    )
    why = incompatibility(white_pla, requirements_of(job(material="PETG", colour="#FFFFFF")))
    assert why == "PETG #FFFFFF is not loaded (loaded: PLA #FFFFFF, PETG #000000)"
    unknown = Capabilities(materials=("PLA",))
    assert incompatibility(unknown, requirements_of(job(colour="#FFFFFF"))) is not None
    assert incompatibility(unknown, requirements_of(job())) is None


@settings(max_examples=200, deadline=None)
@given(
    farm=st.lists(
        st.lists(
            st.tuples(st.sampled_from(MATS), st.sampled_from(COLOURS)), min_size=0, max_size=3
        ),
        min_size=1,
        max_size=8,
    ),
    wants=st.lists(
        st.tuples(st.sampled_from((None, *MATS)), st.sampled_from((None, *COLOURS))),
        min_size=1,
        max_size=30,
    ),
)
def test_dispatch_never_sends_a_job_to_a_printer_without_its_colour(
    farm: list[list[tuple[str, str]]], wants: list[tuple[str | None, str | None]]
) -> None:
    slots = []
    for n, loaded in enumerate(farm):
        config = PrinterConfig(
            id=f"p{n}",
            materials=tuple(m for m, _ in loaded),
            colours=tuple(c for _, c in loaded),
        )
        slots.append(msgspec.structs.replace(Slot.from_config(config), reported=PrinterState.IDLE))
    jobs = [
        Job(
            id=f"{k:016X}",
            filename="x.gcode",
            state=JobState.QUEUED,
            position=k + 1,
            material=m,
            colour=c,
        )
        for k, (m, c) in enumerate(wants)
    ]
    for j, slot in farm_dispatch.plan(JobQueue(jobs), slots):
        loaded = farm[int(slot.id[1:])]
        # The oracle, written out: some loaded filament has the colour (and the material).
        assert j.colour is None or any(
            c == j.colour and (j.material is None or m == j.material) for m, c in loaded
        ), (j, loaded)
        assert j.material is None or any(m == j.material for m, _ in loaded)
