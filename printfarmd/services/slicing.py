"""The slicing stage: an STL/3MF file turned into G-code by the configured slicer CLI.

``slicer.command`` (config) is an argv list; ``{input}`` and ``{output}`` in its items are
replaced by the model's path and the G-code path to write. The slicer runs as a
subprocess through ``trio.run_process`` (never blocking the trio thread) under
``slicer.timeout`` (``limit_s``); on timeout or cancellation trio kills it. It writes to a hidden
``.part`` file that is renamed into place only on success, so a failed or killed slicer
never leaves a G-code that looks finished.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from printfarmd.core.slicing import MODEL_SUFFIXES, SLICED_DIR, is_model, output_name

__all__ = ["MODEL_SUFFIXES", "SLICED_DIR", "SliceFailed", "is_model", "output_name", "run_slicer"]

#: The tail of the slicer's output kept as the job's error text.
ERROR_TAIL_CHARS = 2000


class SliceFailed(Exception):
    """The slicer failed; ``message`` is what the job's ``last_error`` shows."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _tail(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()[-ERROR_TAIL_CHARS:]


async def run_slicer(command: Sequence[str], model: Path, out: Path, limit_s: float) -> None:
    """Slice ``model`` into ``out``; raises ``SliceFailed`` with the slicer's error text on
    a non-zero exit, a timeout, a missing program or an empty output."""
    part = out.with_name(f".{out.name}.part")
    await trio.to_thread.run_sync(lambda: out.parent.mkdir(parents=True, exist_ok=True))
    argv = [a.replace("{input}", str(model)).replace("{output}", str(part)) for a in command]
    try:
        proc: subprocess.CompletedProcess[bytes] | None = None
        with trio.move_on_after(limit_s):
            proc = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
        if proc is None:
            raise SliceFailed(f"slicer timed out after {limit_s:g} s")
        if proc.returncode != 0:
            text = _tail(proc.stderr) or _tail(proc.stdout)
            raise SliceFailed(f"slicer exited with status {proc.returncode}: {text}")
        size = await trio.to_thread.run_sync(lambda: part.stat().st_size if part.exists() else 0)
        if size == 0:
            raise SliceFailed("slicer exited without writing any G-code")
        await trio.to_thread.run_sync(os.replace, part, out)
    except OSError as exc:
        raise SliceFailed(f"slicer could not be run: {exc.strerror or exc}") from None
    finally:
        await trio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
