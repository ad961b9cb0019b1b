"""Prusa printers through PrusaLink (API v1): the thin network loop.

``run`` keeps a session with the printer's PrusaLink: it checks the credentials
(``GET /api/v1/info``), then polls ``GET /api/v1/status`` every ``heartbeat`` seconds
(PrusaLink pushes nothing). When the status names a job number it has not seen,
``GET /api/v1/job`` tells its file, and the file name tells the farm job. Every call has
a timeout; parsing is in ``prusalink_status`` (pure). Authentication is HTTP digest
(``username``/``password``) or, for older firmware, ``X-Api-Key``.

Failures: a poll that fails or times out ends the session, which is reopened after a
capped exponential backoff; after ``offline_after`` failures in a row (at once before the
first good answer) the printer is reported OFFLINE. Refused credentials are logged as an
error and keep it OFFLINE with a message saying so.

Jobs: the G-code is uploaded with ``PUT /api/v1/files/{storage}/printfarmd/<job id>_<name>``
and ``Print-After-Upload: ?1``. FINISHED, STOPPED (on the printer) and ERROR end a job
(each outcome reported once; a job the farm stopped is not reported as failed). A printer
that comes back IDLE without the job reports no outcome: the scheduler decides.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import httpx
import msgspec
import trio

from printfarmd.config import PrusaLinkOptions
from printfarmd.drivers import prusalink_status as pl
from printfarmd.drivers.base import (
    DriverError,
    DriverEvent,
    JobFailed,
    JobFinished,
    JobSpec,
    NotSupported,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.drivers.http_link import (
    AuthRefused,
    LinkDown,
    LinkHealth,
    json_body,
    keep_up,
    leaves,
    link_failure,
    request,
)
from printfarmd.models import PrinterState

log = logging.getLogger("printfarmd.drivers.prusalink")

#: Outcomes and job numbers remembered per printer (older ones are forgotten).
MEMORY = 64
_LINK_ERRORS = (LinkDown, DriverError, OSError, trio.TooSlowError)


class Held(msgspec.Struct, frozen=True):
    """The farm job the printer works on: ``confirmed`` once the printer was seen at it
    (until then an old FINISHED on the printer's screen is not this job's)."""

    job_id: str
    number: int | None = None
    confirmed: bool = False


@attrs.define
class PrusaLinkDriver:
    """``PrinterDriver`` for one printer behind PrusaLink.

    Construct with ``PrusaLinkDriver(printer_id, options)``. ``prusa`` is the last known
    status (a value); ``health`` counts failures in a row.
    """

    _printer_id: str
    _options: PrusaLinkOptions
    prusa: pl.PrusaStatus = attrs.field(init=False, factory=pl.PrusaStatus)
    health: LinkHealth = attrs.field(init=False)
    _refused: bool = attrs.field(init=False, default=False)
    _seen_once: bool = attrs.field(init=False, default=False)
    _sent_outcomes: list[str] = attrs.field(init=False, factory=list)
    _held: Held | None = attrs.field(init=False, default=None)
    #: PrusaLink job number -> farm job id (None: not one of ours).
    _jobs: dict[int, str | None] = attrs.field(init=False, factory=dict)
    _storage: str = attrs.field(init=False, default="")
    _events: trio.MemorySendChannel[DriverEvent] | None = attrs.field(init=False, default=None)
    _http: httpx.AsyncClient | None = attrs.field(init=False, default=None)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    @health.default
    def _health(self) -> LinkHealth:
        return LinkHealth(self._options.offline_after)

    @property
    def printer_id(self) -> str:
        return self._printer_id

    def _client(self) -> httpx.AsyncClient:
        opts = self._options
        auth = httpx.DigestAuth(opts.username, opts.password) if opts.password else None
        headers = {"X-Api-Key": opts.api_key} if opts.api_key else {}
        return httpx.AsyncClient(
            base_url=opts.url.rstrip("/"),
            auth=auth,
            headers=headers,
            timeout=httpx.Timeout(opts.timeout),
        )

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
        async with self._client() as http:
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
        """Check the credentials, then poll until a poll fails. Returns why it ended;
        never returns otherwise, never raises but Cancelled."""
        try:
            info = json_body(await self._request("GET", "/api/v1/info"), "/api/v1/info")
            self._refused = False
            await self._poll()
            if not ready.is_set():
                name = info.get("name") if isinstance(info, dict) else None
                log.info(
                    "prusalink connected", extra={"printer": self._printer_id, "printer_name": name}
                )
            self._seen_once = True
            ready.set()
            while True:
                await trio.sleep(self._options.heartbeat)
                await self._poll()
        except BaseException as exc:
            reason = link_failure(exc, _LINK_ERRORS, log, self._printer_id)
            self._refused = any(isinstance(e, AuthRefused) for e in leaves(exc))
            return reason

    async def _failed(self, reason: str) -> None:
        was_offline = self.health.offline
        offline = self.health.failed()
        log.info(
            "prusalink link failed",
            extra={"printer": self._printer_id, "reason": reason, "failures": self.health.failures},
        )
        if self._refused:
            if not was_offline or self.health.failures == 1:
                log.error(
                    "prusalink refused the credentials",
                    extra={"printer": self._printer_id, "reason": reason},
                )
            self.health.offline = True
            message = (
                "PrusaLink refused the credentials (printers.prusalink.username/password "
                f"or api_key): {reason}"
            )
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
        """``GET /api/v1/status`` and apply it; a malformed answer is logged and ignored."""
        response = await self._request("GET", "/api/v1/status")
        if self.health.answered() and self._seen_once:
            log.info("printer back online", extra={"printer": self._printer_id})
        try:
            status, problems = pl.parse_status(json_body(response, "/api/v1/status"))
        except (pl.PayloadError, DriverError) as exc:
            log.warning(
                "odd answer from prusalink ignored",
                extra={"printer": self._printer_id, "reason": str(exc)},
            )
            return
        for problem in problems:
            log.warning(
                "odd prusalink status field ignored",
                extra={"printer": self._printer_id, "reason": problem},
            )
        async with self._lock:
            job = await self._job_of(status.job_number)
            self.prusa = status
            await self._settle(status, job)

    async def _job_of(self, number: int | None) -> str | None:
        """The farm job of PrusaLink's job ``number`` (asks ``/api/v1/job`` once)."""
        if number is None:
            return None
        if number in self._jobs:
            return self._jobs[number]
        response = await self._request("GET", "/api/v1/job")
        if response.status_code == 204 or not response.content:
            return None
        try:
            job = pl.parse_job(json_body(response, "/api/v1/job"))
        except (pl.PayloadError, DriverError) as exc:
            log.warning(
                "odd job answer from prusalink ignored",
                extra={"printer": self._printer_id, "reason": str(exc)},
            )
            return None
        if job.number != number:
            return None  # the job changed between the two answers: ask again next time
        self._jobs[number] = job.job_id
        while len(self._jobs) > MEMORY:
            del self._jobs[next(iter(self._jobs))]
        return job.job_id

    async def _settle(self, status: pl.PrusaStatus, job: str | None) -> None:
        """Report ``status``, and first the end of a job of ours that it shows."""
        held = self._held
        at_work = status.state in pl.ACTIVE or status.state is pl.PrusaState.BUSY
        if job is not None and at_work:
            self._held = Held(job, status.job_number, confirmed=True)
        else:
            done = pl.outcome(self._printer_id, status, job)
            if (
                done is None
                and held is not None
                and held.confirmed
                and status.state in pl.ENDED
                and status.job_number in (None, held.number)
            ):
                # The printer shows the end without naming the job (PrusaLink on a Pi
                # drops it at once): it is the end of the job we saw it working on.
                done = pl.outcome(self._printer_id, status, held.job_id)
            if done is not None:
                if held is not None and held.job_id == done.job_id:
                    self._held = None
                await self._send_outcome(done)
            elif held is not None and held.confirmed and farm_idle(status):
                self._held = None  # back idle without the job: the scheduler decides
        await self._send(pl.status_report(self._printer_id, status, job if at_work else None))

    async def _send_outcome(self, done: JobFinished | JobFailed) -> None:
        if done.job_id in self._sent_outcomes:
            return
        self._sent_outcomes.append(done.job_id)
        del self._sent_outcomes[:-MEMORY]
        log.info(
            "print ended on prusalink",
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

    async def _fetch(self) -> tuple[pl.PrusaStatus, str | None]:
        """The status now and the farm job it names. Raises ``PrinterUnreachable``,
        ``AuthRefused`` or ``DriverError``."""
        answer = json_body(await self._request("GET", "/api/v1/status"), "/api/v1/status")
        try:
            status, _ = pl.parse_status(answer)
        except pl.PayloadError as exc:
            raise DriverError(f"odd answer from PrusaLink: {exc}") from None
        async with self._lock:
            return status, await self._job_of(status.job_number)

    async def _storage_path(self) -> str:
        """The storage jobs go to: the configured one, else the first writable one."""
        if self._options.storage:
            return self._options.storage
        if not self._storage:
            answer = json_body(await self._request("GET", "/api/v1/storage"), "/api/v1/storage")
            try:
                found = pl.choose_storage(pl.parse_storage(answer))
            except pl.PayloadError as exc:
                raise DriverError(f"odd storage answer from PrusaLink: {exc}") from None
            if found is None:
                raise DriverError(f"printer {self._printer_id} lists no writable storage")
            self._storage = found
        return self._storage

    async def status(self) -> StatusReport:
        """Ask PrusaLink now. Checkpoint. Raises ``PrinterUnreachable``."""
        try:
            status, job = await self._fetch()
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            return StatusReport(self._printer_id, PrinterState.OFFLINE, message=exc.message)
        at_work = status.state in pl.ACTIVE or status.state is pl.PrusaState.BUSY
        return pl.status_report(self._printer_id, status, job if at_work else None)

    async def start_job(self, job: JobSpec) -> None:
        """Upload ``job``'s file into ``printfarmd/`` with ``Print-After-Upload``.

        A no-op if the printer already prints it; if it shows this job FINISHED, it is not
        printed again and ``JobFinished`` is sent. Raises ``PrinterBusy`` (at work,
        needing attention, in error, no printer link), ``PrinterUnreachable`` or
        ``DriverError`` (upload refused).
        """
        name = pl.upload_name(job.job_id, job.filename)
        now, current = await self._fetch()
        if now.state in pl.ACTIVE or now.state is pl.PrusaState.BUSY:
            if current == job.job_id:
                return  # our earlier start got through: never start a job twice
            raise PrinterBusy(f"printer {self._printer_id} is busy: {now.raw_state}")
        if not now.printer_ok or now.state not in pl.PRINTABLE:
            raise PrinterBusy(
                f"printer {self._printer_id} cannot print: PrusaLink says {now.raw_state}"
                + ("" if now.printer_ok else f" ({now.printer_message})")
            )
        if now.state is pl.PrusaState.FINISHED and current == job.job_id:
            log.info(
                "job already printed on this printer, not printed again",
                extra={"printer": self._printer_id, "job": job.job_id},
            )
            async with self._lock:
                if job.job_id in self._sent_outcomes:
                    self._sent_outcomes.remove(job.job_id)
                await self._send_outcome(JobFinished(self._printer_id, job.job_id))
            return
        storage = await self._storage_path()
        try:
            data = await trio.Path(job.path).read_bytes()
        except OSError as exc:
            raise DriverError(f"cannot read {job.filename}: {exc.strerror or exc}") from None
        async with self._lock:
            if job.job_id in self._sent_outcomes:
                self._sent_outcomes.remove(job.job_id)  # a retry of this job may end again
            self._held = Held(job.job_id)
        try:
            await self._request(
                "PUT",
                f"/api/v1/files{storage}/{name}",
                limit=self._options.upload_timeout,
                content=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Print-After-Upload": "?1",
                    "Overwrite": "?1",
                },
            )
        except PrinterUnreachable:
            # The answer may be what got lost: look before reporting a failure.
            again, current = await self._fetch()
            if not (again.state in pl.ACTIVE and current == job.job_id):
                raise
        except DriverError:
            self._held = None
            raise

    async def _job_command(
        self, job_id: str, states: frozenset[pl.PrusaState], method: str, suffix: str
    ) -> None:
        now, current = await self._fetch()
        if current != job_id or now.state not in states or now.job_number is None:
            return  # not this job, or nothing to do
        response = await self._request(
            method, f"/api/v1/job/{now.job_number}{suffix}", ok=(404, 409)
        )
        if response.status_code in (404, 409) and method != "DELETE":
            raise DriverError(
                f"PrusaLink refused {suffix.strip('/') or 'stop'}: HTTP {response.status_code}"
            )

    async def cancel_job(self, job_id: str) -> None:
        """Stop ``job_id`` if the printer works on it; no ``JobFailed`` follows."""
        async with self._lock:
            if job_id not in self._sent_outcomes:
                self._sent_outcomes.append(job_id)  # the farm asked: not a printer failure
                del self._sent_outcomes[:-MEMORY]
        await self._job_command(job_id, pl.ACTIVE, "DELETE", "")

    async def pause_job(self, job_id: str) -> None:
        await self._job_command(job_id, frozenset({pl.PrusaState.PRINTING}), "PUT", "/pause")

    async def resume_job(self, job_id: str) -> None:
        await self._job_command(
            job_id, frozenset({pl.PrusaState.PAUSED, pl.PrusaState.ATTENTION}), "PUT", "/resume"
        )

    async def emergency_stop(self) -> None:
        """PrusaLink has no emergency stop: this stops the current job (any job) the
        printer's normal way (``DELETE /api/v1/job/{id}``: it parks and cools down).
        Nothing to do without a job. Raises ``PrinterUnreachable`` or ``DriverError``."""
        now, _ = await self._fetch()
        if now.job_number is None or now.state not in pl.ACTIVE:
            return
        await self._request("DELETE", f"/api/v1/job/{now.job_number}", ok=(404, 409))
        log.warning("emergency stop: job stopped", extra={"printer": self._printer_id})

    async def forget_job(self, job_id: str) -> None:
        """Delete the files uploaded for ``job_id`` from the printer's ``printfarmd/``.

        A missing file or folder is fine; a file being printed is kept (logged). Raises
        ``PrinterUnreachable`` (or ``DriverError`` when PrusaLink refuses us)."""
        storage = await self._storage_path()
        folder = f"/api/v1/files{storage}/{pl.UPLOAD_DIR}"
        response = await self._request("GET", folder, ok=(404,))
        if response.status_code == 404:
            return
        try:
            names = pl.folder_names(json_body(response, folder))
        except (pl.PayloadError, DriverError) as exc:
            log.warning(
                "odd folder listing", extra={"printer": self._printer_id, "reason": str(exc)}
            )
            return
        for name in names:
            if pl.job_id_of(name) != job_id:
                continue
            gone = await self._request("DELETE", f"{folder}/{name}", ok=(404, 409))
            if gone.status_code == 409:
                log.warning(
                    "job file in use, not deleted",
                    extra={"printer": self._printer_id, "job": job_id, "file": name},
                )

    async def run_gcode(self, script: str) -> None:
        """PrusaLink's API has no G-code console."""
        raise NotSupported(f"printer {self._printer_id}: PrusaLink cannot run G-code")

    async def snapshot(self) -> bytes | None:
        """The default camera's image (``/api/v1/cameras/snap``), or ``None`` when
        PrusaLink has no camera (204, 404 or 503)."""
        response = await self._request("GET", "/api/v1/cameras/snap", ok=(404, 503))
        if response.status_code != 200 or not response.content:
            return None
        return response.content


def farm_idle(status: pl.PrusaStatus) -> bool:
    return pl.farm_state(status) is PrinterState.IDLE
