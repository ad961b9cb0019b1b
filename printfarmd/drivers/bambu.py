"""Bambu Lab printers in LAN mode: the thin network loop.

Each printer is its own MQTT broker (TLS on 8883, user ``bblp``, the LAN access code as
password). ``run`` keeps one link to it with the project's paho-on-trio adapter
(``mqtt_trio.MqttLink``): it subscribes to ``device/<serial>/report``, asks for a full
report (``pushing.pushall``) on every connect and every ``pushall_interval`` seconds
(every ``timeout`` while none has arrived since the connect),
merges every report (``bambu_protocol``, pure) and turns the merged status into driver
events. Commands go to ``device/<serial>/request``; files go to the printer's SD card
over implicit FTPS (990) in a worker thread. The printer's certificate is pinned
(``bambu_tls``): trust on first use, or ``ca_fingerprint``.

Until a full report arrived since the link came up, the printer is OFFLINE and nothing
is decided. A finished printer says FINISH until its next print: ``JobFinished`` (and
``JobFailed`` for FAILED) is sent once per job. Requests go out with QoS 0: one that
is lost with the link is not delivered later (a start that arrives minutes late would
print a job the farm has given up on); a cancel that cannot be sent stays pending and
is sent when the printer is back still working on that job.
"""

from __future__ import annotations

import contextlib
import ftplib
import itertools
import logging
import math
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio

from printfarmd.config import BambuOptions
from printfarmd.drivers import bambu_protocol as proto
from printfarmd.drivers import bambu_tls as tls
from printfarmd.drivers.base import (
    DriverError,
    DriverEvent,
    JobFinished,
    JobSpec,
    MaterialsReport,
    PrinterBusy,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.models import PrinterState
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings

log = logging.getLogger("printfarmd.drivers.bambu")

#: Outcomes remembered to send each one once (older ones are forgotten).
OUTCOME_MEMORY = 64
_BUSY = (PrinterState.PRINTING, PrinterState.PAUSED)


class BambuDriver:
    """``PrinterDriver`` for one Bambu Lab printer in LAN mode.

    Construct with ``BambuDriver(printer_id, options)``. ``bambu`` is the merged
    status (a value); ``rejected`` counts reports that were malformed or odd.
    """

    def __init__(self, printer_id: str, options: BambuOptions) -> None:
        self._printer_id = printer_id
        self._options = options
        serial = options.serial
        self._report_topic = f"device/{serial}/report"
        self._request_topic = f"device/{serial}/request"
        override = tls.normalize_fingerprint(options.ca_fingerprint)
        pin_file = Path(options.state_dir) / f"{printer_id}.json" if options.state_dir else None
        self.pins = tls.PinStore(pin_file, serial=serial, override=override)
        self.bambu = proto.BambuStatus()
        self.link_error = ""
        self.rejected = 0
        self.pending_cancels: set[str] = set()
        self._sent_outcomes: list[str] = []
        #: Jobs started again whose old outcome the printer may still show: no outcome
        #: for them until it shows them working.
        self._restarting: set[str] = set()
        self._materials: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._seq = itertools.count(1)
        self._replies: dict[str, tuple[trio.Event, list[proto.CommandReply]]] = {}
        self._changed = trio.Event()
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[DriverEvent](math.inf)
        self._last_offline = ""
        self._last_pushall = -math.inf
        self._link: MqttLink | None = None
        self._running = False

    @property
    def printer_id(self) -> str:
        return self._printer_id

    # -- the link ---------------------------------------------------------------------

    def _settings(self) -> MqttSettings:
        o = self._options
        return MqttSettings(
            host=o.host,
            port=o.mqtt_port,
            username="bblp",
            password=o.access_code,
            keepalive=o.keepalive,
            tls=True,
            backoff_initial=o.backoff_initial,
            backoff_max=o.backoff_max,
        )

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up and report until cancelled.

        ``task_status.started()`` once the first full report arrived, or the first
        connection failed or was refused (an OFFLINE report says why), or ``timeout``
        passed without a report (OFFLINE). Never raises but ``Cancelled``.
        """
        if self._running:
            raise RuntimeError(f"bambu printer {self._printer_id} is already running")
        self._running = True
        link = MqttLink(
            self._settings(),
            subscriptions=[(self._report_topic, 0)],
            on_message=self._on_message,
            on_state=self._on_state,
            on_connect_error=self._on_connect_error,
            ssl_context=tls.PinningContext(self.pins, "mqtt"),
        )
        self._link = link
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, events)
                await nursery.start(link.run)
                nursery.start_soon(self._pusher, link)
                with trio.move_on_after(self._options.timeout):
                    while not (self.bambu.complete or self.link_error):
                        await self._wait_changed()
                if not self.bambu.complete:
                    self._offline(self.link_error or "no report from the printer")
                task_status.started()
        finally:
            self._link = None
            self._running = False

    async def _forward(self, events: trio.MemorySendChannel[DriverEvent]) -> None:
        async for event in self._outbox_recv:
            try:
                await events.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep_forever()

    async def _pusher(self, link: MqttLink) -> None:
        """A full report every ``pushall_interval``; sooner (every ``timeout``) while
        none has arrived since the link came up (the first request may have been lost)."""
        o = self._options
        while True:
            await trio.sleep(min(o.timeout, o.pushall_interval))
            if not link.connected:
                continue
            due = self._last_pushall + (
                o.timeout if not self.bambu.complete else o.pushall_interval
            )
            if trio.current_time() >= due:
                self._pushall()

    def _pushall(self) -> None:
        self._last_pushall = trio.current_time()
        self._publish(proto.pushall(next(self._seq)))

    def _publish(self, payload: bytes) -> None:
        link = self._link
        if link is not None:
            link.publish(self._request_topic, payload, qos=0)

    def _emit(self, event: DriverEvent) -> None:
        self._outbox_send.send_nowait(event)

    def _offline(self, message: str) -> None:
        if message != self._last_offline:
            self._last_offline = message
            self._emit(StatusReport(self._printer_id, PrinterState.OFFLINE, message=message))

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    # -- link callbacks (trio thread, never block) -----------------------------------

    def _on_state(self, up: bool) -> None:
        self.bambu = proto.BambuStatus()  # nothing known until a full report
        if up:
            self.link_error = ""
            self._pushall()
        else:
            self._offline("printer unreachable: connection lost")
        self._poke()

    def _on_connect_error(self, reason: str) -> None:
        self.link_error = _explain(reason)
        self._offline(self.link_error)
        self._poke()

    def _on_message(self, msg: Message) -> None:
        if msg.topic != self._report_topic:
            self._reject(msg.topic, "unexpected topic")
            return
        try:
            data = proto.parse_report(msg.payload)
        except proto.BambuPayloadError as exc:
            self._reject(msg.topic, str(exc))
            return
        reply = proto.command_reply(data)
        if reply is not None:
            waiting = self._replies.get(reply.sequence_id)
            if waiting is not None:
                waiting[1].append(reply)
                waiting[0].set()
        self.bambu, problems = proto.apply_report(self.bambu, data)
        for problem in problems:
            self._reject(msg.topic, problem)
        self._after_update()
        self._poke()

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning(
            "bambu report ignored",
            extra={"printer": self._printer_id, "topic": topic, "reason": reason[:300]},
        )

    def _after_update(self) -> None:
        status = self.bambu
        if not status.complete:
            return
        self._last_offline = ""
        if status.job_id in self._restarting and (
            status.gcode_state in proto.WORKING or status.gcode_state is proto.GcodeState.PAUSE
        ):
            self._restarting.discard(status.job_id)
            if status.job_id in self._sent_outcomes:
                self._sent_outcomes.remove(status.job_id)  # this attempt may end again
        done = proto.outcome(self._printer_id, status)
        if done is not None and done.job_id in self._restarting:
            done = None  # the outcome of the attempt before
        if done is not None and done.job_id not in self._sent_outcomes:
            self._sent_outcomes.append(done.job_id)
            del self._sent_outcomes[:-OUTCOME_MEMORY]
            self._emit(done)
        report = proto.status_report(self._printer_id, status)
        self._emit(report)
        loaded = proto.materials(status)
        if loaded != self._materials:
            self._materials = loaded
            self._emit(MaterialsReport(self._printer_id, *loaded))
        for job_id in sorted(self.pending_cancels):
            self.pending_cancels.discard(job_id)
            if report.job_id == job_id and report.state in _BUSY:
                log.info("pending cancel sent", extra={"printer": self._printer_id, "job": job_id})
                self._publish(proto.print_command(next(self._seq), "stop"))

    # -- commands ---------------------------------------------------------------------

    def _require_status(self) -> proto.BambuStatus:
        link = self._link
        if link is None or not link.connected:
            reason = self.link_error or "not connected"
            raise PrinterUnreachable(f"bambu printer {self._printer_id}: {reason}")
        if not self.bambu.complete:
            raise PrinterUnreachable(f"bambu printer {self._printer_id}: no report yet")
        return self.bambu

    async def _request(
        self, build: Callable[[int], bytes], done: Callable[[], bool], limit: float, what: str
    ) -> None:
        """Publish a request and wait for its answer or for ``done()`` to hold.

        Raises ``DriverError`` for a refusal, ``PrinterUnreachable`` after ``limit``."""
        seq = next(self._seq)
        event, box = trio.Event(), list[proto.CommandReply]()
        self._replies[str(seq)] = (event, box)
        try:
            self._publish(build(seq))
            with trio.move_on_after(limit):
                while not box and not done():
                    await self._wait_changed()
        finally:
            del self._replies[str(seq)]
        if box and not box[0].ok:
            reason = box[0].reason or box[0].result.lower()
            raise DriverError(f"bambu printer {self._printer_id} refused {what}: {reason}")
        if not box and not done():
            raise PrinterUnreachable(
                f"bambu printer {self._printer_id} did not answer {what} within {limit:g} s"
            )

    async def status(self) -> StatusReport:
        """The last merged status. Checkpoint. ``PrinterUnreachable`` while the link is
        down or no full report has arrived."""
        await trio.lowlevel.checkpoint()
        return proto.status_report(self._printer_id, self._require_status())

    async def start_job(self, job: JobSpec) -> None:
        """Upload ``job``'s file to the SD card (FTPS) and start it.

        A no-op if the printer already works on it; ``JobFinished`` instead of a second
        print if it shows it FINISHed. Raises ``PrinterBusy``, ``PrinterUnreachable`` or
        ``DriverError`` (upload or start refused, file unreadable).
        """
        now = self._require_status()
        state = proto.farm_state(now)
        if state in _BUSY:
            if now.job_id == job.job_id:
                return  # our earlier start got through: never start a job twice
            raise PrinterBusy(f"bambu printer {self._printer_id} is busy ({now.gcode_file})")
        if now.job_id == job.job_id and now.gcode_state is proto.GcodeState.FINISH:
            log.warning(
                "job already printed on the printer: not printed again",
                extra={"printer": self._printer_id, "job": job.job_id},
            )
            if job.job_id not in self._sent_outcomes:
                self._sent_outcomes.append(job.job_id)
            self._emit(JobFinished(self._printer_id, job.job_id))
            await trio.lowlevel.checkpoint()
            return
        if state is not PrinterState.IDLE:
            raise PrinterBusy(f"bambu printer {self._printer_id} is {state.value}")
        name = proto.upload_name(job.job_id, job.filename)
        await self._upload(job, name)
        self._restarting.add(job.job_id)
        self.pending_cancels.discard(job.job_id)

        def started() -> bool:
            s = self.bambu
            return s.job_id == job.job_id and (
                s.gcode_state in proto.WORKING or s.gcode_state is proto.GcodeState.PAUSE
            )

        opts = self._options
        await self._request(
            lambda seq: proto.start_request(seq, job.job_id, name, use_ams=opts.use_ams),
            started,
            opts.start_timeout,
            f"to print {name}",
        )

    async def _ftps(self, work: Callable[[ftplib.FTP], Any], limit: float, what: str) -> Any:
        """Run ``work`` on a fresh FTPS session in a worker thread, within ``limit``.

        Raises ``PrinterUnreachable`` (connect, TLS, timeout, certificate refused) or
        ``DriverError`` (the server refused a command)."""
        o = self._options
        context = tls.PinningContext(self.pins, "ftps")

        def session() -> Any:
            ftp = tls.open_ftps(o.host, o.ftps_port, o.access_code, context, o.timeout)
            try:
                return work(ftp)
            finally:
                tls.close_ftps(ftp)

        try:
            with trio.fail_after(limit):
                return await trio.to_thread.run_sync(session, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise PrinterUnreachable(
                f"bambu printer {self._printer_id}: {what} took over {limit:g} s"
            ) from None
        except tls.CertificateChanged as exc:
            raise PrinterUnreachable(f"bambu printer {self._printer_id}: {exc}") from None
        except ftplib.error_perm as exc:
            if tls.ftp_reply_code(exc) == "530":
                raise DriverError(
                    f"bambu printer {self._printer_id}: access code refused (FTPS)"
                ) from None
            raise DriverError(f"bambu printer {self._printer_id}: {what}: {exc}") from None
        except (ftplib.Error, EOFError) as exc:
            raise DriverError(f"bambu printer {self._printer_id}: {what}: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            raise PrinterUnreachable(
                f"bambu printer {self._printer_id}: {what}: {exc.strerror or exc}"
                if isinstance(exc, OSError) and exc.strerror
                else f"bambu printer {self._printer_id}: {what}: {exc}"
            ) from None

    async def _upload(self, job: JobSpec, name: str) -> None:
        try:
            source = await trio.to_thread.run_sync(_open_binary, job.path)
        except OSError as exc:
            raise DriverError(f"cannot read {job.filename}: {exc.strerror or exc}") from None

        def store(ftp: ftplib.FTP) -> None:
            with contextlib.suppress(ftplib.error_perm):
                ftp.mkd(proto.UPLOAD_DIR)  # refused: it exists
            ftp.storbinary(f"STOR {name}", source)

        try:
            await self._ftps(store, self._options.upload_timeout, f"upload of {name}")
        finally:
            source.close()
        log.info("job uploaded", extra={"printer": self._printer_id, "job": job.job_id})

    async def forget_job(self, job_id: str) -> None:
        """Delete the job's uploaded file(s) from the SD card. A file that is gone is
        fine; the file of the print on the plate now is kept. Raises
        ``PrinterUnreachable`` only."""
        now = self.bambu
        if now.job_id == job_id and proto.farm_state(now) in _BUSY:
            log.warning(
                "uploaded file not deleted: printing",
                extra={"printer": self._printer_id, "job": job_id},
            )
            await trio.lowlevel.checkpoint()
            return

        def delete(ftp: ftplib.FTP) -> list[str]:
            try:
                names = ftp.nlst(proto.UPLOAD_DIR)
            except ftplib.error_perm:
                return []  # no folder: nothing was uploaded
            gone = []
            for entry in names:
                path = f"{proto.UPLOAD_DIR}/{entry.rsplit('/', 1)[-1]}"
                if proto.job_id_of(path) != job_id:
                    continue
                try:
                    ftp.delete(path)
                except ftplib.error_perm:
                    continue  # already gone
                gone.append(path)
            return gone

        try:
            gone = await self._ftps(delete, self._options.timeout * 3, "delete")
        except PrinterUnreachable:
            raise
        except DriverError as exc:
            log.warning(
                "uploaded file not deleted",
                extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
            )
            return
        if gone:
            log.info("uploaded file deleted", extra={"printer": self._printer_id, "job": job_id})

    async def cancel_job(self, job_id: str) -> None:
        """Stop ``job_id`` if the printer works on it (``print.stop``); no
        ``JobFailed`` follows. Unsent (link down, no report yet) it stays pending and
        is sent when the printer is back still on that job; the error is raised."""
        if job_id not in self._sent_outcomes:
            self._sent_outcomes.append(job_id)  # the farm asked: not a printer failure
        self.pending_cancels.add(job_id)
        try:
            now = self._require_status()
        except PrinterUnreachable as exc:
            log.warning(
                "cancel kept until the printer is back",
                extra={"printer": self._printer_id, "job": job_id, "reason": exc.message},
            )
            await trio.lowlevel.checkpoint()
            raise
        self.pending_cancels.discard(job_id)
        if now.job_id != job_id or proto.farm_state(now) not in _BUSY:
            await trio.lowlevel.checkpoint()
            return

        def stopped() -> bool:
            s = self.bambu
            return s.job_id != job_id or proto.farm_state(s) not in _BUSY

        await self._request(
            lambda seq: proto.print_command(seq, "stop"), stopped, self._options.timeout, "stop"
        )

    async def emergency_stop(self) -> None:
        """Stop whatever the printer prints at once with ``print.stop`` (LAN mode offers
        no M112); no ``JobFailed`` follows for a farm job. ``PrinterUnreachable`` while
        the link is down."""
        now = self._require_status()
        if now.job_id is not None and now.job_id not in self._sent_outcomes:
            self._sent_outcomes.append(now.job_id)  # the farm asked: not a printer failure
        if proto.farm_state(now) not in _BUSY:
            await trio.lowlevel.checkpoint()
            return

        def stopped() -> bool:
            return proto.farm_state(self.bambu) not in _BUSY

        await self._request(
            lambda seq: proto.print_command(seq, "stop"), stopped, self._options.timeout, "stop"
        )

    async def _pause_resume(self, job_id: str, command: str, when: PrinterState) -> None:
        now = self._require_status()
        if now.job_id != job_id or proto.farm_state(now) is not when:
            await trio.lowlevel.checkpoint()
            return  # not this job, or nothing to do
        target = PrinterState.PAUSED if command == "pause" else PrinterState.PRINTING

        def changed() -> bool:
            return proto.farm_state(self.bambu) is target

        await self._request(
            lambda seq: proto.print_command(seq, command), changed, self._options.timeout, command
        )

    async def pause_job(self, job_id: str) -> None:
        await self._pause_resume(job_id, "pause", PrinterState.PRINTING)

    async def resume_job(self, job_id: str) -> None:
        await self._pause_resume(job_id, "resume", PrinterState.PAUSED)

    async def run_gcode(self, script: str) -> None:
        """Run ``script`` (``print.gcode_line``); returns once the printer answered."""
        self._require_status()
        await self._request(
            lambda seq: proto.gcode_line(seq, script),
            lambda: False,
            self._options.timeout,
            "G-code",
        )

    async def snapshot(self) -> bytes | None:
        """No camera: the printers' streams (RTSP, port 6000) are not supported."""
        await trio.lowlevel.checkpoint()
        return None


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")  # the caller closes it


def _explain(reason: str) -> str:
    """An operator's reading of a connect failure."""
    lowered = reason.lower()
    if lowered.startswith("refused") and ("authori" in lowered or "password" in lowered):
        return "access code refused by the printer (check [printers.bambu] access_code)"
    if "certificate changed" in lowered:
        return reason
    return f"printer unreachable: {reason}"
