"""Which printer may take which job: material, nozzle, bed size and tags.

Pure and sync. A job's needs are reduced to a hashable ``Requirements`` value; jobs
with equal requirements form one *class*, which is what the queue groups by and what
compatibility is cached on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from printfarmd.models import Capabilities, Job, Printer

#: Two nozzle diameters (mm) closer than this are the same nozzle. The tiny extra slack
#: keeps e.g. 0.4 vs 0.401 "within 0.001" despite binary floating point.
NOZZLE_TOLERANCE = 0.001
_NOZZLE_SLACK = 1e-9


def normalize_material(material: str | None) -> str | None:
    """``material`` stripped and upper-cased; ``None`` for ``None`` or a blank string."""
    if material is None:
        return None
    return material.strip().upper() or None


class Requirements(msgspec.Struct, frozen=True):
    """What a job needs from a printer. Hashable; equal values are one queue class.

    ``material`` is upper-cased (``None``: any printer will do); ``nozzle_diameter`` in
    mm (``None``: any nozzle); ``min_bed`` is the smallest acceptable bed (x, y, z) in mm.
    """

    material: str | None = None
    nozzle_diameter: float | None = None
    required_tags: frozenset[str] = frozenset()
    min_bed: tuple[float, float, float] | None = None
    #: ``#RRGGBB`` (upper-case); ``None``: any colour.
    colour: str | None = None


def normalize_colour(colour: str | None) -> str | None:
    """``#RRGGBB`` upper-case: a leading ``#`` optional, an alpha byte (``RRGGBBAA``, as
    Spoolman and Bambu write it) dropped. ``None`` for none, a blank or not a hex colour
    (callers that must refuse a bad colour check it first)."""
    if colour is None:
        return None
    text = colour.strip().lstrip("#").upper()
    if len(text) == 8:
        text = text[:6]
    if len(text) != 6 or any(c not in "0123456789ABCDEF" for c in text):
        return None
    return "#" + text


def _loaded(caps: Capabilities) -> str:
    pairs = [
        f"{m} {caps.colours[i]}" if i < len(caps.colours) and caps.colours[i] else m
        for i, m in enumerate(caps.materials)
    ]
    return ", ".join(pairs) if pairs else "none"


def requirements_of(job: Job) -> Requirements:
    """The ``Requirements`` of ``job`` (material normalised to upper case)."""
    bed = job.min_bed
    return Requirements(
        material=normalize_material(job.material),
        nozzle_diameter=None if job.nozzle_diameter is None else float(job.nozzle_diameter),
        required_tags=frozenset(job.required_tags),
        # A list from JSON would make the value unhashable; always store a tuple.
        min_bed=None if bed is None else (float(bed[0]), float(bed[1]), float(bed[2])),
        colour=normalize_colour(job.colour),
    )


def _fmt_mm(value: float) -> str:
    return f"{value:g}"


def _fmt_bed(bed: Iterable[float]) -> str:
    return "x".join(_fmt_mm(v) for v in bed)


def incompatibility(caps: Capabilities, req: Requirements) -> str | None:
    """The first reason a printer with ``caps`` cannot take a job needing ``req``.

    Returns a sentence fit for an operator (e.g. ``"material PETG is not loaded
    (loaded: PLA)"``), or ``None`` when the printer can take the job. Checks, in order:
    material (case-insensitive; a job naming none goes anywhere), colour (a loaded
    material of that colour — of the job's material if it names one), nozzle (within
    ``NOZZLE_TOLERANCE``), tags (all required tags present), bed (each axis large enough).
    """
    if req.material is not None:
        loaded = [m.strip().upper() for m in caps.materials]
        if req.material not in loaded:
            shown = ", ".join(loaded) if loaded else "none"
            return f"material {req.material} is not loaded (loaded: {shown})"
    if req.colour is not None:
        have = [
            caps.colours[i]
            for i, m in enumerate(caps.materials)
            if i < len(caps.colours) and (req.material is None or m.strip().upper() == req.material)
        ]
        if req.colour not in have:
            what = f"{req.material} {req.colour}" if req.material else f"colour {req.colour}"
            return f"{what} is not loaded (loaded: {_loaded(caps)})"
    if req.nozzle_diameter is not None and (
        abs(caps.nozzle_diameter - req.nozzle_diameter) > NOZZLE_TOLERANCE + _NOZZLE_SLACK
    ):
        return (
            f"nozzle {_fmt_mm(req.nozzle_diameter)} mm is required "
            f"(fitted: {_fmt_mm(caps.nozzle_diameter)} mm)"
        )
    if req.required_tags:
        missing = req.required_tags.difference(caps.tags)
        if missing:
            noun = "tag" if len(missing) == 1 else "tags"
            return f"missing {noun}: {', '.join(sorted(missing))}"
    if req.min_bed is not None and any(
        need > have for need, have in zip(req.min_bed, caps.bed_size, strict=True)
    ):
        return (
            f"bed {_fmt_bed(caps.bed_size)} mm is smaller than the required "
            f"{_fmt_bed(req.min_bed)} mm"
        )
    return None


def can_print(caps: Capabilities, req: Requirements) -> bool:
    """Whether a printer with ``caps`` can take a job needing ``req``.

    Exactly ``incompatibility(caps, req) is None``.
    """
    return incompatibility(caps, req) is None


def rank_key(req: Requirements, caps: Capabilities, printer_id: str) -> tuple[int, int, str]:
    """How good a printer with ``caps`` is for ``req`` (smaller is better): the job's
    material already loaded first, then fewer capabilities, then the printer id."""
    # The first listed material is the loaded spool: no filament change needed.
    loaded = bool(
        req.material is not None
        and caps.materials
        and caps.materials[0].strip().upper() == req.material
        and (req.colour is None or (caps.colours[:1] == (req.colour,)))
    )
    # Fewer capabilities first keeps versatile printers free for jobs only they can take.
    return (0 if loaded else 1, len(caps.materials) + len(caps.tags), printer_id)


def _rank_key(req: Requirements, printer: Printer) -> tuple[int, int, str]:
    return rank_key(req, printer.capabilities, printer.id)


def rank_printers(req: Requirements, printers: Sequence[Printer]) -> list[Printer]:
    """The printers of ``printers`` that can take ``req``, best first.

    Best means: the job's material is the printer's first (loaded) material, then fewer
    capabilities (materials + tags), then printer id, so the result is deterministic.
    Printer state is not looked at: the caller passes the printers it may use.
    """
    fits = [p for p in printers if can_print(p.capabilities, req)]
    fits.sort(key=lambda p: _rank_key(req, p))
    return fits


def choose_printer(job: Job, idle: Sequence[Printer]) -> Printer | None:
    """The printer of ``idle`` that ``job`` should go to, or ``None`` if none can take it.

    Among compatible printers ranked by ``rank_printers``, one not in
    ``job.failed_printers`` is preferred; a printer that failed the job is used only if
    no other fits. ``idle`` must already be filtered to printers free to print (state
    idle, plate clear): this function does not look at printer state.
    """
    ranked = rank_printers(requirements_of(job), idle)
    if not ranked:
        return None
    failed = set(job.failed_printers)
    for printer in ranked:
        if printer.id not in failed:
            return printer
    return ranked[0]
