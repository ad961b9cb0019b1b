"""Escalation's MQTT channel against a real mosquitto: a job that fails for good is
published on ``notify.mqtt_topic`` (QoS 1, counted delivered only after the broker's
PUBACK), next to the farm's MQTT printers' own traffic."""

from __future__ import annotations

import msgspec
import orjson
import trio

from printfarmd.config import MqttConfig, NotifyConfig
from printfarmd.mqtt_trio import Message, MqttLink, MqttSettings
from tests.conftest import live_farm, make_config, sim_printer
from tests.mosquitto import Broker, mosquitto  # noqa: F401 - the fixture


async def test_a_job_failed_for_good_is_published_on_the_event_topic(
    tmp_path: object,
    mosquitto: Broker,  # noqa: F811
) -> None:
    got: list[Message] = []
    watcher = MqttLink(
        MqttSettings(port=mosquitto.port, client_id="ops-watcher", backoff_initial=0.1),
        subscriptions=[("farm/events", 1)],
        on_message=got.append,
    )
    config = make_config(
        tmp_path,  # type: ignore[arg-type]
        (sim_printer("p1", failure_rate=1.0, auto_clear=True),),
        max_retries=1,
        retry_backoff=(0.1,),
    )
    config = msgspec.structs.replace(
        config,
        mqtt=MqttConfig(host="127.0.0.1", port=mosquitto.port, backoff_initial=0.1),
        notify=NotifyConfig(mqtt_topic="farm/events", retry_backoff=(0.1,), max_attempts=3),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        with trio.fail_after(5):
            while not watcher.connected:  # noqa: ASYNC110 - polling with a deadline
                await trio.sleep(0.01)
        async with live_farm(config) as farm:
            r = await farm.client.post("/api/jobs", json={"filename": "keychain_any.gcode"})
            job_id = r.json()["jobs"][0]["id"]

            async def delivered() -> bool:
                body = (await farm.client.get("/api/notifications")).json()
                return any(
                    n["channel"] == "mqtt" and n["status"] == "delivered"
                    for n in body["notifications"]
                )

            await farm.wait_for(delivered, within=30)
            with trio.fail_after(5):
                while not got:  # noqa: ASYNC110
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [m.topic for m in got] == ["farm/events"]
    body = orjson.loads(got[0].payload)
    assert body["event"] == "job.failed"
    assert body["job"]["id"] == job_id and body["job"]["state"] == "failed"
    assert body["job"]["last_error"].startswith("max retries reached")
