"""Klipper printers through their Moonraker: the thin network loop.

``run`` keeps one websocket open to the printer's Moonraker (``/websocket``,
JSON-RPC): it subscribes to ``print_stats``, ``virtual_sdcard``, ``webhooks`` and
``display_status``, applies every ``notify_status_update`` and re-queries the objects
every ``heartbeat`` seconds, which both proves the link alive and repairs any
notification that was lost. Commands go over plain HTTP (httpx). Every call has a
timeout; parsing is in ``klipper_status`` (pure).

Failures: a connect, request or answer that fails or times out counts as one failure;
the link is dropped and reopened after a capped exponential backoff
(``backoff_initial`` doubling up to ``backoff_max``). After ``offline_after``
consecutive failures the printer is reported OFFLINE; the first good answer resets
the count and reports the real state. Before the first successful connection a
failure reports OFFLINE at once (nothing better is known).

Klippy restarts: Moonraker drops every subscription when Klippy disconnects, so the
driver subscribes again after any Klippy notice (``notify_klippy_ready`` above all) and
whenever ``server.info`` says Klippy is ready after it was not; until Klippy is ready
the printer is OFFLINE ("Klippy not ready"), never IDLE.

Starting a job uploads its G-code as ``printfarmd/<job id>--<name>`` and then starts
that file. If the printer already prints that file (a start whose answer was lost),
it is not started again; if it already printed it to the end (``complete``), it is not
printed again either and the job is reported finished. A cancel that cannot reach the
printer stays pending in the driver and is sent again once the printer is back and
still working on that job. ``forget_job`` deletes the job's uploaded file.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import httpx
import msgspec
import orjson
import trio
import trio_websocket

from printfarmd.config import MoonrakerOptions
from printfarmd.drivers import klipper_status as ks
from printfarmd.drivers.base import (
    DriverError,
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.models import PrinterState

log = logging.getLogger("printfarmd.drivers.moonraker")

#: Outcomes remembered per printer to send each one once (older ones are forgotten).
OUTCOME_MEMORY = 64
_QUERY = {name: None for name in ks.OBJECTS}


_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class _LinkDown(Exception):
    """The websocket session ended; ``str(exc)`` says why."""


class _HttpError(DriverError):
    """Moonraker answered with an error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def backoff_delays(initial: float, cap: float) -> Any:
    """Reconnect delays: ``initial``, doubling, never above ``cap``. Pure (a generator)."""
    delay = initial
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


class _Pending(msgspec.Struct):
    """Outstanding JSON-RPC requests on one websocket, by id."""

    waiting: dict[int, tuple[trio.Event, list[ks.RpcResponse]]] = msgspec.field(
        default_factory=dict
    )
    ids: Any = msgspec.field(default_factory=lambda: itertools.count(1))

    def open(self) -> tuple[int, trio.Event, list[ks.RpcResponse]]:
        rid = next(self.ids)
        event, box = trio.Event(), list[ks.RpcResponse]()
        self.waiting[rid] = (event, box)
        return rid, event, box

    def resolve(self, response: ks.RpcResponse) -> bool:
        """Deliver ``response``; ``False`` if nobody waits for its id (unknown or late)."""
        entry = self.waiting.pop(response.id, None) if isinstance(response.id, int) else None
        if entry is None:
            return False
        entry[1].append(response)
        entry[0].set()
        return True


@attrs.define
class MoonrakerDriver:
    """``PrinterDriver`` for one Klipper printer behind Moonraker.

    Construct with ``MoonrakerDriver(printer_id, options)``; ``options.url`` is the
    Moonraker base URL. ``klipper`` is the last known Klipper status (a value).
    """

    _printer_id: str
    _options: MoonrakerOptions
    klipper: ks.KlipperStatus = attrs.field(init=False, factory=ks.KlipperStatus)
    #: Consecutive failures; reset by any good answer.
    failures: int = attrs.field(init=False, default=0)
    _offline: bool = attrs.field(init=False, default=True)
    _sent_outcomes: list[str] = attrs.field(init=False, factory=list)
    #: Jobs started again whose old outcome the printer may still show (the same file
    #: ``cancelled``): no outcome for them until it prints them.
    _restarting: set[str] = attrs.field(init=False, factory=set)
    #: Jobs the farm cancelled whose cancel has not reached the printer yet.
    pending_cancels: set[str] = attrs.field(init=False, factory=set)
    _cancel_retry_at: float = attrs.field(init=False, default=-math.inf)
    #: Bumped by every Klippy notice: a subscription made before it is gone.
    _klippy_epoch: int = attrs.field(init=False, default=0)
    _subscribed_epoch: int | None = attrs.field(init=False, default=None)
    _events: trio.MemorySendChannel[DriverEvent] | None = attrs.field(init=False, default=None)
    _http: httpx.AsyncClient | None = attrs.field(init=False, default=None)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)

    @property
    def printer_id(self) -> str:
        return self._printer_id

    @property
    def _base(self) -> str:
        return self._options.url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        key = self._options.api_key
        return {"X-Api-Key": key} if key else {}

    # -- the link ---------------------------------------------------------------------

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up until cancelled (see the module docstring).

        ``task_status.started()`` comes after the first connection attempt: once the
        first status was reported, or the attempt failed and OFFLINE was reported.
        """
        self._events = events
        timeout = httpx.Timeout(self._options.timeout)
        async with httpx.AsyncClient(
            base_url=self._base, headers=self._headers(), timeout=timeout
        ) as http:
            self._http = http
            started = False
            delays = backoff_delays(self._options.backoff_initial, self._options.backoff_max)
            try:
                while True:
                    ready = trio.Event()
                    async with trio.open_nursery() as nursery:
                        if not started:
                            nursery.start_soon(self._started_when, ready, task_status)
                        reason = await self._session(ready)
                        nursery.cancel_scope.cancel()
                    if ready.is_set():
                        # The link was up: start the backoff again from the beginning.
                        delays = backoff_delays(
                            self._options.backoff_initial, self._options.backoff_max
                        )
                    await self._failed(reason)
                    if not started and not ready.is_set():
                        task_status.started()  # the first attempt failed: OFFLINE was sent
                    started = True
                    await trio.sleep(next(delays))
            finally:
                self._http = None
                self._events = None

    async def _started_when(self, ready: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        await ready.wait()
        task_status.started()

    async def _failed(self, reason: str) -> None:
        self.failures += 1
        log.info(
            "moonraker link failed",
            extra={"printer": self._printer_id, "reason": reason, "failures": self.failures},
        )
        if self._offline or self.failures >= self._options.offline_after:
            if not self._offline:
                log.warning("printer offline", extra={"printer": self._printer_id})
            self._offline = True
            await self._send(
                StatusReport(
                    self._printer_id, PrinterState.OFFLINE, message=f"unreachable: {reason}"
                )
            )

    def _answered(self) -> None:
        if self._offline and self.failures:
            log.info("printer back online", extra={"printer": self._printer_id})
        self.failures = 0
        self._offline = False

    async def _session(self, ready: trio.Event) -> str:
        """One websocket connection: subscribe, then heartbeat, until the link fails.

        Returns why it ended; never returns otherwise, never raises but Cancelled."""
        headers = [(k.encode(), v.encode()) for k, v in self._headers().items()]
        reason = "connection ended"
        stream: _Stream | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(self._options.timeout):
                        stream = await self._open_stream()
                        ws = await trio_websocket.wrap_client_stream(
                            nursery,
                            stream,
                            self._host_header(),
                            "/websocket",
                            extra_headers=headers,
                            message_queue_size=64,
                        )
                    await self._converse(ws, ready)
                except BaseException as exc:
                    reason = self._link_failure(exc)
                # The peer is gone or mute: drop the socket without a close handshake.
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            reason = self._link_failure(exc)
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        return reason

    async def _open_stream(self) -> _Stream:
        """A TCP (or TLS, for https) stream to Moonraker; we own it and close it."""
        parts = urlsplit(self._options.url)
        host = parts.hostname or "localhost"
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        if tls:
            return await trio.open_ssl_over_tcp_stream(host, port)
        return await trio.open_tcp_stream(host, port)

    def _host_header(self) -> str:
        return urlsplit(self._options.url).netloc.rsplit("@", 1)[-1]

    def _link_failure(self, exc: BaseException) -> str:
        """Why the link failed, for an ``Exception`` (or a group of them) out of a
        session; re-raises anything else (``Cancelled``). A bug is logged with its
        traceback and handled like a dropped link, so the driver task never dies."""
        if isinstance(exc, BaseExceptionGroup):
            _, rest = exc.split(Exception)
            if rest is not None:
                # Only the Cancelled part goes on: an error beside it would outlive the
                # cancel scope that absorbs the Cancelled and crash the caller.
                raise rest
        elif not isinstance(exc, Exception):
            raise exc
        if not all(isinstance(e, _LINK_ERRORS) for e in _leaves(exc)):
            log.error("moonraker driver error", exc_info=exc, extra={"printer": self._printer_id})
        return _describe(exc)

    async def _converse(self, ws: trio_websocket.WebSocketConnection, ready: trio.Event) -> None:
        pending = _Pending()
        self._subscribed_epoch = None  # a new connection has no subscription
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, ws, pending)
            await self._poll(ws, pending)
            ready.set()
            while True:
                await self._send_pending_cancels()
                with trio.move_on_after(self._options.heartbeat):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self._poll(ws, pending)

    async def _reader(self, ws: trio_websocket.WebSocketConnection, pending: _Pending) -> None:
        while True:
            try:
                frame = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                raise _LinkDown(f"connection closed ({exc.reason})") from None
            try:
                message = ks.parse_message(frame)
            except ks.PayloadError as exc:
                log.warning(
                    "bad frame from moonraker ignored",
                    extra={"printer": self._printer_id, "reason": str(exc)},
                )
                continue
            if isinstance(message, ks.RpcResponse):
                if not pending.resolve(message):
                    log.warning(
                        "moonraker answer with an unknown id ignored",
                        extra={"printer": self._printer_id, "id": str(message.id)},
                    )
            elif isinstance(message, ks.StatusUpdate):
                await self._update(message.objects)
            elif isinstance(message, ks.KlippyNotice):
                await self._klippy(message.state)

    async def _rpc(
        self,
        ws: trio_websocket.WebSocketConnection,
        pending: _Pending,
        method: str,
        params: Mapping[str, Any],
    ) -> Any:
        """One JSON-RPC call. Returns its result; raises ``_LinkDown`` on a timeout and
        ``DriverError`` for an error answer."""
        rid, event, box = pending.open()
        frame = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
        with trio.move_on_after(self._options.timeout):
            await ws.send_message(frame.decode())
            await event.wait()
        if not box:
            pending.waiting.pop(rid, None)
            raise _LinkDown(f"no answer to {method} within {self._options.timeout:g} s")
        response = box[0]
        if response.error is not None:
            raise DriverError(f"{method}: {response.error[1]} ({response.error[0]})")
        return response.result

    async def _poll(self, ws: trio_websocket.WebSocketConnection, pending: _Pending) -> None:
        """Ask Moonraker for Klippy's state and, when it is ready, the printer objects:
        subscribing if no subscription survives (a new link, or Klippy came back since
        the last one), else a plain query."""
        info = await self._rpc(ws, pending, "server.info", {})
        self._answered()
        klippy = info.get("klippy_state") if isinstance(info, dict) else None
        try:
            state = ks.KlippyState(str(klippy))
        except ValueError:
            state = ks.KlippyState.DISCONNECTED
        if state is not ks.KlippyState.READY:
            # Not ready (or restarting): Moonraker drops subscriptions when Klippy goes.
            self._subscribed_epoch = None
        if state in (ks.KlippyState.DISCONNECTED, ks.KlippyState.STARTUP):
            await self._update({"webhooks": {"state": state.value}})
            return
        epoch = self._klippy_epoch
        subscribe = self._subscribed_epoch != epoch
        method = "printer.objects.subscribe" if subscribe else "printer.objects.query"
        try:
            result = await self._rpc(ws, pending, method, {"objects": _QUERY})
            objects = ks.status_objects(result)
        except (DriverError, ks.PayloadError) as exc:
            log.warning(
                "printer status not available",
                extra={"printer": self._printer_id, "reason": str(exc)},
            )
            self._subscribed_epoch = None
            await self._update({"webhooks": {"state": state.value}})
            return
        if subscribe:
            # A Klippy notice that arrived meanwhile bumped the epoch: subscribe again.
            self._subscribed_epoch = epoch
        # A full answer: Klippy's state from server.info wins over a stale webhooks field.
        hooks = objects.get("webhooks")
        hooks = hooks if isinstance(hooks, dict) else {}
        await self._update({**objects, "webhooks": {**hooks, "state": state.value}})

    async def _klippy(self, state: ks.KlippyState) -> None:
        """A ``notify_klippy_*`` notice: Klippy (re)connected, shut down or left. Any of
        them means our subscription may be gone; poll (and subscribe) at once."""
        self._klippy_epoch += 1
        self._wake.set()
        if state is not ks.KlippyState.READY:
            await self._update({"webhooks": {"state": state.value}})

    async def _update(self, objects: Mapping[str, Any]) -> None:
        self.klipper, problems = ks.apply_update(self.klipper, objects)
        for problem in problems:
            log.warning(
                "odd printer status field ignored",
                extra={"printer": self._printer_id, "reason": problem},
            )
        if self._offline:
            return  # reports resume with the next successful poll
        job_id = self.klipper.job_id
        if job_id in self._restarting and self.klipper.busy:
            self._restarting.discard(job_id)
            if job_id in self._sent_outcomes:
                self._sent_outcomes.remove(job_id)  # this attempt may end again
        done = ks.outcome(self._printer_id, self.klipper)
        if done is not None and done.job_id not in self._restarting:
            await self._send_outcome(done)
        await self._send(ks.status_report(self._printer_id, self.klipper))
        if (
            self.pending_cancels
            and self.klipper.klippy is ks.KlippyState.READY
            and trio.current_time() >= self._cancel_retry_at
        ):
            self._wake.set()  # the converse loop sends or drops the pending cancels

    async def _send_pending_cancels(self) -> None:
        """Send each pending cancel whose job the printer still works on; drop those it
        no longer does. A cancel that fails again stays pending. Checkpoint."""
        await trio.lowlevel.checkpoint()
        now = self.klipper
        if now.klippy is not ks.KlippyState.READY or self._offline:
            return
        for job_id in sorted(self.pending_cancels):
            if now.job_id != job_id or not now.busy:
                self.pending_cancels.discard(job_id)
                continue
            try:
                await self._request("POST", "/printer/print/cancel")
            except DriverError as exc:
                # Not again before the next heartbeat, however many reports arrive.
                self._cancel_retry_at = trio.current_time() + self._options.heartbeat
                log.warning(
                    "pending cancel failed again",
                    extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
                )
                continue
            self.pending_cancels.discard(job_id)
            log.info("pending cancel sent", extra={"printer": self._printer_id, "job": job_id})

    async def _send_outcome(self, done: JobFinished | JobFailed) -> None:
        if done.job_id in self._sent_outcomes:
            return
        self._sent_outcomes.append(done.job_id)
        del self._sent_outcomes[:-OUTCOME_MEMORY]
        await self._send(done)

    async def _send(self, event: DriverEvent) -> None:
        if self._events is None:
            return
        try:
            await self._events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._events = None

    # -- HTTP commands ----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        limit: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """One HTTP call; returns ``result`` of the JSON body (``None`` for an empty one).

        Raises ``PrinterUnreachable`` (timeout, transport error, driver not running) or
        ``DriverError`` (an error status; Moonraker's message is kept).
        """
        http = self._http
        if http is None:
            raise PrinterUnreachable(f"moonraker driver for {self._printer_id} is not running")
        limit = limit if limit is not None else self._options.timeout
        try:
            with trio.fail_after(limit):
                response = await http.request(method, path, timeout=httpx.Timeout(limit), **kwargs)
        except (httpx.TransportError, trio.TooSlowError) as exc:
            raise PrinterUnreachable(
                f"printer {self._printer_id} did not answer {path}: {_describe(exc)}"
            ) from None
        if response.status_code >= 400:
            raise _HttpError(
                f"{path}: {_error_message(response)} (HTTP {response.status_code})",
                response.status_code,
            )
        if not response.content:
            return None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise DriverError(f"{path}: the answer is not JSON") from None
        return body.get("result", body) if isinstance(body, dict) else body

    async def _query(self) -> ks.KlipperStatus:
        """The printer's status now, over HTTP. Klippy's state comes from
        ``/server/info`` (Moonraker answers that even without Klippy); the objects are
        queried only when it is ready. Raises ``PrinterUnreachable`` or ``DriverError``."""
        info = await self._request("GET", "/server/info")
        raw = info.get("klippy_state") if isinstance(info, dict) else None
        try:
            klippy = ks.KlippyState(str(raw))
        except ValueError:
            klippy = ks.KlippyState.DISCONNECTED
        if klippy in (ks.KlippyState.DISCONNECTED, ks.KlippyState.STARTUP):
            return ks.KlipperStatus(klippy=klippy)
        result = await self._request(
            "GET", "/printer/objects/query", params=dict.fromkeys(_QUERY, "")
        )
        try:
            objects = ks.status_objects(result)
        except ks.PayloadError as exc:
            raise DriverError(f"odd answer to a status query: {exc}") from None
        hooks = objects.get("webhooks")
        hooks = hooks if isinstance(hooks, dict) else {}
        objects = {**objects, "webhooks": {**hooks, "state": klippy.value}}
        status, _ = ks.apply_update(ks.KlipperStatus(), objects)
        return status

    async def status(self) -> StatusReport:
        """Ask the printer now (HTTP). Checkpoint. Raises ``PrinterUnreachable``."""
        try:
            status = await self._query()
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            message = exc.message
            if isinstance(exc, _HttpError) and exc.status in (404, 503):
                # Moonraker answers but Klippy is not there (its endpoints 404 or 503).
                message = f"Klippy not ready: {message}"
            return StatusReport(self._printer_id, PrinterState.OFFLINE, message=message)
        return ks.status_report(self._printer_id, status)

    async def start_job(self, job: JobSpec) -> None:
        """Upload ``job``'s file and start it; a no-op if it already prints it, and
        ``JobFinished`` instead of a second print if it already printed it to the end.

        Raises ``PrinterBusy`` (printing something else, or Klippy not ready),
        ``PrinterUnreachable`` or ``DriverError`` (upload or start refused).
        """
        name = ks.upload_name(job.job_id, job.filename)
        now = await self._query()
        if now.klippy is not ks.KlippyState.READY:
            raise PrinterBusy(f"printer {self._printer_id}: Klippy not ready ({now.klippy.value})")
        if now.print_state in (ks.PrintState.PRINTING, ks.PrintState.PAUSED):
            if now.filename == name:
                return  # our earlier start got through: never start a job twice
            raise PrinterBusy(f"printer {self._printer_id} is printing {now.filename}")
        if now.print_state is ks.PrintState.COMPLETE and now.filename == name:
            # It printed this job to the end already (a start whose answer was lost, a
            # restart): the plate holds it. Printing it again would print on top of it.
            log.warning(
                "job already printed on the printer: not printed again",
                extra={"printer": self._printer_id, "job": job.job_id},
            )
            if job.job_id not in self._sent_outcomes:
                self._sent_outcomes.append(job.job_id)
            await self._send(JobFinished(self._printer_id, job.job_id))
            return
        try:
            data = await trio.Path(job.path).read_bytes()
        except OSError as exc:
            raise DriverError(f"cannot read {job.filename}: {exc.strerror or exc}") from None
        folder, base = name.rsplit("/", 1)
        await self._request(
            "POST",
            "/server/files/upload",
            limit=self._options.upload_timeout,
            files={"file": (base, data, "application/octet-stream")},
            data={"root": "gcodes", "path": folder},
        )
        self._restarting.add(job.job_id)
        self.pending_cancels.discard(job.job_id)
        try:
            await self._request("POST", "/printer/print/start", params={"filename": name})
        except PrinterUnreachable:
            # The answer may be what got lost: look before reporting a failure.
            again = await self._query()
            if again.filename != name or again.print_state is not ks.PrintState.PRINTING:
                raise
        # Klipper prints it now: what the printer says of this file from here on is
        # about this attempt.
        self._restarting.discard(job.job_id)
        if job.job_id in self._sent_outcomes:
            self._sent_outcomes.remove(job.job_id)

    async def _command(self, path: str, job_id: str, states: tuple[ks.PrintState, ...]) -> None:
        now = await self._query()
        if now.job_id != job_id or now.print_state not in states:
            return  # not this job, or nothing to do
        await self._request("POST", path)

    async def cancel_job(self, job_id: str) -> None:
        """Cancel ``job_id`` if it is printing or paused; no ``JobFailed`` follows.

        If the printer cannot be reached the cancel stays pending and is sent when the
        printer is back while it still reports this job; the error is raised all the
        same (the caller logs it)."""
        if job_id not in self._sent_outcomes:
            self._sent_outcomes.append(job_id)  # the farm asked: not a printer failure
        self.pending_cancels.add(job_id)
        try:
            await self._command(
                "/printer/print/cancel", job_id, (ks.PrintState.PRINTING, ks.PrintState.PAUSED)
            )
        except DriverError as exc:
            log.warning(
                "cancel kept until the printer is back",
                extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
            )
            raise
        self.pending_cancels.discard(job_id)

    async def pause_job(self, job_id: str) -> None:
        await self._command("/printer/print/pause", job_id, (ks.PrintState.PRINTING,))

    async def resume_job(self, job_id: str) -> None:
        await self._command("/printer/print/resume", job_id, (ks.PrintState.PAUSED,))

    async def forget_job(self, job_id: str) -> None:
        """Delete the file uploaded for ``job_id`` (``gcodes/printfarmd/<job id>--*``).

        Files already gone, or a folder that does not exist, are fine. A file the
        printer refuses to delete (it is printing it) is logged and kept. Raises
        ``PrinterUnreachable`` only."""
        try:
            listing = await self._request(
                "GET", "/server/files/directory", params={"path": f"gcodes/{ks.UPLOAD_DIR}"}
            )
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            log.info(
                "nothing to forget on the printer",
                extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
            )
            return
        files = listing.get("files") if isinstance(listing, dict) else None
        for entry in files if isinstance(files, list) else []:
            filename = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(filename, str):
                continue
            name = f"{ks.UPLOAD_DIR}/{filename}"
            if ks.job_id_of(name) != job_id:
                continue
            try:
                await self._request("DELETE", f"/server/files/gcodes/{quote(name)}")
            except PrinterUnreachable:
                raise
            except DriverError as exc:
                log.warning(
                    "uploaded file not deleted",
                    extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
                )
            else:
                log.info(
                    "uploaded file deleted", extra={"printer": self._printer_id, "job": job_id}
                )

    async def emergency_stop(self) -> None:
        """``POST /printer/emergency_stop``: Klipper shuts down at once, as after M112, and
        the printer reports ERROR until its firmware is restarted. No ``JobFailed`` is
        sent for the print it stopped (the farm asked). Raises ``PrinterUnreachable`` or
        ``DriverError`` (Moonraker refused, e.g. Klippy not connected)."""
        job_id = self.klipper.job_id
        if job_id is not None and job_id not in self._sent_outcomes:
            self._sent_outcomes.append(job_id)
            del self._sent_outcomes[:-OUTCOME_MEMORY]
        await self._request("POST", "/printer/emergency_stop")

    async def run_gcode(self, script: str) -> None:
        """Run ``script`` through ``/printer/gcode/script`` (waits for Klipper)."""
        await self._request(
            "POST",
            "/printer/gcode/script",
            params={"script": script},
            limit=self._options.upload_timeout,
        )

    async def snapshot(self) -> bytes | None:
        """The camera image at ``snapshot_url``, or ``None`` without one."""
        url = self._options.snapshot_url
        if not url:
            return None
        http = self._http
        if http is None:
            raise PrinterUnreachable(f"moonraker driver for {self._printer_id} is not running")
        try:
            with trio.fail_after(self._options.timeout):
                response = await http.get(url)
        except (httpx.TransportError, trio.TooSlowError) as exc:
            raise PrinterUnreachable(f"camera of {self._printer_id}: {_describe(exc)}") from None
        if response.status_code >= 400:
            raise DriverError(f"camera of {self._printer_id}: HTTP {response.status_code}")
        return response.content


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


_LINK_ERRORS = (
    _LinkDown,
    DriverError,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, _LinkDown):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.reason_phrase or "error"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    return response.reason_phrase or "error"


#: Used by tests to bound how long marking a silent printer offline may take.
def offline_within(options: MoonrakerOptions) -> float:
    """Upper bound (seconds) from a printer going silent to its OFFLINE report. Pure.

    Up to one heartbeat before the next call, then ``offline_after`` failed attempts,
    each ending within ``timeout`` and followed by at most ``backoff_max``.
    """
    return options.heartbeat + options.offline_after * (options.timeout + options.backoff_max)
