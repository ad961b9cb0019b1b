"""The paho-on-trio link against a real mosquitto: round trip, a half-open link caught
by the keepalive, and the ``simulate mqtt`` command and ``[mqtt]`` config rules."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from printfarmd.config import config_from_dict
from printfarmd.errors import ConfigError
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings
from tests.conftest import free_port
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture


class Relay:
    """A TCP relay to the broker that can freeze: bytes stop flowing both ways while the
    sockets stay open, as on a link whose far end vanished without a FIN."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.frozen = False

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        async for chunk in src:
            if self.frozen:
                await trio.sleep_forever()
            await dst.send_all(chunk)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.frozen:
            await client.aclose()
            return
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, upstream)
            nursery.start_soon(self._pipe, upstream, client)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)


async def test_round_trip_and_half_open_link(mosquitto: Broker) -> None:  # noqa: F811
    got: list[Message] = []
    relay = Relay(mosquitto.port)
    settings = MqttSettings(
        port=relay.port, client_id="half-open", keepalive=1, backoff_initial=0.1, backoff_max=0.2
    )
    link = MqttLink(settings, subscriptions=[("t/#", 1)], on_message=got.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        await nursery.start(link.run)
        with trio.fail_after(5):
            while not link.connected:  # noqa: ASYNC110 - polling with a deadline
                await trio.sleep(0.01)
            link.publish("t/a", b"one")
            while not got:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert got[0] == Message("t/a", b"one")
        relay.frozen = True
        with trio.fail_after(5):
            while link.connected:  # noqa: ASYNC110
                await trio.sleep(0.01)
        # Noticed by the keepalive (the 5 s deadline above is well short of a TCP
        # timeout); how soon exactly is the keepalive's business, not asserted here.
        link.publish("t/b", b"queued while down")
        relay.frozen = False
        with trio.fail_after(10):
            while len(got) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert got[1] == Message("t/b", b"queued while down")
        assert link.connects >= 2
        nursery.cancel_scope.cancel()


def test_simulate_mqtt_command_speaks_the_seed_topics(mosquitto: Broker) -> None:  # noqa: F811
    async def listen() -> set[str]:
        seen: set[str] = set()
        link = MqttLink(
            MqttSettings(port=mosquitto.port),
            subscriptions=[("device/printer/+/progress", 1)],
            on_message=lambda m: seen.add(m.topic),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            command = [sys.executable, "-m", "printfarmd", "simulate", "mqtt", "--printers", "2"]
            command += ["--broker", f"127.0.0.1:{mosquitto.port}"]
            run = functools.partial(
                trio.run_process,
                command,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            proc = await nursery.start(run)
            with trio.fail_after(20):
                while len(seen) < 2:  # noqa: ASYNC110 - polling with a deadline
                    await trio.sleep(0.05)
            proc.kill()
            nursery.cancel_scope.cancel()
        return seen

    seen = trio.run(listen)
    assert seen == {"device/printer/mqtt-1/progress", "device/printer/mqtt-2/progress"}


def test_simulate_mqtt_rejects_a_bad_broker() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "printfarmd", "simulate", "mqtt", "--broker", "nohost"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"printers": [{"id": "m1", "driver": "mqtt"}]}, "set mqtt.host"),
        ({"mqtt": {"host": "b", "keepalive": 0}}, "mqtt.keepalive: must be > 0"),
        ({"mqtt": {"host": "b", "topics": {"assignment": "a/b"}}}, "mqtt.topics.assignment"),
        ({"mqtt": {"host": "b", "topics": {"printers": "a/+"}}}, "mqtt.topics.printers"),
        ({"mqtt": {"port": 0}}, "mqtt.port"),
    ],
)
def test_mqtt_config_rules(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        config_from_dict(data, base_dir=Path("."))


def test_mqtt_printer_config_is_accepted() -> None:
    config = config_from_dict(
        {"mqtt": {"host": "broker"}, "printers": [{"id": "m1", "driver": "mqtt"}]}
    )
    assert config.mqtt.topics.assignment == "device/printer/{id}/assignement"
    assert config.printers[0].driver == "mqtt"
