"""Embedded G-code thumbnails written next to their file, as Moonraker lays them out.

A thumbnail of ``sub/part.gcode`` declared ``32x32`` is kept as
``sub/.thumbs/part-32x32.png`` and reported with ``relative_path`` ``.thumbs/part-32x32.png``
(relative to the G-code's folder), so Mainsail and Fluidd find it through the facade's
``/server/files/gcodes/...`` download. Blocking: call through ``trio.to_thread``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from printfarmd.core.gcode_meta import GcodeMeta

THUMBS_DIR = ".thumbs"


def thumbnail_path(gcode: Path, width: int, height: int) -> Path:
    """Where thumbnail ``width`` x ``height`` of ``gcode`` is kept."""
    return gcode.parent / THUMBS_DIR / f"{gcode.stem}-{width}x{height}.png"


def write_thumbnails(gcode: Path, meta: GcodeMeta) -> list[dict[str, Any]]:
    """Write ``meta``'s thumbnails next to ``gcode`` (unchanged files are not rewritten);
    return Moonraker's ``thumbnails`` list: ``{width, height, size, relative_path}``.

    ``gcode`` must already have passed the containment check; the thumbnail folder is a
    plain child of its (contained) folder, and an existing symlink there is replaced,
    never followed.
    """
    out: list[dict[str, Any]] = []
    if (gcode.parent / THUMBS_DIR).is_symlink():
        return out  # it could point out of the gcodes folder
    for thumb in meta.thumbnails:
        target = thumbnail_path(gcode, thumb.width, thumb.height)
        try:
            if target.is_symlink() or not target.is_file() or target.read_bytes() != thumb.png:
                target.parent.mkdir(exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                with open(tmp, "wb") as fh:
                    fh.write(thumb.png)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
        except OSError:
            continue  # a read-only or full disk loses the picture, not the metadata
        out.append(
            {
                "width": thumb.width,
                "height": thumb.height,
                "size": len(thumb.png),
                "relative_path": f"{THUMBS_DIR}/{target.name}",
            }
        )
    return out
