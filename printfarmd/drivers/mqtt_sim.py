"""A fleet of MQTT printers and plate-clearing robots speaking the seed's topics.

Each simulated device has its own broker connection (as real ones do). A printer
reports its state on its progress topic every ``report_interval`` seconds, prints an
assignment in ``estimatedTime / speed`` seconds (from ``resumeProgress``), and after a
print keeps reporting ``idle`` at 100 % with the job id until a robot clears its plate.
It ignores repeats of an assignment it already has or finished (QoS 1 redeliveries and
the farm's re-sends). Robot ``rob-<n>`` serves the printers whose index modulo the
number of robots is ``n``: on an announcement on ``device/printers`` it "picks" the
plate for ``clean_time`` seconds and reports ``completed`` (a repeated announcement for a
job it already cleared is answered ``completed`` again without cleaning twice).

``open_mqtt_fleet`` is for tests and demos; ``printfarmd simulate mqtt`` runs one by hand.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import trio

from printfarmd.config import MqttTopics
from printfarmd.drivers import mqtt_protocol as proto
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings

log = logging.getLogger("printfarmd.mqtt_sim")


class FleetOptions(msgspec.Struct, frozen=True):
    printers: int = 2
    robots: int = 1
    #: Printer ids are ``<prefix><n>`` (n from 1).
    prefix: str = "mqtt-"
    speed: float = 60.0
    default_print_time: float = 60.0
    report_interval: float = 1.0
    clean_time: float = 0.2
    keepalive: int = 5
    backoff_initial: float = 0.2
    backoff_max: float = 1.0


class SimPrinter:
    """One simulated MQTT printer. ``started`` lists every job it began (tests check no
    job began twice); ``assignments`` counts every assignment message received and
    ``received`` keeps the parsed assignment of every job it began."""

    def __init__(self, printer_id: str, fleet: MqttFleet) -> None:
        self.printer_id = printer_id
        self.fleet = fleet
        self.job: str | None = None
        self.status = proto.DeviceStatus.IDLE
        self.finished: str | None = None
        self.started: list[str] = []
        self.received: list[proto.Assignment] = []
        self.assignments = 0
        self.fail_next = False
        #: How many ``emergency_stop`` commands it obeyed.
        self.emergency_stops = 0
        self._message = ""
        self._base = 0.0
        self._since: float | None = None
        self._rate = 0.0
        self._fail_at = math.inf
        self._recent: collections.deque[str] = collections.deque(maxlen=32)
        self._wake = trio.Event()
        self.link: MqttLink | None = None

    def progress(self, now: float) -> float:
        if self._since is None:
            return self._base
        return min(100.0, self._base + (now - self._since) * self._rate)

    def _poke(self) -> None:
        self._wake.set()

    def on_message(self, msg: Message) -> None:
        topics = self.fleet.topics
        try:
            if msg.topic == proto.for_id(topics.assignment, self.printer_id):
                self.assignments += 1
                self._assign(proto.parse_assignment(msg.payload))
            elif msg.topic == proto.for_id(topics.command, self.printer_id):
                self._command(proto.parse_command(msg.payload))
        except proto.ProtocolError as exc:
            log.warning("sim printer ignored a message", extra={"reason": str(exc)})

    def _assign(self, a: proto.Assignment) -> None:
        if a.job_id == self.job or a.job_id in self._recent:
            return  # a repeat: already printing or done
        if self.job is not None:
            log.warning("sim printer busy", extra={"printer": self.printer_id, "job": a.job_id})
            return
        opts = self.fleet.options
        total = a.estimated_time if a.estimated_time and a.estimated_time > 0 else None
        seconds = (total or opts.default_print_time) / opts.speed
        self.job = a.job_id
        self.finished = None
        self._message = ""
        self.started.append(a.job_id)
        self.received.append(a)
        self._recent.append(a.job_id)
        self.status = proto.DeviceStatus.PRINTING
        self._base = min(max(a.resume_progress, 0.0), 100.0)
        self._rate = 100.0 / seconds
        self._since = trio.current_time()
        self._fail_at = 50.0 if self.fail_next else math.inf
        self.fail_next = False
        self._poke()

    def _command(self, cmd: proto.PrinterCommand) -> None:
        now = trio.current_time()
        if cmd.job_id is not None and cmd.job_id != self.job:
            return
        if cmd.command is proto.Command.EMERGENCY_STOP:
            # Stops at once whatever it prints; the part stays on the plate (no robot is
            # called: nothing finished). Reports idle with the reason until the next job.
            self.emergency_stops += 1
            self.job, self._since, self._base = None, None, 0.0
            self.finished = None
            self.status = proto.DeviceStatus.IDLE
            self._message = "emergency stop"
        elif cmd.command is proto.Command.CANCEL and self.job is not None:
            self.job, self._since, self._base = None, None, 0.0
            self.status = proto.DeviceStatus.IDLE
        elif cmd.command is proto.Command.PAUSE and self.status is proto.DeviceStatus.PRINTING:
            self._base, self._since = self.progress(now), None
            self.status = proto.DeviceStatus.PAUSED
        elif cmd.command is proto.Command.RESUME and self.status is proto.DeviceStatus.PAUSED:
            self._since = now
            self.status = proto.DeviceStatus.PRINTING
        self._poke()

    def plate_cleared(self) -> None:
        self.finished = None
        self._poke()

    def _report(self) -> bytes:
        now = trio.current_time()
        if self.job is not None:
            p = self.progress(now)
            if p >= self._fail_at:
                job, self.job, self._since, self._base = self.job, None, None, 0.0
                self.status = proto.DeviceStatus.IDLE
                return proto.build_printer_progress(
                    self.printer_id, proto.DeviceStatus.ERROR, job, p, time.time(), "nozzle clog"
                )
            if p >= 100.0:
                self.finished, self.job, self._since = self.job, None, None
                self.status = proto.DeviceStatus.IDLE
            else:
                return proto.build_printer_progress(
                    self.printer_id, self.status, self.job, p, time.time()
                )
        if self.finished is not None:
            return proto.build_printer_progress(
                self.printer_id, proto.DeviceStatus.IDLE, self.finished, 100.0, time.time()
            )
        return proto.build_printer_progress(
            self.printer_id, proto.DeviceStatus.IDLE, None, 0.0, time.time(), self._message
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        topics, opts = self.fleet.topics, self.fleet.options
        self.link = MqttLink(
            self.fleet.settings(f"sim-printer-{self.printer_id}"),
            subscriptions=[
                (proto.for_id(topics.assignment, self.printer_id), 1),
                (proto.for_id(topics.command, self.printer_id), 1),
            ],
            on_message=self.on_message,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.run)
            task_status.started()
            topic = proto.for_id(topics.printer_progress, self.printer_id)
            while True:
                self.link.publish(topic, self._report())
                deadline = trio.current_time() + opts.report_interval
                if self.job is not None and self._since is not None:
                    # Report the very moment the print ends.
                    end = self._since + (100.0 - self._base) / self._rate
                    deadline = min(deadline, end + 0.001)
                self._wake = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wake.wait()


class SimRobot:
    """One plate-clearing robot. ``cleared`` lists the printers it cleared, in order."""

    def __init__(self, robot_id: str, serves: set[str], fleet: MqttFleet) -> None:
        self.robot_id = robot_id
        self.serves = serves
        self.fleet = fleet
        self.cleared: list[str] = []
        self._busy: set[str] = set()
        #: The job whose plate was last cleared, per printer.
        self._last_job: dict[str, str] = {}
        self._send, self._recv = trio.open_memory_channel[tuple[str, bool]](math.inf)
        self.link: MqttLink | None = None

    def on_message(self, msg: Message) -> None:
        try:
            printer_id, job_id = proto.parse_announcement(msg.payload)
        except proto.ProtocolError as exc:
            log.warning("sim robot ignored a message", extra={"reason": str(exc)})
            return
        if printer_id not in self.serves or printer_id in self._busy:
            return
        # A repeat for a plate already cleared (our "completed" may have been lost):
        # confirm again, without touching the printer.
        repeat = job_id is not None and self._last_job.get(printer_id) == job_id
        self._busy.add(printer_id)
        if job_id is not None:
            self._last_job[printer_id] = job_id
        self._send.send_nowait((printer_id, repeat))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        topics = self.fleet.topics
        self.link = MqttLink(
            self.fleet.settings(f"sim-robot-{self.robot_id}"),
            subscriptions=[(topics.printers, 1)],
            on_message=self.on_message,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.run)
            task_status.started()
            topic = proto.for_id(topics.robot_progress, self.robot_id)
            async for printer_id, repeat in self._recv:
                if not repeat:
                    self.link.publish(
                        topic,
                        proto.build_robot_progress(
                            self.robot_id, printer_id, "pick", "started", time.time()
                        ),
                    )
                    await trio.sleep(self.fleet.options.clean_time)
                    self.fleet.printers[printer_id].plate_cleared()
                    self.cleared.append(printer_id)
                self._busy.discard(printer_id)
                self.link.publish(
                    topic,
                    proto.build_robot_progress(
                        self.robot_id, printer_id, "pick", "completed", time.time()
                    ),
                )


class MqttFleet:
    """Printers and robots sharing one broker. See the module docstring."""

    def __init__(
        self, host: str, port: int, options: FleetOptions, topics: MqttTopics | None = None
    ) -> None:
        self.host, self.port = host, port
        self.options = options
        self.topics = topics or MqttTopics()
        ids = [f"{options.prefix}{n}" for n in range(1, options.printers + 1)]
        self.printers = {pid: SimPrinter(pid, self) for pid in ids}
        robots = max(options.robots, 1)
        self.robots = [
            SimRobot(f"rob-{r}", {pid for i, pid in enumerate(ids) if i % robots == r}, self)
            for r in range(robots)
        ]

    def settings(self, client_id: str) -> MqttSettings:
        o = self.options
        return MqttSettings(
            host=self.host,
            port=self.port,
            client_id=client_id,
            keepalive=o.keepalive,
            backoff_initial=o.backoff_initial,
            backoff_max=o.backoff_max,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for robot in self.robots:
                await nursery.start(robot.run)
            for printer in self.printers.values():
                await nursery.start(printer.run)
            task_status.started()


@asynccontextmanager
async def open_mqtt_fleet(
    host: str, port: int, options: FleetOptions | None = None, topics: MqttTopics | None = None
) -> AsyncIterator[MqttFleet]:
    """Run a fleet for the duration of the block (cancelled on exit)."""
    fleet = MqttFleet(host, port, options or FleetOptions(), topics)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        yield fleet
        nursery.cancel_scope.cancel()
