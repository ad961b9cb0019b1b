"""G-code files on disk: the one containment check every path-taking entry point uses.

``resolve_gcode`` accepts only a relative name that stays inside the gcodes folder
after Unicode normalisation and after every symlink is resolved. Blocking (touches
the filesystem): call it through ``trio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

from printfarmd.core import gcode_meta
from printfarmd.errors import BadRequest, ValidationFailed

GCODE_SUFFIXES = frozenset({".gcode", ".g", ".gco", ".nc"})
MAX_NAME_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def check_relative_name(name: str) -> PurePosixPath:
    """Validate a user-supplied relative file name; return it as a POSIX path.

    Raises ``BadRequest`` naming the problem: empty, too long, control characters,
    backslashes, absolute, ``.``/``..`` segments (also after NFKC normalisation, which
    turns fullwidth dots and slashes into real ones), or a segment ending in a dot
    or a space.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest("filename: must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"filename: longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest("filename: contains control characters")
    for form in {name, unicodedata.normalize("NFKC", name)}:
        if "\\" in form:
            raise BadRequest("filename: backslashes are not allowed")
        if form.startswith("/"):
            raise BadRequest("filename: must be relative to the gcodes folder")
        for part in form.split("/"):
            if part in ("", ".", ".."):
                raise BadRequest("filename: must be a plain relative path inside the gcodes folder")
            if part.endswith((".", " ")):
                raise BadRequest("filename: a path segment may not end with a dot or a space")
            if len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
                raise BadRequest(
                    f"filename: a path segment is longer than {MAX_SEGMENT_BYTES} bytes"
                )
    return PurePosixPath(name)


def resolve_gcode(root: Path, name: str) -> Path:
    """The real path of G-code file ``name`` under ``root``. Blocking.

    Raises ``BadRequest`` for an illegal name or one that resolves outside ``root``
    (symlinks included), ``ValidationFailed`` if it is not an existing regular G-code file.
    """
    rel = check_relative_name(name)
    if rel.suffix.lower() not in GCODE_SUFFIXES:
        allowed = ", ".join(sorted(GCODE_SUFFIXES))
        raise ValidationFailed(
            f"filename: not a G-code file (allowed: {allowed})", field="filename"
        )
    real_root = root.resolve()
    try:
        candidate = (real_root / rel).resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        raise BadRequest("filename: cannot be resolved") from None
    if not candidate.is_relative_to(real_root) or candidate == real_root:
        raise BadRequest("filename: must stay inside the gcodes folder")
    try:
        st = candidate.stat()
    except (OSError, ValueError):
        raise ValidationFailed(
            f"filename: {name} does not exist in the gcodes folder", field="filename"
        ) from None
    if not os.path.isfile(candidate) or st.st_size < 0:
        raise ValidationFailed(f"filename: {name} is not a regular file", field="filename")
    return candidate


def read_meta(path: Path) -> gcode_meta.GcodeMeta:
    """Slicer metadata from the first and last MiB of ``path``. Blocking."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(gcode_meta.HEAD_TAIL_BYTES)
        tail = b""
        if size > gcode_meta.HEAD_TAIL_BYTES:
            fh.seek(max(size - gcode_meta.HEAD_TAIL_BYTES, gcode_meta.HEAD_TAIL_BYTES))
            tail = fh.read()
    return gcode_meta.parse(head, tail)
