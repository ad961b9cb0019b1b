"""Plate photos: kept after each print, listed with pre-signed URLs.

Layout under ``<data_dir>/photos``: ``full/<key>`` is the image as the camera gave it,
``low/<key>`` a reduced PNG copy (at most ``LOW_SIZE`` pixels a side). Keys are
``<UTC finish time>-<job id>.png`` so that lexicographic order is time order.

A pre-signed URL is ``/api/photos/low/<key>?expires=<unix s>&sig=<hex>`` where ``sig`` is
HMAC-SHA256 with the server secret over ``low/<key>`` and ``expires``; it works without an
API key until ``expires`` and gets 403 once expired or altered. The secret is 32 random bytes
in ``<data_dir>/photo-url.secret`` (mode 0600), created on first use; deleting it revokes
every URL handed out.

The signing and listing functions are pure or blocking as stated; ``wall`` is the one clock
(tests replace it).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec
import trio

from printfarmd.services import files

log = logging.getLogger(__name__)

#: Signed URLs are valid this long.
URL_TTL_SECONDS = 3600
LOW_SIZE = 320
MAX_PAGE = 200
#: The clock that signs and checks expiry (tests set a controlled one).
wall: Callable[[], float] = time.time


def sign(secret: bytes, path: str, expires: int) -> str:
    """HMAC-SHA256 (hex) over ``path`` and ``expires``. Pure."""
    msg = f"{path}\n{expires}".encode("utf-8", "surrogatepass")
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def verify(secret: bytes, path: str, expires: str, sig: str, now: float) -> bool:
    """True only for an unexpired ``expires`` whose ``sig`` matches. Pure; constant-time."""
    # ASCII only: str.isdigit takes other scripts' digits, and compare_digest raises
    # TypeError (a 500) on a non-ASCII str.
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    if int(expires) < now or not sig.isascii():
        return False
    return hmac.compare_digest(sign(secret, path, int(expires)), sig)


def load_secret(data_dir: Path) -> bytes:
    """The URL-signing secret, created (0600) on first use. Blocking."""
    path = data_dir / "photo-url.secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes()


def photo_key(job_id: str, finished_at: float) -> str:
    stamp = datetime.fromtimestamp(finished_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{job_id}.png"


def reduce(image: bytes) -> bytes:
    """A PNG at most ``LOW_SIZE`` a side. Raises ``ValueError`` for data that is no image."""
    # Pillow is imported on first use: the daemon's start does not need it (issue 17).
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.thumbnail((LOW_SIZE, LOW_SIZE))
            out = io.BytesIO()
            im.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not an image: {exc}") from None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def store(root: Path, key: str, image: bytes) -> None:
    """Keep ``image`` as ``full/<key>`` and its reduced copy as ``low/<key>``. Blocking.
    Raises ``ValueError`` if ``image`` is not an image (nothing is written then)."""
    low = reduce(image)
    _write(root / "full" / key, image)
    _write(root / "low" / key, low)


def list_low(root: Path) -> list[str]:
    """Every regular file under ``low/`` (recursively, hidden ones skipped), as keys
    relative to ``low/``, sorted lexicographically. A symlink is listed only if it stays
    inside ``low/``, so no key names anything outside it. Blocking."""
    low = root / "low"
    if not low.is_dir():
        return []
    real_low = low.resolve()
    keys: list[str] = []
    for dirpath, dirnames, filenames in os.walk(real_low):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            try:
                real = full.resolve()
            except (OSError, RuntimeError):
                continue
            if real.is_relative_to(real_low) and real.is_file():
                keys.append(full.relative_to(real_low).as_posix())
    keys.sort()
    return keys


class Page(msgspec.Struct, frozen=True):
    items: list[dict[str, object]]
    total: int
    offset: int
    limit: int


def page(secret: bytes, keys: list[str], offset: int, limit: int, now: float) -> Page:
    """``keys[offset:offset+limit]`` (keys already sorted), each with a URL signed to
    expire ``URL_TTL_SECONDS`` from ``now``. Pure."""
    expires = int(now) + URL_TTL_SECONDS
    items: list[dict[str, object]] = []
    for key in keys[offset : offset + limit]:
        path = f"low/{key}"
        sig = sign(secret, path, expires)
        items.append(
            {
                "key": key,
                "url": f"/api/photos/{path}?expires={expires}&sig={sig}",
                "expires": expires,
            }
        )
    return Page(items, len(keys), offset, limit)


def resolve_low(root: Path, key: str) -> Path:
    """``low/<key>`` through the one containment check. Blocking; ``BadRequest``/``NotFound``."""
    (root / "low").mkdir(parents=True, exist_ok=True)
    return files.resolve_in(root / "low", key)


class _Camera(Protocol):
    async def snapshot(self) -> bytes | None: ...


#: A camera that does not answer within this long is skipped for this print.
SNAPSHOT_TIMEOUT = 15.0


async def capture(camera: _Camera, root: Path, job_id: str, finished_at: float) -> str | None:
    """Take the plate photo after ``job_id`` finished and keep it; the key, or ``None`` when
    the driver has no camera or the snapshot failed. Never raises: a missing photo must not
    disturb the job (the failure is logged)."""
    try:
        with trio.move_on_after(SNAPSHOT_TIMEOUT):
            image = await camera.snapshot()
            if image is None:
                return None
            key = photo_key(job_id, finished_at)
            await trio.to_thread.run_sync(store, root, key, image)
            return key
        log.warning("plate photo timed out", extra={"job": job_id})
    except Exception as exc:  # any camera/disk trouble loses the photo, not the job
        log.warning("plate photo not kept", extra={"job": job_id, "reason": str(exc)})
    return None
