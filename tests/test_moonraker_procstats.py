"""Process statistics (issue 14): the pure ``/proc`` parsers on recorded files
(``tests/data/proc/``, from a Debian 12 host), the sampler's deltas, and
``machine.proc_stats`` / ``notify_proc_stat_update`` / ``system_stats`` against the
live daemon."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

from printfarmd.api.moonraker import procstats as ps
from tests.conftest import LiveFarm
from tests.moonraker_client import open_rpc

DATA = Path(__file__).parent / "data" / "proc"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_cpu_times_and_usage() -> None:
    before = ps.parse_cpu_times(text("stat.1"))
    after = ps.parse_cpu_times(text("stat.2"))
    assert set(before) == {"cpu", "cpu0", "cpu1"}  # "intr", "ctxt" lines are not CPUs
    # cpu: 135054+287+16191+247154+1074+0+587+609 = 400956 jiffies, idle+iowait 248228
    assert before["cpu"] == (400956, 248228)
    usage = ps.cpu_usage(before, after)
    # +201 jiffies, of which +3 idle: 98.51 % busy
    assert usage["cpu"] == pytest.approx(100 * (201 - 3) / 201, abs=0.01)
    assert set(usage) == {"cpu", "cpu0", "cpu1"}
    assert ps.cpu_usage(after, after) == {}  # no tick, no figure
    assert ps.parse_cpu_times("cpu x y\nnonsense") == {}


def test_memory_network_load_rss_uptime() -> None:
    assert ps.parse_meminfo(text("meminfo")) == {
        "total": 24683568,
        "available": 23920984,
        "used": 24683568 - 23920984,
    }
    assert ps.parse_meminfo("MemTotal: 1 kB") == {}
    net = ps.parse_net_dev(text("net_dev"))
    assert "lo" in net and net["lo"]["rx_bytes"] == 86044666 and net["lo"]["tx_packets"] == 232257
    assert all(set(v) == {k for k, _ in ps._NET_FIELDS} for v in net.values())
    later = {"lo": {**net["lo"], "rx_bytes": net["lo"]["rx_bytes"] + 1000}}
    assert ps.with_bandwidth(net, later, 2.0)["lo"]["bandwidth"] == 500.0
    assert ps.with_bandwidth({}, later, 2.0)["lo"]["bandwidth"] == 0.0
    assert ps.parse_loadavg(text("loadavg")) == [4.0, 1.83, 1.03]
    assert ps.parse_loadavg("x") == []
    assert ps.parse_rss(text("smaps_rollup")) == (1672, "kB")
    assert ps.parse_uptime(text("uptime")) == 2016.75
    assert ps.parse_temperature("48312\n") == 48.31
    assert ps.parse_temperature("n/a") is None


async def test_sampler_shares_a_sample_and_computes_deltas(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "net").mkdir()
    for name, target in [
        ("meminfo", "meminfo"),
        ("loadavg", "loadavg"),
        ("uptime", "uptime"),
        ("net_dev", "net/dev"),
        ("smaps_rollup", "self/smaps_rollup"),
        ("stat.1", "stat"),
    ]:
        shutil.copy(DATA / name, proc / target)
    thermal = tmp_path / "temp"
    thermal.write_text("51000\n")
    cpu = iter([1.0, 1.5] + [2.0] * 40)
    sampler = ps.ProcStats(proc=proc, thermal=thermal, process_time=lambda: next(cpu))
    await sampler.sample()
    await sampler.sample()  # within MIN_SAMPLE_GAP: the same sample
    assert len(sampler.response(0, 0.0)["moonraker_stats"]) == 1
    shutil.copy(DATA / "stat.2", proc / "stat")
    await trio.sleep(ps.MIN_SAMPLE_GAP + 0.01)  # mock time: the next call samples again
    await sampler.sample()
    body = sampler.response(3, 0.0)
    assert len(body["moonraker_stats"]) == 2
    newest = body["moonraker_stats"][-1]
    assert newest["memory"] == 1672 and newest["mem_units"] == "kB"
    assert newest["cpu_usage"] > 0  # 0.5 s of CPU over the time between the samples
    assert body["system_cpu_usage"]["cpu"] == pytest.approx(98.51, abs=0.01)
    assert body["cpu_temp"] == 51.0 and body["system_uptime"] == 2016.75
    assert body["system_load"] == [4.0, 1.83, 1.03] and body["websocket_connections"] == 3
    note = sampler.notification(3)
    assert note["moonraker_stats"] == newest
    assert sampler.system_stats()["sysload"] == 4.0
    assert sampler.system_stats()["memavail"] == 23920984


async def test_stats_are_pushed_every_second_to_identified_clients(farm: LiveFarm) -> None:
    async with open_rpc(farm.url) as rpc:
        first = await rpc.call("machine.proc_stats")
        assert first["moonraker_stats"][-1]["memory"] > 0
        assert first["system_memory"]["total"] > 0 and len(first["system_load"]) == 3
        assert isinstance(first["network"], dict) and first["throttled_state"] is None
        await rpc.call("server.connection.identify", {"client_name": "mainsail"})
        objects = (await rpc.call("printer.objects.list"))["objects"]
        assert "system_stats" in objects
        await rpc.call("printer.objects.subscribe", {"objects": {"system_stats": None}})
        notes = [await rpc.wait_notification("notify_proc_stat_update", within=10) for _ in "ab"]
        times = [n["params"][0]["moonraker_stats"]["time"] for n in notes]
        assert times[1] > times[0]  # a new sample each time
        assert notes[1]["params"][0]["websocket_connections"] >= 1
        status = await rpc.wait_notification("notify_status_update", within=10)
        (objects_, eventtime) = status["params"]
        assert set(objects_) == {"system_stats"} and eventtime > 0
        assert set(objects_["system_stats"]) == {"sysload", "cputime", "memavail"}
        # HTTP: Moonraker's wrapper
        r = await farm.client.get("/machine/proc_stats")
        assert r.status_code == 200 and "moonraker_stats" in r.json()["result"]
