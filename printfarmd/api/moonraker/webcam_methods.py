"""``server.webcams.list``: one webcam per farm printer that has a camera, each seen
through the farm, so the UI never needs a printer's own address.

A printer has a camera when its driver's ``snapshot()`` returns an image; the answer is
kept for ``PROBE_TTL`` seconds (a printer that cannot be asked keeps its last answer).
The webcam's ``snapshot_url`` is ``/server/webcams/snapshot/<printer id>`` on this host,
signed with the same HMAC as the plate photos' URLs (``services.photos``: ``sign`` over
``camera/<printer id>`` and ``expires``) and valid for ``URL_TTL`` seconds: the image
route needs no API key, the signature is the key (403 when expired or altered). Both UIs
poll a ``mjpegstreamer-adaptive`` webcam's snapshot URL; each poll is one ``snapshot()``.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import msgspec
import trio
from quart import has_request_context, has_websocket_context, request, websocket

from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, method
from printfarmd.drivers.base import DriverError
from printfarmd.services import photos

#: How long a "has a camera" answer is kept (seconds of trio time).
PROBE_TTL = 60.0
#: How long one probe may take.
PROBE_TIMEOUT = 3.0
#: Signed snapshot URLs are valid this long: the UIs keep the webcam list for a session.
URL_TTL = 24 * 3600
#: The namespace of the webcams' stable uids (uuid5 of the printer id).
_UID_NAMESPACE = uuid.UUID("6f3c2b1e-9a57-4d0c-8f41-0d5a4f6e2b7c")


def signed_path(printer_id: str) -> str:
    """What a snapshot URL's signature covers."""
    return f"camera/{printer_id}"


def snapshot_url(base: str, secret: bytes, printer_id: str, now: float) -> str:
    expires = int(now) + URL_TTL
    sig = photos.sign(secret, signed_path(printer_id), expires)
    return (
        f"{base}/server/webcams/snapshot/{quote(printer_id, safe='')}?expires={expires}&sig={sig}"
    )


class CameraProbe(msgspec.Struct):
    """Which printers have a camera (``snapshot()`` gives an image), cached."""

    _known: dict[str, tuple[bool, float]] = msgspec.field(default_factory=dict)

    async def with_cameras(self, drivers: dict[str, Any]) -> list[str]:
        """The ids (in ``drivers`` order) of the printers that have a camera. Asks the
        stale ones concurrently, each bounded by ``PROBE_TIMEOUT``. Checkpoint."""
        now = trio.current_time()
        stale = [pid for pid in drivers if now - self._known.get(pid, (False, -1e9))[1] > PROBE_TTL]
        async with trio.open_nursery() as nursery:
            for pid in stale:
                nursery.start_soon(self._probe, pid, drivers[pid], now)
        return [pid for pid in drivers if self._known.get(pid, (False, 0.0))[0]]

    async def _probe(self, pid: str, driver: Any, now: float) -> None:
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                image = await driver.snapshot()
        except (DriverError, trio.TooSlowError):
            if pid in self._known:
                self._known[pid] = (self._known[pid][0], now)
            return
        except Exception:  # a driver bug: no camera, not a failed listing
            image = None
        self._known[pid] = (bool(image), now)


def base_url() -> str:
    """``scheme://host`` the current HTTP request or websocket was sent to ("" if none)."""
    if has_request_context():
        return f"{request.scheme}://{request.host}"
    if has_websocket_context():
        scheme = "https" if websocket.scheme in ("wss", "https") else "http"
        return f"{scheme}://{websocket.host}"
    return ""


def webcam(printer_id: str, name: str, url: str) -> dict[str, Any]:
    """Moonraker's webcam entry for one printer's camera."""
    return {
        "name": name,
        "location": "printer",
        "service": "mjpegstreamer-adaptive",
        "enabled": True,
        "icon": "mdiPrinter3d",
        "target_fps": 2,
        "target_fps_idle": 1,
        "stream_url": url,
        "snapshot_url": url,
        "flip_horizontal": False,
        "flip_vertical": False,
        "rotation": 0,
        "aspect_ratio": "4:3",
        "extra_data": {"printer_id": printer_id},
        "source": "config",
        "uid": str(uuid.uuid5(_UID_NAMESPACE, printer_id)),
    }


@method("server.webcams.list", ("GET", "/server/webcams/list"))
async def webcams(caller: Caller, args: Args) -> dict[str, Any]:
    facade = caller.facade
    sched = facade.svc.owner
    drivers = {pid: sched.host.drivers[pid] for pid in sched.printers if pid in sched.host.drivers}
    with_camera = await facade.cameras.with_cameras(drivers)
    if not with_camera:
        return {"webcams": []}
    secret = await trio.to_thread.run_sync(photos.load_secret, facade.svc.config.data_path)
    now = photos.wall()
    base = base_url()
    views = {p.id: p for p in sched.printer_views()}
    names = [views[pid].name or pid for pid in with_camera if pid in views]
    out = []
    for pid in with_camera:
        if pid not in views:
            continue
        name = views[pid].name or pid
        if names.count(name) > 1:
            name = f"{name} ({pid})"  # Moonraker's webcams are keyed by name
        out.append(webcam(pid, name, snapshot_url(base, secret, pid, now)))
    return {"webcams": out}
