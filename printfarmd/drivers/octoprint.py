"""Printers behind OctoPrint: the thin network loop.

``run`` keeps a session with the printer's OctoPrint: it checks the API key
(``GET /api/version``), polls ``GET /api/job`` every ``heartbeat`` seconds (which proves
the link alive and repairs anything a push missed) and, beside the polls, keeps
OctoPrint's push socket open (``/sockjs/websocket``, logged in with the session of a
passive ``POST /api/login`` made with the API key: ``{"auth": "user:session"}``), which
delivers state changes and the ``PrintDone``/``PrintFailed`` events at once. A push
socket that fails is reopened after a backoff while the polls go on. Every call has a
timeout; parsing is in ``octoprint_status`` (pure).

Failures: a poll that fails or times out ends the session; it is reopened after a
capped exponential backoff. After ``offline_after`` failures in a row the printer is
reported OFFLINE (at once before the first good answer); so is a printer whose OctoPrint
answers but has no working serial link (Offline, Connecting, Error). A refused API key
is logged as an error and keeps the printer OFFLINE with a message saying so.

Jobs: a job's G-code is uploaded as ``printfarmd/<job id>_<name>`` with ``select`` and
``print``; the file OctoPrint prints names the job. How a print of ours ended comes from
the push events, from ``/api/job`` (100 % with the file still selected) or, when both
were missed (the driver or OctoPrint restarted), from the file's print record in
OctoPrint's metadata. Each outcome is reported once; a print the farm cancelled is not
reported as failed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import msgspec
import orjson
import trio
import trio_websocket

from printfarmd.config import OctoPrintOptions
from printfarmd.drivers import octoprint_status as op
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
from printfarmd.drivers.http_link import (
    AuthRefused,
    LinkDown,
    LinkHealth,
    backoff_delays,
    json_body,
    keep_up,
    leaves,
    link_failure,
    request,
)
from printfarmd.models import PrinterState

log = logging.getLogger("printfarmd.drivers.octoprint")

#: Outcomes (and print ends seen) remembered per printer (older ones are forgotten).
OUTCOME_MEMORY = 64
#: Seconds an idle OctoPrint may take to tell how a print of ours ended (its event and
#: its file record come just after the state change) before the idle report goes out.
SETTLE = 3.0
#: Events the push socket subscribes to.
EVENTS = ("PrintStarted", "PrintDone", "PrintFailed", "PrinterStateChanged", "Disconnected")
_LINK_ERRORS = (
    LinkDown,
    DriverError,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio_websocket.ConnectionRejected,
)


class Held(msgspec.Struct, frozen=True):
    """The farm job OctoPrint was last seen busy with (or that we just started)."""

    job_id: str
    path: str


@attrs.define
class OctoPrintDriver:
    """``PrinterDriver`` for one printer behind OctoPrint.

    Construct with ``OctoPrintDriver(printer_id, options)``. ``octo`` is the last known
    OctoPrint status (a value); ``health`` counts failures in a row.
    """

    _printer_id: str
    _options: OctoPrintOptions
    octo: op.OctoStatus = attrs.field(init=False, factory=op.OctoStatus)
    health: LinkHealth = attrs.field(init=False)
    #: Whether the push socket is logged in now (polls alone work too).
    push_up: bool = attrs.field(init=False, default=False)
    #: trio time of the last state pushed on the socket (None: none yet).
    _pushed_at: float | None = attrs.field(init=False, default=None)
    _refused: bool = attrs.field(init=False, default=False)
    _seen_once: bool = attrs.field(init=False, default=False)
    _sent_outcomes: list[str] = attrs.field(init=False, factory=list)
    _held: Held | None = attrs.field(init=False, default=None)
    _idle_since: float | None = attrs.field(init=False, default=None)
    _ended: dict[str, op.PrintEnded] = attrs.field(init=False, factory=dict)
    _checked: set[tuple[str, float | None]] = attrs.field(init=False, factory=set)
    _events: trio.MemorySendChannel[DriverEvent] | None = attrs.field(init=False, default=None)
    _http: httpx.AsyncClient | None = attrs.field(init=False, default=None)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    @health.default
    def _health(self) -> LinkHealth:
        return LinkHealth(self._options.offline_after)

    @property
    def printer_id(self) -> str:
        return self._printer_id

    @property
    def _base(self) -> str:
        return self._options.url.rstrip("/")

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
        opts = self._options
        async with httpx.AsyncClient(
            base_url=self._base,
            headers={"X-Api-Key": opts.api_key},
            timeout=httpx.Timeout(opts.timeout),
        ) as http:
            self._http = http
            try:
                await keep_up(
                    self._session,
                    self._failed,
                    opts.backoff_initial,
                    opts.backoff_max,
                    task_status,
                )
            finally:
                self._http = None
                self._events = None

    async def _session(self, ready: trio.Event) -> str:
        """One session: check the key, poll, push; returns why it ended (never returns
        otherwise, never raises but Cancelled)."""
        try:
            version = json_body(await self._request("GET", "/api/version"), "/api/version")
            self._refused = False
            await self._poll()
            if not ready.is_set():
                server = version.get("text") if isinstance(version, dict) else None
                log.info(
                    "octoprint connected", extra={"printer": self._printer_id, "server": server}
                )
            ready.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._push_loop)
                while True:
                    wait = self._options.heartbeat
                    if self._idle_since is not None:
                        wait = min(wait, 0.25)  # settling an ended print: look again soon
                    with trio.move_on_after(wait):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._poll()
        except BaseException as exc:
            reason = link_failure(exc, _LINK_ERRORS, log, self._printer_id)
            self._refused = any(isinstance(e, AuthRefused) for e in leaves(exc))
            return reason

    async def _failed(self, reason: str) -> None:
        was_offline = self.health.offline
        offline = self.health.failed()
        log.info(
            "octoprint link failed",
            extra={"printer": self._printer_id, "reason": reason, "failures": self.health.failures},
        )
        if self._refused:
            # A refused key is a configuration error: say so loudly, every time it happens
            # after a good answer, and keep the printer offline until the key works.
            if not was_offline or self.health.failures == 1:
                log.error(
                    "octoprint refused the API key",
                    extra={"printer": self._printer_id, "reason": reason},
                )
            self.health.offline = True
            message = f"OctoPrint refused the API key (printers.octoprint.api_key): {reason}"
            await self._send(StatusReport(self._printer_id, PrinterState.OFFLINE, message=message))
            return
        if offline:
            if not was_offline:
                log.warning("printer offline", extra={"printer": self._printer_id})
            await self._send(
                StatusReport(
                    self._printer_id, PrinterState.OFFLINE, message=f"unreachable: {reason}"
                )
            )

    async def _poll(self) -> None:
        """``GET /api/job`` and apply it (``/api/printer``'s flags for a state text we do
        not know). A malformed answer is logged and ignored."""
        response = await self._request("GET", "/api/job")
        if self.health.answered() and self._seen_once:
            log.info("printer back online", extra={"printer": self._printer_id})
        self._seen_once = True
        try:
            status, problems = op.from_job(json_body(response, "/api/job"))
        except (op.PayloadError, DriverError) as exc:
            log.warning(
                "odd answer from octoprint ignored",
                extra={"printer": self._printer_id, "reason": str(exc)},
            )
            return
        if self._push_fresh():
            # The socket streams newer states than a poll that was in flight meanwhile:
            # the poll proved the link alive; its state would only step back in time.
            return
        if status.state is op.OctoState.UNKNOWN:
            status, problems = await self._with_flags(status, problems)
        await self._apply(status, problems)

    def _push_fresh(self) -> bool:
        """Whether the push socket delivered a state lately (it streams about one a
        second while logged in)."""
        if not self.push_up or self._pushed_at is None:
            return False
        return trio.current_time() - self._pushed_at < max(3.0, 2 * self._options.heartbeat)

    async def _with_flags(
        self, status: op.OctoStatus, problems: list[str]
    ) -> tuple[op.OctoStatus, list[str]]:
        response = await self._request(
            "GET", "/api/printer", params={"exclude": "temperature,sd"}, ok=(409,)
        )
        if response.status_code == 409:  # "Printer is not operational"
            return msgspec.structs.replace(status, state=op.OctoState.OFFLINE), problems
        try:
            flags, more = op.from_current(json_body(response, "/api/printer"))
        except op.PayloadError:
            return status, problems
        return msgspec.structs.replace(status, state=flags.state), problems + more

    # -- applying what OctoPrint says -------------------------------------------------

    async def _apply(self, status: op.OctoStatus, problems: list[str]) -> None:
        for problem in problems:
            log.warning(
                "odd octoprint status field ignored",
                extra={"printer": self._printer_id, "reason": problem},
            )
        async with self._lock:
            self.octo = status
            if self.health.offline:
                return  # reports resume with the next successful poll
            await self._settle(status)

    async def _settle(self, status: op.OctoStatus) -> None:
        """Report ``status``, and first the end of a print of ours that it shows."""
        job = status.job_id
        held = self._held
        if status.busy and job is not None:
            if held is None or held.job_id != job:
                self._held = Held(job, status.path)
            self._idle_since = None
        elif held is not None:
            done = await self._outcome_of(held, status)
            if done is not None:
                self._held, self._idle_since = None, None
                await self._send_outcome(done)
            elif op.farm_state(status) is not PrinterState.OFFLINE:
                now = trio.current_time()
                if self._idle_since is None:
                    self._idle_since = now
                if now - self._idle_since < SETTLE:
                    return  # hold the idle report back until the end is known
                log.info(
                    "print ended without a record on octoprint",
                    extra={"printer": self._printer_id, "job": held.job_id},
                )
                self._held, self._idle_since = None, None
            # Offline: keep holding; OctoPrint's record decides when the link is back.
        elif job is not None and status.state is op.OctoState.OPERATIONAL:
            await self._check_selected(status, job)
        await self._send(op.status_report(self._printer_id, status))

    async def _outcome_of(
        self, held: Held, status: op.OctoStatus
    ) -> JobFinished | JobFailed | None:
        ended = self._ended.get(held.path)
        if ended is not None:
            return op.ended_outcome(self._printer_id, ended)
        if status.path == held.path:
            done = op.finished_in_status(self._printer_id, status)
            if done is not None:
                return done
        return op.record_outcome(self._printer_id, held.job_id, await self._record(held.path))

    async def _check_selected(self, status: op.OctoStatus, job: str) -> None:
        """An idle OctoPrint shows a file of ours that we did not see printing (the
        driver restarted): its end, once, from the status or the file's record."""
        done: JobFinished | JobFailed | None = op.finished_in_status(self._printer_id, status)
        key = (status.path, status.file_date)
        if done is None and key not in self._checked:
            if len(self._checked) > OUTCOME_MEMORY:
                self._checked.clear()
            self._checked.add(key)
            done = op.record_outcome(self._printer_id, job, await self._record(status.path))
        if done is not None:
            await self._send_outcome(done)

    async def _record(self, path: str) -> op.PrintRecord | None:
        """The print record of a file in local storage; ``None`` if it has none."""
        try:
            response = await self._request("GET", f"/api/files/local/{path}", ok=(404,))
            if response.status_code == 404:
                return None
            return op.parse_file(json_body(response, path))
        except (op.PayloadError, AuthRefused) as exc:
            log.warning(
                "file record not readable",
                extra={"printer": self._printer_id, "path": path, "reason": str(exc)},
            )
            return None
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            log.warning(
                "file record not readable", extra={"printer": self._printer_id, "reason": str(exc)}
            )
            return None

    async def _on_ended(self, ended: op.PrintEnded) -> None:
        async with self._lock:
            self._ended[ended.path] = ended
            while len(self._ended) > OUTCOME_MEMORY:
                del self._ended[next(iter(self._ended))]
            done = op.ended_outcome(self._printer_id, ended)
            if done is None or self.health.offline:
                return
            if self._held is not None and self._held.path == ended.path:
                self._held, self._idle_since = None, None
            await self._send_outcome(done)

    async def _send_outcome(self, done: JobFinished | JobFailed) -> None:
        if done.job_id in self._sent_outcomes:
            return
        self._sent_outcomes.append(done.job_id)
        del self._sent_outcomes[:-OUTCOME_MEMORY]
        log.info(
            "print ended on octoprint",
            extra={
                "printer": self._printer_id,
                "job": done.job_id,
                "outcome": "finished" if isinstance(done, JobFinished) else done.reason,
            },
        )
        await self._send(done)

    async def _send(self, event: DriverEvent) -> None:
        if self._events is None:
            return
        try:
            await self._events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._events = None

    # -- the push socket --------------------------------------------------------------

    async def _push_loop(self) -> None:
        """Keep the push socket open beside the polls; never raises but Cancelled."""
        opts = self._options
        delays = backoff_delays(opts.backoff_initial, opts.backoff_max)
        while True:
            try:
                await self._push_session()
                reason = "push socket closed"
            except BaseException as exc:
                reason = link_failure(exc, _LINK_ERRORS, log, self._printer_id)
            if self.push_up:
                delays = backoff_delays(opts.backoff_initial, opts.backoff_max)
            self.push_up, self._pushed_at = False, None
            log.info(
                "octoprint push socket down, polling goes on",
                extra={"printer": self._printer_id, "reason": reason},
            )
            self._wake.set()
            await trio.sleep(next(delays))

    async def _push_session(self) -> None:
        answer = json_body(
            await self._request("POST", "/api/login", json={"passive": True}), "/api/login"
        )
        try:
            auth = op.parse_login(answer)
        except op.PayloadError as exc:
            raise LinkDown(f"no push session: {exc}") from None
        subscribe = {
            "subscribe": {
                "state": {"logs": False, "messages": False},
                "events": list(EVENTS),
                "plugins": False,
            }
        }
        parts = urlsplit(self._options.url)
        tls = parts.scheme == "https"
        host, port = parts.hostname or "localhost", parts.port or (443 if tls else 80)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self._options.timeout):
                    if tls:
                        stream = await trio.open_ssl_over_tcp_stream(host, port)
                    else:
                        stream = await trio.open_tcp_stream(host, port)
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        parts.netloc.rsplit("@", 1)[-1],
                        f"{parts.path.rstrip('/')}/sockjs/websocket",
                        message_queue_size=64,
                    )
                for message in ({"auth": auth}, subscribe, {"throttle": 2}):
                    await ws.send_message(orjson.dumps(message).decode())
                self.push_up = True
                try:
                    while True:
                        await self._on_frame(await ws.get_message())
                finally:
                    # The peer may be gone or mute: drop the socket, no close handshake.
                    nursery.cancel_scope.cancel()
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            message = op.parse_message(frame)
        except op.PayloadError as exc:
            log.warning(
                "bad frame from octoprint ignored",
                extra={"printer": self._printer_id, "reason": str(exc)},
            )
            return
        if isinstance(message, op.Current):
            self._pushed_at = trio.current_time()
            await self._apply(message.status, list(message.problems))
        elif isinstance(message, op.PrintEnded):
            await self._on_ended(message)
        elif isinstance(message, op.PrintBegan):
            self._ended.pop(message.path, None)
        elif isinstance(message, op.StateChanged):
            self._wake.set()
        elif isinstance(message, op.ReauthRequired):
            raise LinkDown(f"octoprint asks the push socket to log in again ({message.reason})")

    # -- HTTP commands ----------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, limit: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await request(
            self._http,
            self._printer_id,
            method,
            path,
            limit=limit if limit is not None else self._options.timeout,
            **kwargs,
        )

    async def _fetch(self) -> op.OctoStatus:
        """OctoPrint's status now (``GET /api/job``). Raises ``PrinterUnreachable``,
        ``AuthRefused`` or ``DriverError``."""
        answer = json_body(await self._request("GET", "/api/job"), "/api/job")
        try:
            status, _ = op.from_job(answer)
        except op.PayloadError as exc:
            raise DriverError(f"odd answer from OctoPrint: {exc}") from None
        return status

    async def status(self) -> StatusReport:
        """Ask OctoPrint now. Checkpoint. Raises ``PrinterUnreachable``."""
        try:
            status = await self._fetch()
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            return StatusReport(self._printer_id, PrinterState.OFFLINE, message=exc.message)
        return op.status_report(self._printer_id, status)

    async def start_job(self, job: JobSpec) -> None:
        """Upload ``job``'s file into ``printfarmd/`` and print it.

        A no-op if OctoPrint already prints that file; if OctoPrint shows this job's file
        completed after its upload, it is not printed again and ``JobFinished`` is sent.
        Raises ``PrinterBusy`` (printing something else, no serial link),
        ``PrinterUnreachable`` or ``DriverError`` (upload or start refused).
        """
        name = op.upload_name(job.job_id, job.filename)
        now = await self._fetch()
        if now.busy:
            if now.origin == "local" and now.path == name:
                return  # our earlier start got through: never start a job twice
            raise PrinterBusy(f"printer {self._printer_id} is busy: OctoPrint is {now.text}")
        if now.state is not op.OctoState.OPERATIONAL:
            detail = f": {now.error}" if now.error else ""
            raise PrinterBusy(
                f"printer {self._printer_id} cannot print: OctoPrint is {now.text}{detail}"
            )
        done: JobFinished | JobFailed | None = None
        if now.path == name:
            done = op.finished_in_status(self._printer_id, now)
        if done is None:
            done = op.record_outcome(self._printer_id, job.job_id, await self._record(name))
        if isinstance(done, JobFinished):
            log.info(
                "job already printed on this printer, not printed again",
                extra={"printer": self._printer_id, "job": job.job_id},
            )
            async with self._lock:
                if job.job_id in self._sent_outcomes:
                    self._sent_outcomes.remove(job.job_id)
                await self._send_outcome(done)
            return
        try:
            data = await trio.Path(job.path).read_bytes()
        except OSError as exc:
            raise DriverError(f"cannot read {job.filename}: {exc.strerror or exc}") from None
        async with self._lock:
            if job.job_id in self._sent_outcomes:
                self._sent_outcomes.remove(job.job_id)  # a retry of this job may end again
            self._ended.pop(name, None)
            self._held, self._idle_since = Held(job.job_id, name), None
        folder, base = name.rsplit("/", 1)
        try:
            response = await self._request(
                "POST",
                "/api/files/local",
                limit=self._options.upload_timeout,
                files={"file": (base, data, "application/octet-stream")},
                data={"path": folder, "select": "true", "print": "true"},
            )
        except PrinterUnreachable:
            # The answer may be what got lost: look before reporting a failure.
            again = await self._fetch()
            if not (again.busy and again.path == name):
                raise
            return
        except DriverError:
            self._held = None
            raise
        body = json_body(response, "/api/files/local")
        if not (isinstance(body, dict) and body.get("effectivePrint") is True):
            self._held = None
            raise DriverError(f"OctoPrint stored {name} but did not start printing it")

    async def _job_command(self, job_id: str, states: frozenset[op.OctoState], **body: str) -> None:
        now = await self._fetch()
        if now.job_id != job_id or now.state not in states:
            return  # not this job, or nothing to do
        response = await self._request("POST", "/api/job", json=body, ok=(409,))
        if response.status_code == 409 and body["command"] != "cancel":
            raise DriverError(
                f"OctoPrint refused to {body.get('action', body['command'])}: HTTP 409"
            )

    async def cancel_job(self, job_id: str) -> None:
        """Cancel ``job_id`` if OctoPrint prints it; no ``JobFailed`` follows."""
        async with self._lock:
            if job_id not in self._sent_outcomes:
                self._sent_outcomes.append(job_id)  # the farm asked: not a printer failure
                del self._sent_outcomes[:-OUTCOME_MEMORY]
        await self._job_command(job_id, op.BUSY - {op.OctoState.CANCELLING}, command="cancel")

    async def pause_job(self, job_id: str) -> None:
        await self._job_command(
            job_id,
            frozenset({op.OctoState.PRINTING, op.OctoState.STARTING, op.OctoState.RESUMING}),
            command="pause",
            action="pause",
        )

    async def resume_job(self, job_id: str) -> None:
        await self._job_command(
            job_id,
            frozenset({op.OctoState.PAUSED, op.OctoState.PAUSING}),
            command="pause",
            action="resume",
        )

    async def emergency_stop(self) -> None:
        """Send ``M112`` through OctoPrint, which sends it at once (ahead of its queue),
        switches the heaters off and closes the serial link: the print fails
        (``JobFailed`` follows) and the printer stays OFFLINE until someone reconnects it
        in OctoPrint. Nothing to do when OctoPrint has no printer link. Raises
        ``PrinterUnreachable`` or ``DriverError``."""
        response = await self._request(
            "POST", "/api/printer/command", json={"commands": ["M112"]}, ok=(409,)
        )
        if response.status_code == 409:
            log.info(
                "emergency stop: octoprint has no printer link, nothing to stop",
                extra={"printer": self._printer_id},
            )
        else:
            log.warning("emergency stop sent", extra={"printer": self._printer_id})

    async def forget_job(self, job_id: str) -> None:
        """Delete the files uploaded for ``job_id`` from OctoPrint's ``printfarmd/``.

        A missing file or folder is fine; a file OctoPrint is printing is kept (logged).
        Raises ``PrinterUnreachable`` (or ``DriverError`` for a refused key)."""
        response = await self._request("GET", f"/api/files/local/{op.UPLOAD_DIR}", ok=(404,))
        if response.status_code == 404:
            return
        try:
            paths = op.folder_files(json_body(response, op.UPLOAD_DIR))
        except (op.PayloadError, DriverError) as exc:
            log.warning(
                "odd folder listing", extra={"printer": self._printer_id, "reason": str(exc)}
            )
            return
        for path in paths:
            if op.job_id_of(path) != job_id:
                continue
            gone = await self._request("DELETE", f"/api/files/local/{path}", ok=(404, 409))
            if gone.status_code == 409:
                log.warning(
                    "job file in use, not deleted",
                    extra={"printer": self._printer_id, "job": job_id, "path": path},
                )

    async def run_gcode(self, script: str) -> None:
        """Send ``script``'s lines through ``/api/printer/command`` (queued by OctoPrint).

        Raises ``DriverError`` when OctoPrint has no printer link (HTTP 409)."""
        lines = [line.strip() for line in script.splitlines() if line.strip()]
        if lines:
            await self._request(
                "POST",
                "/api/printer/command",
                json={"commands": lines},
                limit=self._options.upload_timeout,
            )

    async def snapshot(self) -> bytes | None:
        """The camera image at ``snapshot_url``, or ``None`` without one."""
        url = self._options.snapshot_url
        if not url:
            return None
        if urlsplit(url).netloc not in ("", urlsplit(self._base).netloc):
            # Another host: it gets no API key.
            async with httpx.AsyncClient() as other:
                response = await request(
                    other, self._printer_id, "GET", url, limit=self._options.timeout
                )
            return response.content
        response = await self._request("GET", url)
        return response.content
