"""MQTT printers and plate-clearing robots (the seed's job-handler protocol).

One ``MqttHub`` owns the broker link (``printfarmd.mqtt_trio.MqttLink``) for every MQTT
printer: it subscribes to the printers' and robots' progress topics and routes each
message to that printer's ``MqttPrinter`` driver. Printers listed in the config get a
driver at start (``hub.driver_for``); others that report ``idle`` are discovered and
handed to the scheduler's ``add_printer`` (late arrivals welcome).

The protocol itself (payloads, the at-most-once outcome logic) is pure and lives in
``mqtt_protocol``; this module is the thin network loop around it. Malformed payloads
and unknown ids are logged and ignored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from printfarmd.config import Config, MqttConfig, PrinterConfig
from printfarmd.drivers import mqtt_protocol as proto
from printfarmd.drivers.base import (
    DriverEvent,
    JobFinished,
    JobSpec,
    PlateCleared,
    PrinterBusy,
    PrinterDriver,
    PrinterUnreachable,
    StatusReport,
)
from printfarmd.errors import FarmError
from printfarmd.models import PrinterState
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings

log = logging.getLogger("printfarmd.drivers.mqtt")

#: Seconds between the hub's checks for silent printers and pending re-sends.
TICK = 0.25

AddPrinter = Callable[[PrinterConfig, PrinterDriver], Awaitable[object]]


def link_settings(config: MqttConfig) -> MqttSettings:
    return MqttSettings(
        host=config.host,
        port=config.port,
        client_id=config.client_id,
        username=config.username,
        password=config.password,
        keepalive=config.keepalive,
        tls=config.tls,
        ca_certs=config.ca_certs,
        certfile=config.certfile,
        keyfile=config.keyfile,
        tls_insecure=config.tls_insecure,
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
    )


class MqttPrinter:
    """``PrinterDriver`` for one MQTT printer; fed by its hub, publishes through it.

    Reports go through an unbounded outbox drained by ``run``, so the hub's message
    callback never blocks and reports keep the printer's order.
    """

    def __init__(self, printer_id: str, hub: MqttHub) -> None:
        self._printer_id = printer_id
        self._hub = hub
        self.tracker = proto.PrinterTracker(printer_id)
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[DriverEvent](math.inf)
        self._last_heard = -math.inf
        self._silent = True
        #: Job whose finished plate is announced to the robots until one clears it.
        self._awaiting: str | None = None
        self._seen_finish = False
        self._next_announce = math.inf
        self._changed = trio.Event()
        self._running = False

    @property
    def printer_id(self) -> str:
        return self._printer_id

    # -- fed by the hub (trio thread, never blocks) ----------------------------------

    def _emit(self, event: DriverEvent) -> None:
        self._outbox_send.send_nowait(event)

    def on_progress(self, msg: proto.PrinterProgress) -> None:
        self._last_heard = trio.current_time()
        self._silent = False
        for event in self.tracker.feed(msg):
            if isinstance(event, JobFinished):
                self._seen_finish = True
                self._awaiting = event.job_id
                self._announce()
            self._emit(event)
        self._changed.set()
        self._changed = trio.Event()

    def on_robot(self, msg: proto.RobotProgress) -> None:
        if not msg.completed:
            return
        # Only after our announcement (or before we ever saw a finish, e.g. after a
        # restart): a late redelivery must never clear the plate of a newer print.
        if self._awaiting is None and self._seen_finish:
            return
        self._awaiting = None
        self._next_announce = math.inf
        log.info("plate cleared by robot", extra={"printer": self._printer_id})
        self._emit(PlateCleared(self._printer_id))

    def on_link(self, up: bool) -> None:
        if not up:
            self._silent = True
            self._emit(StatusReport(self._printer_id, PrinterState.OFFLINE, message="broker lost"))

    def tick(self, now: float) -> None:
        """Time-based duties: silence -> offline; re-announce a plate to clear."""
        if not self._silent and now - self._last_heard > self._hub.config.printer_timeout:
            self._silent = True
            self._emit(
                StatusReport(self._printer_id, PrinterState.OFFLINE, message="printer silent")
            )
        if self._awaiting is not None and now >= self._next_announce:
            self._announce()

    def _announce(self) -> None:
        cfg = self._hub.config
        self._hub.publish(
            cfg.topics.printers,
            proto.build_announcement(self._printer_id, self._awaiting, time.time()),
        )
        self._next_announce = trio.current_time() + cfg.resend_interval

    # -- PrinterDriver ----------------------------------------------------------------

    async def run(
        self,
        events: trio.MemorySendChannel[DriverEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the current status (OFFLINE until the printer speaks), then forward
        reports until cancelled. A closed ``events`` channel silences the reports."""
        if self._running:
            raise RuntimeError(f"mqtt printer {self._printer_id} is already running")
        self._running = True
        try:
            first = self.tracker.current() or StatusReport(
                self._printer_id, PrinterState.OFFLINE, message="not heard from yet"
            )
            if self._silent:
                first = StatusReport(self._printer_id, PrinterState.OFFLINE, message=first.message)
            # Reports queued before we ran (a discovered printer's first words) already
            # carry the state; send the snapshot only if none is waiting.
            if self._outbox_recv.statistics().current_buffer_used == 0:
                self._emit(first)
            task_status.started()
            async for event in self._outbox_recv:
                try:
                    await events.send(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await trio.sleep_forever()
        finally:
            self._running = False

    async def status(self) -> StatusReport:
        """The last reported status. Checkpoint. ``PrinterUnreachable`` if none yet or
        the printer is silent."""
        await trio.lowlevel.checkpoint()
        current = self.tracker.current()
        if current is None or self._silent:
            raise PrinterUnreachable(f"mqtt printer {self._printer_id} has not reported")
        return current

    async def start_job(self, job: JobSpec) -> None:
        """Publish the assignment and wait until the printer reports the job.

        Re-sends every ``resend_interval`` (a printer that reconnected may have missed
        it; printers ignore repeats of the job they have). Raises ``PrinterBusy`` if it
        reports another job, ``PrinterUnreachable`` after ``start_timeout``.
        """
        cfg = self._hub.config
        current = self.tracker.current()
        if current is not None and current.job_id not in (None, job.job_id):
            raise PrinterBusy(f"mqtt printer {self._printer_id} is busy with {current.job_id}")
        self._awaiting = None
        self._next_announce = math.inf
        payload = proto.build_assignment(
            job, model_url=cfg.model_url.replace("{filename}", job.filename), now=time.time()
        )
        topic = proto.for_id(cfg.topics.assignment, self._printer_id)
        with trio.move_on_after(cfg.start_timeout):
            while True:
                self._hub.publish(topic, payload)
                with trio.move_on_after(cfg.resend_interval):
                    while not self._accepted(job.job_id):
                        await self._changed.wait()
                    return
        raise PrinterUnreachable(
            f"mqtt printer {self._printer_id} did not confirm job {job.job_id} "
            f"within {cfg.start_timeout:g} s"
        )

    def _accepted(self, job_id: str) -> bool:
        last = self.tracker.last
        if self.tracker.is_done(job_id):
            return True
        return (
            last is not None
            and last.job_id == job_id
            and last.status
            in (
                proto.DeviceStatus.PRINTING,
                proto.DeviceStatus.PAUSED,
            )
        )

    async def _command(self, command: proto.Command, job_id: str | None, script: str = "") -> None:
        await trio.lowlevel.checkpoint()
        if not self._hub.link.connected:
            raise PrinterUnreachable("the MQTT broker is not connected")
        self._hub.publish(
            proto.for_id(self._hub.config.topics.command, self._printer_id),
            proto.build_command(command, job_id, script),
        )

    async def cancel_job(self, job_id: str) -> None:
        """Publish a cancel command for ``job_id``. Checkpoint."""
        await self._command(proto.Command.CANCEL, job_id)

    async def pause_job(self, job_id: str) -> None:
        await self._command(proto.Command.PAUSE, job_id)

    async def resume_job(self, job_id: str) -> None:
        await self._command(proto.Command.RESUME, job_id)

    async def forget_job(self, job_id: str) -> None:
        """Nothing to remove: the job-handler protocol has no files on the printer (it
        fetches ``modelUrl``). Checkpoint."""
        await trio.lowlevel.checkpoint()

    async def emergency_stop(self) -> None:
        """Publish an ``emergency_stop`` command (``jobId`` null: whatever it prints).
        Checkpoint. ``PrinterUnreachable`` while the broker is not connected. The seed
        protocol has no emergency stop: this command is the farm's (docs/drivers.md)."""
        await self._command(proto.Command.EMERGENCY_STOP, None)

    async def run_gcode(self, script: str) -> None:
        """Publish a ``gcode`` command (printers without a console ignore it)."""
        await self._command(proto.Command.GCODE, None, script)

    async def snapshot(self) -> bytes | None:
        """MQTT printers have no camera in this protocol."""
        await trio.lowlevel.checkpoint()
        return None


class MqttHub:
    """The broker link and the router of MQTT messages to printer drivers.

    Construct, create drivers for configured printers with ``driver_for``, then
    ``await nursery.start(hub.run)`` before the scheduler starts. ``set_add_printer``
    wires discovery to the scheduler; printers discovered before that wait for it.
    """

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        topics = config.topics
        self.link = MqttLink(
            link_settings(config),
            subscriptions=[
                (proto.topic_filter(topics.printer_progress), 1),
                (proto.topic_filter(topics.robot_progress), 1),
            ],
            on_message=self.on_message,
            on_state=self._on_state,
        )
        self.printers: dict[str, MqttPrinter] = {}
        self._add_printer: AddPrinter | None = None
        self._pending: list[tuple[PrinterConfig, MqttPrinter]] = []
        self._nursery: trio.Nursery | None = None
        #: Unknown printers already logged once; printers the scheduler refused.
        self._ignored: set[str] = set()
        self._refused: set[str] = set()
        #: Messages that could not be used (malformed, unknown id): for tests and logs.
        self.rejected = 0

    def driver_for(self, printer: PrinterConfig) -> MqttPrinter:
        driver = MqttPrinter(printer.id, self)
        self.printers[printer.id] = driver
        return driver

    def publish(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, qos=1)

    @property
    def events(self) -> EventPublisher:
        """The publisher the notifier uses for its MQTT event topic (waits for PUBACK)."""
        return _AckedPublisher(self.link)

    def set_add_printer(self, add: AddPrinter) -> None:
        """Hand discovered printers (also those found so far) to ``add``. Not a checkpoint."""
        self._add_printer = add
        pending, self._pending = self._pending, []
        for printer, driver in pending:
            self._spawn_add(printer, driver)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled. Started after the first connection attempt
        and the discovery window."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.link.run)
            nursery.start_soon(self._ticker)
            if self.config.discovery_window > 0:
                await trio.sleep(self.config.discovery_window)
            log.info(
                "mqtt printers known at start",
                extra={"printers": ",".join(sorted(self.printers)) or "-"},
            )
            task_status.started()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            for driver in list(self.printers.values()):
                driver.tick(now)

    def _on_state(self, up: bool) -> None:
        for driver in self.printers.values():
            driver.on_link(up)

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning("mqtt message ignored", extra={"topic": topic, "reason": reason})

    def on_message(self, msg: Message) -> None:
        """Route one message. Never raises: bad input is logged and counted."""
        topics = self.config.topics
        printer_id = proto.match_topic(topics.printer_progress, msg.topic)
        if printer_id is not None:
            try:
                progress = proto.parse_printer_progress(msg.payload, printer_id)
            except proto.ProtocolError as exc:
                self._reject(msg.topic, str(exc))
                return
            driver = self.printers.get(printer_id) or self._discover(progress)
            if driver is not None:
                driver.on_progress(progress)
            return
        robot_id = proto.match_topic(topics.robot_progress, msg.topic)
        if robot_id is not None:
            try:
                robot = proto.parse_robot_progress(msg.payload, robot_id)
            except proto.ProtocolError as exc:
                self._reject(msg.topic, str(exc))
                return
            target = self.printers.get(robot.printer_id)
            if target is None:
                self._reject(msg.topic, f"unknown printer {robot.printer_id!r}")
                return
            target.on_robot(robot)
            return
        self._reject(msg.topic, "unexpected topic")

    def _discover(self, progress: proto.PrinterProgress) -> MqttPrinter | None:
        pid = progress.printer_id
        refused = pid in self._refused
        if refused or not self.config.discover or progress.status is not proto.DeviceStatus.IDLE:
            if pid not in self._ignored:
                self._ignored.add(pid)
                self._reject(f"printer {pid}", "unknown printer (registered when it reports idle)")
            else:
                self.rejected += 1
            return None
        d = self.config.discovered
        printer = PrinterConfig(
            id=pid,
            name=pid,
            driver="mqtt",
            materials=d.materials,
            nozzle_diameter=d.nozzle_diameter,
            bed_size=d.bed_size,
            tags=d.tags,
            auto_clear=d.auto_clear,
        )
        driver = self.driver_for(printer)
        self._ignored.discard(pid)
        log.info("mqtt printer discovered", extra={"printer": pid})
        if self._add_printer is None:
            self._pending.append((printer, driver))
        else:
            self._spawn_add(printer, driver)
        return driver

    def _spawn_add(self, printer: PrinterConfig, driver: MqttPrinter) -> None:
        add = self._add_printer
        if add is None or self._nursery is None:
            self._pending.append((printer, driver))
            return

        async def adding() -> None:
            try:
                await add(printer, driver)
            except FarmError as exc:
                log.error(
                    "discovered printer not added",
                    extra={"printer": printer.id, "reason": exc.message},
                )
                self.printers.pop(printer.id, None)
                # Its next reports are ignored (logged once), not offered again and again.
                self._refused.add(printer.id)

        self._nursery.start_soon(adding)


def open_mqtt_hub(config: Config) -> MqttHub | None:
    """The hub for ``config`` (``None`` when ``mqtt.host`` is empty: MQTT off)."""
    if not config.mqtt.host.strip():
        return None
    return MqttHub(config.mqtt)


class EventPublisher(Protocol):
    async def publish(self, topic: str, payload: bytes) -> None: ...


class _AckedPublisher:
    def __init__(self, link: MqttLink) -> None:
        self._link = link

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._link.publish_acked(topic, payload)
