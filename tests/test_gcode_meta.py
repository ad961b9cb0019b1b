"""The slicer metadata parser: one test per slicer, hypothesis-generated and truncated
inputs (never an exception, never a field the file does not contain)."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from printfarmd.core import gcode_meta
from printfarmd.core.gcode_meta import GcodeMeta, parse, parse_duration
from tests import gcode_samples as gs


def test_prusaslicer() -> None:
    m = parse(gs.prusaslicer())
    assert m.slicer == "PrusaSlicer"
    assert m.slicer_version == "2.7.1+linux-x64-GTK3"
    assert m.estimated_time == 3723.0
    assert m.filament_type == "PETG"
    assert m.filament_name == "Prusament PETG"
    assert m.filament_colors == ("#FF8000",)
    assert m.filament_total == 1234.56
    assert m.filament_weight_total == 3.78
    assert m.layer_height == 0.15
    assert m.first_layer_height == 0.2
    assert m.nozzle_diameter == 0.4
    assert m.first_layer_extr_temp == 240
    assert m.first_layer_bed_temp == 85
    assert m.object_height == 10.35
    assert m.infill == 20.0
    assert [(t.width, t.height) for t in m.thumbnails] == [(16, 16), (220, 124)]
    assert m.thumbnails[0].png == gs.tiny_png(16, 16)


def test_superslicer() -> None:
    m = parse(gs.superslicer())
    assert (m.slicer, m.slicer_version) == ("SuperSlicer", "2.5.59.8")
    assert m.filament_type == "PETG" and m.estimated_time == 3723.0


def test_orcaslicer_multi_material_and_plate_type() -> None:
    m = parse(gs.orcaslicer())
    assert (m.slicer, m.slicer_version) == ("OrcaSlicer", "2.1.1")
    assert m.estimated_time == 2 * 3600 + 5 * 60 + 30  # total, not model time
    assert m.filament_type == "ASA"
    assert m.filament_name == "Generic ASA @System"
    assert m.filament_colors == ("#00AE42", "#FFFFFF")
    assert m.filament_total == 4567.89
    assert m.filament_weight_total == 13.68
    assert m.layer_height == 0.2
    assert m.first_layer_height == 0.25
    assert m.nozzle_diameter == 0.6
    assert m.first_layer_extr_temp == 260
    assert m.first_layer_bed_temp == 95  # textured plate, not the hot plate's 100
    assert m.object_height == 16.0
    assert m.infill == 15.0
    assert [(t.width, t.height) for t in m.thumbnails] == [(300, 300)]


def test_bambustudio() -> None:
    m = parse(gs.bambustudio())
    assert (m.slicer, m.slicer_version) == ("BambuStudio", "01.09.00.70")
    assert m.estimated_time == 51 * 60 + 2
    assert m.filament_type == "PLA"
    assert m.filament_name == "Bambu PLA Basic @BBL X1C"
    assert m.filament_total == 2100.0
    assert m.filament_weight_total == 6.26
    assert m.first_layer_bed_temp == 35
    assert m.first_layer_extr_temp == 220
    assert m.object_height == 8.0
    assert m.nozzle_diameter == 0.4
    assert m.infill == 10.0
    assert len(m.thumbnails) == 1 and m.thumbnails[0].width == 512


def test_cura_marlin() -> None:
    m = parse(gs.cura())
    assert (m.slicer, m.slicer_version) == ("Cura", "5.6.0")
    assert m.estimated_time == 5025.0
    assert m.filament_total == pytest.approx(1523.45)
    assert m.layer_height == 0.12
    assert m.object_height == 22.5
    assert m.infill == 25.0  # from the profile, cut across two ;SETTING_3 lines
    # Cura's Marlin header names no material, nozzle or weight: none is invented.
    assert m.filament_type is None and m.nozzle_diameter is None
    assert m.filament_weight_total is None and m.thumbnails == ()


def test_cura_griffin() -> None:
    m = parse(gs.cura_griffin())
    assert m.slicer == "Cura"
    assert m.nozzle_diameter == 0.4
    assert m.first_layer_extr_temp == 225
    assert m.first_layer_bed_temp == 70
    assert m.estimated_time == 3600


def test_unknown_slicer_gives_only_what_it_says() -> None:
    m = parse(b"; made by hand\n; layer_height = 0.3\n; first_layer_height = 75%\nG28\n")
    assert m == GcodeMeta(layer_height=0.3)  # a percentage is not a height


@pytest.mark.parametrize(
    ("text", "infill"),
    [
        (b"; fill_density = 0%\n", 0.0),
        (b"; fill_density = 17.5%\n", 17.5),
        (b"; fill_density = 0.2\n", None),  # no percent sign: not guessed
        (b"; fill_density = 120%\n", None),
        (b"; sparse_infill_density = nan%\n", None),
        (b';SETTING_3 {"x": "infill_sparse_density = 30\\\\n"}\n', 30.0),
        # Cut after the digits with nothing after them: the number may go on.
        (b';SETTING_3 {"x": "infill_sparse_density = 3\n', None),
        (b';SETTING_3 {"x": "infill_sparse_density = 1000\\\\n"}\n', None),
    ],
)
def test_infill_is_a_percentage_or_nothing(text: bytes, infill: float | None) -> None:
    assert parse(text).infill == infill


def test_head_and_tail_split_never_joins_a_line() -> None:
    data = gs.prusaslicer()
    cut = data.index(b"; filament_type = PETG") + len(b"; filament_type = PE")
    # Head ends mid-line, tail starts mid-line: the halves are not glued together.
    m = parse(data[:cut], b"xx" + data[cut:])
    assert m.filament_type is None
    assert m.nozzle_diameter == 0.4  # whole lines after the cut are still read


def test_thumbnail_that_is_not_png_or_is_cut_is_dropped() -> None:
    bad = gs.thumbnail_block(8, 8, b"GIF89a not a png")
    cut = gs.thumbnail_block(8, 8, gs.tiny_png()).rsplit("; thumbnail end", 1)[0]
    assert parse((bad + cut).encode()).thumbnails == ()


SAMPLES = [gs.prusaslicer(), gs.superslicer(), gs.orcaslicer(), gs.bambustudio(), gs.cura()]


def _fields(m: GcodeMeta) -> set[str]:
    return {k for k, v in msgspec.structs.asdict(m).items() if v not in (None, ())}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SAMPLES))), st.data())
def test_truncated_files_never_raise_nor_invent(idx: int, data: st.DataObject) -> None:
    whole = SAMPLES[idx]
    full = parse(whole)
    end = data.draw(st.integers(0, len(whole)))
    start = data.draw(st.integers(0, end))
    part = parse(whole[start:end])
    # Every field read from a piece is one the whole file has, with the same value;
    # the one exception is the piece's last line when it is cut ("0.4" read as "0.").
    piece = whole[start:end]
    for name in _fields(part):
        value = getattr(part, name)
        if name == "thumbnails":
            assert set(value) <= set(full.thumbnails)
        elif getattr(full, name) != value:
            assert not piece.endswith(b"\n"), (name, value, getattr(full, name))


_keys = st.sampled_from(
    [
        "filament_type",
        "nozzle_diameter",
        "layer_height",
        "estimated printing time (normal mode)",
        "filament used [mm]",
        "max_layer_z",
        "first_layer_temperature",
    ]
)
_junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300)
@given(st.lists(st.tuples(_keys, _junk, st.sampled_from(["=", ":", " = "])), max_size=12))
def test_generated_comment_lines_never_raise(lines: list[tuple[str, str, str]]) -> None:
    text = "".join(f"; {k}{sep}{v}\n" for k, v, sep in lines)
    m = parse(text.encode("utf-8", "surrogatepass"))
    values = "\n".join(v for _k, v, _s in lines)
    if m.filament_type is not None:
        assert m.filament_type.casefold() in values.casefold()
    for name in ("nozzle_diameter", "layer_height", "object_height", "first_layer_extr_temp"):
        assert getattr(m, name) is None or any(
            c.isdigit() for c in values
        )  # a number comes only from digits in the file


@settings(max_examples=300)
@given(st.binary(max_size=4096), st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(head: bytes, tail: bytes) -> None:
    m = parse(head, tail)
    if b";" not in head + tail:
        assert m == GcodeMeta()


def test_reads_are_bounded() -> None:
    assert gcode_meta.HEAD_TAIL_BYTES == 1 << 20


# Every key the parser reads, each with the separator it is read with.
_READ_KEYS = [
    ("estimated printing time (normal mode)", " = "),
    ("model printing time", ": "),
    ("TIME", ":"),
    ("PRINT.TIME", ":"),
    ("filament_type", " = "),
    ("filament_settings_id", " = "),
    ("filament_colour", " = "),
    ("filament used [mm]", " = "),
    ("filament used [g]", " = "),
    ("total filament used [g]", " = "),
    ("Filament used", ": "),
    ("layer_height", " = "),
    ("first_layer_height", " = "),
    ("nozzle_diameter", " = "),
    ("first_layer_temperature", " = "),
    ("first_layer_bed_temperature", " = "),
    ("fill_density", " = "),
    ("sparse_infill_density", " = "),
    ("curr_bed_type", " = "),
    ("max_layer_z", " = "),
    ("MAXZ", ":"),
    ("generated by PrusaSlicer", " "),
]
_digits = st.integers(1, 6000).map(lambda n: "9" * n)
_number_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    _digits,
    _digits.map(lambda d: f"{d}.{d}e{d}"),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0x10", "1_000", "٣"]),
)
_duration_text = st.lists(
    st.tuples(st.one_of(_digits, st.integers(0, 10**12).map(str)), st.sampled_from("dhms")),
    max_size=4,
).map(lambda parts: " ".join(f"{n}{u}" for n, u in parts))
_value_text = st.one_of(
    _number_text,
    _duration_text,
    st.lists(_number_text, max_size=4).map(", ".join),
    st.lists(_number_text, max_size=4).map(";".join),
    _junk,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_READ_KEYS), _value_text), max_size=16), st.booleans())
# Found in CI: finite values whose sum, or whose metres in millimetres, are not.
@example([(("Filament used", ": "), "1.797693134862316e+305")], False)
@example([(("filament used [mm]", " = "), "1.5e308, 1.5e308")], False)
@example([(("filament used [g]", " = "), "1.5e308, 1.5e308")], True)
def test_hostile_values_for_every_read_key_never_raise(
    lines: list[tuple[tuple[str, str], str]], in_tail: bool
) -> None:
    """Every key the parser reads, with huge digit strings, non-finite and junk values:
    ``parse`` returns, and every number it gives is finite (found by fuzzing: a
    duration with a 400-digit day count raised OverflowError)."""
    text = "".join(f"; {k}{sep}{v}\n" for (k, sep), v in lines).encode("utf-8", "surrogatepass")
    m = parse(b"", text) if in_tail else parse(text)
    for name, value in msgspec.structs.asdict(m).items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    assert m.estimated_time is None or m.estimated_time >= 0


def test_huge_duration_components_are_no_estimate() -> None:
    assert parse_duration("9" * 400 + "d") is None
    assert parse_duration("9" * 5000 + "s") is None
    assert parse_duration("999999999d 1s") == 999999999 * 86400.0 + 1
    meta = parse(b"; estimated printing time (normal mode) = " + b"9" * 400 + b"d\n")
    assert meta.estimated_time is None
