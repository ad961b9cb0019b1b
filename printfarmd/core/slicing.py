"""Names in the slicing stage (pure): which files are models, where their G-code goes."""

from __future__ import annotations

from pathlib import PurePosixPath

MODEL_SUFFIXES = frozenset({".stl", ".3mf"})
#: Where sliced output is kept, relative to the gcodes folder (hidden from listings).
SLICED_DIR = ".sliced"


def is_model(name: str) -> bool:
    """True for a file the slicing stage handles (by suffix, case-insensitive)."""
    return PurePosixPath(name).suffix.lower() in MODEL_SUFFIXES


def output_name(model: str, group_id: str) -> str:
    """The G-code path (relative to the gcodes folder) for ``model`` sliced for a job group."""
    return f"{SLICED_DIR}/{PurePosixPath(model).stem}-{group_id}.gcode"
