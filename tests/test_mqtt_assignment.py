"""The MQTT job-handler assignment as the spec has it: ``priority`` and ``parameters``
(``layerHeight``, ``infill``, ``nozzleTemp``, ``bedTemp``) from the job, derived from
the file's slicer comments; checked on the wire through a real mosquitto and in what
the simulated printer received."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import trio

from printfarmd.config import MqttConfig, PrinterConfig
from printfarmd.core.gcode_meta import GcodeMeta
from printfarmd.drivers import mqtt_protocol as proto
from printfarmd.drivers.base import DriverEvent, JobSpec, StatusReport
from printfarmd.drivers.mqtt import MqttHub
from printfarmd.drivers.mqtt_sim import FleetOptions, open_mqtt_fleet
from printfarmd.drivers.params import assignment_parameters
from printfarmd.models import PrinterState
from printfarmd.mqtt_trio import MqttLink, MqttSettings
from printfarmd.services.files import read_meta
from tests import gcode_samples as gs
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture

SEED = Path(__file__).parent / "data" / "mqtt" / "seed_assignment.json"


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await trio.sleep(0.02)


def test_parameters_come_from_the_slicer_comments() -> None:
    meta = GcodeMeta(
        layer_height=0.2, infill=20.0, first_layer_extr_temp=210.0, first_layer_bed_temp=60.0
    )
    assert assignment_parameters(meta) == {
        "layerHeight": 0.2,
        "infill": 20.0,
        "nozzleTemp": 210.0,
        "bedTemp": 60.0,
    }
    # What the file does not say is left out, never guessed.
    assert assignment_parameters(GcodeMeta(layer_height=0.3)) == {"layerHeight": 0.3}
    assert assignment_parameters(GcodeMeta()) == {}
    # Overrides win; a value out of range in the file is dropped.
    odd = GcodeMeta(layer_height=0.2, first_layer_bed_temp=900.0)
    assert assignment_parameters(odd, {"infill": 35}) == {"layerHeight": 0.2, "infill": 35.0}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"speed": 3.0}, "parameters.speed: unknown parameter"),
        ({"infill": 120.0}, "parameters.infill: must be between 0 and 100"),
        ({"nozzleTemp": math.nan}, "parameters.nozzleTemp: must be between"),
        ({"bedTemp": True}, "parameters.bedTemp: expected a number"),
    ],
)
def test_bad_overrides_are_refused_with_the_key(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assignment_parameters(GcodeMeta(), overrides)


def test_assignment_payload_has_the_spec_shape() -> None:
    seed = orjson.loads(SEED.read_bytes())
    spec = JobSpec(
        "ABCDEF0123456789",
        "benchy.gcode",
        "/x/benchy.gcode",
        3600.0,
        "PLA",
        priority=10,
        parameters=seed["parameters"],
    )
    data = orjson.loads(proto.build_assignment(spec, model_url="models/x.gcode", now=0.0))
    assert data["priority"] == 10
    # Byte for byte the spec's example: whole numbers stay integers.
    assert orjson.dumps(data["parameters"]) == orjson.dumps(seed["parameters"])
    assert set(seed) <= set(data)


def test_a_job_spec_keeps_its_own_copy_of_the_parameters() -> None:
    given = {"layerHeight": 0.2}
    spec = JobSpec("ABCDEF0123456789", "benchy.gcode", "/x/benchy.gcode", parameters=given)
    given["infill"] = 15.0  # the caller's dict changes after the hand-over
    assert spec.parameters == {"layerHeight": 0.2}
    # Hashable (a driver may keep specs in a set) and equal to its twin.
    twin = JobSpec(
        "ABCDEF0123456789", "benchy.gcode", "/x/benchy.gcode", parameters=spec.parameters
    )
    assert spec == twin and len({spec, twin}) == 1


async def test_start_job_sends_priority_and_parameters_over_mosquitto(
    tmp_path: Path,
    mosquitto: Broker,  # noqa: F811
) -> None:
    gcode = tmp_path / "part.gcode"
    gcode.write_bytes(gs.prusaslicer())
    params = assignment_parameters(read_meta(gcode))
    assert params == {"layerHeight": 0.15, "infill": 20.0, "nozzleTemp": 240.0, "bedTemp": 85.0}
    config = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id="farm-under-test",
        keepalive=5,
        backoff_initial=0.2,
        backoff_max=1.0,
        resend_interval=0.5,
        start_timeout=15.0,
        model_url="http://farm/{filename}",
    )
    wire: list[bytes] = []
    spy = MqttLink(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="spy"),
        subscriptions=[(proto.topic_filter(config.topics.assignment), 1)],
        on_message=lambda m: wire.append(m.payload),
    )
    hub = MqttHub(config)
    driver = hub.driver_for(PrinterConfig(id="mqtt-1", driver="mqtt"))
    events: list[DriverEvent] = []
    send, receive = trio.open_memory_channel[DriverEvent](1000)

    async def collect() -> None:
        async for event in receive:
            events.append(event)

    options = FleetOptions(printers=1, robots=1, speed=1.0, report_interval=0.2, keepalive=5)
    async with (
        open_mqtt_fleet(mosquitto.host, mosquitto.port, options) as fleet,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(collect)
        await nursery.start(spy.run)
        await nursery.start(hub.run)
        await nursery.start(driver.run, send)
        await wait_until(
            lambda: any(
                isinstance(e, StatusReport) and e.state is PrinterState.IDLE for e in events
            )
        )
        spec = JobSpec(
            "0123456789ABCDEF",
            "part.gcode",
            str(gcode),
            estimated_time=600.0,
            material="PETG",
            priority=7,
            parameters=params,
        )
        with trio.fail_after(20):
            await driver.start_job(spec)
        printer = fleet.printers["mqtt-1"]
        assert printer.started == ["0123456789ABCDEF"]
        got = printer.received[0]
        assert got.priority == 7
        assert got.parameters == {
            "layerHeight": 0.15,
            "infill": 20,
            "nozzleTemp": 240,
            "bedTemp": 85,
        }
        assert got.model_url == "http://farm/part.gcode" and got.filament_type == "PETG"
        await wait_until(lambda: bool(wire))
        raw = orjson.loads(wire[0])
        assert raw["priority"] == 7
        assert orjson.dumps(raw["parameters"]) == (
            b'{"layerHeight":0.15,"infill":20,"nozzleTemp":240,"bedTemp":85}'
        )
        nursery.cancel_scope.cancel()
