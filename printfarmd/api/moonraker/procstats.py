"""``machine.proc_stats`` and ``notify_proc_stat_update``: the daemon's CPU and memory,
the host's CPU, memory, load and network, read from ``/proc`` (no psutil).

The shapes are Moonraker's (``components/proc_stats.py``): ``moonraker_stats`` (the
last 30 one-second samples of this process: ``time``, ``cpu_usage`` in %, ``memory``
RSS and ``mem_units``), ``system_cpu_usage`` (% per ``cpu`` line of ``/proc/stat``,
since the previous sample), ``system_memory`` (kB ``total``/``available``/``used``),
``network`` (per interface: bytes, packets, errors, drops and ``bandwidth`` in bytes/s),
``cpu_temp`` (°C, or ``None``), ``system_uptime``, ``websocket_connections``. The farm
adds ``system_load`` (the 1, 5 and 15 minute load averages); the UIs read the load from
the virtual printer's ``system_stats`` object, which ``system_stats`` builds.

The parsers are pure (tested with recorded files in ``tests/data/proc/``); ``ProcStats``
reads the files on a worker thread, at most once per ``MIN_SAMPLE_GAP`` however many
websocket clients ask.
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

#: Moonraker sends ``notify_proc_stat_update`` every second.
INTERVAL = 1.0
#: Samples kept for ``moonraker_stats`` (Moonraker keeps 30).
QUEUE_SIZE = 30
#: Clients asking within this many seconds of a sample share it.
MIN_SAMPLE_GAP = 0.5

_NET_FIELDS = (
    ("rx_bytes", 0),
    ("rx_packets", 1),
    ("rx_errs", 2),
    ("rx_drop", 3),
    ("tx_bytes", 8),
    ("tx_packets", 9),
    ("tx_errs", 10),
    ("tx_drop", 11),
)


def parse_cpu_times(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/stat`` -> {``cpu``/``cpuN``: (all jiffies, idle + iowait jiffies)}. Pure."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu") or len(parts) < 5:
            continue
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            continue
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out[parts[0]] = (sum(values), idle)
    return out


def cpu_usage(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]
) -> dict[str, float]:
    """Busy % per CPU between two ``parse_cpu_times`` readings (none for a CPU that did
    not tick or appears in only one). Pure."""
    out: dict[str, float] = {}
    for name, (total, idle) in after.items():
        if name not in before:
            continue
        d_total = total - before[name][0]
        d_idle = idle - before[name][1]
        if d_total > 0:
            out[name] = round(100.0 * max(d_total - d_idle, 0) / d_total, 2)
    return out


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {``total``, ``available``, ``used``} in kB ({} if unknown). Pure."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(MemTotal|MemAvailable):\s+(\d+)", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    if "MemTotal" not in found or "MemAvailable" not in found:
        return {}
    total, available = found["MemTotal"], found["MemAvailable"]
    return {"total": total, "available": available, "used": total - available}


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/dev`` -> per interface counters (Moonraker's names). Pure."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        fields = rest.split()
        if len(fields) < 16:
            continue
        try:
            out[name.strip()] = {key: int(fields[i]) for key, i in _NET_FIELDS}
        except ValueError:
            continue
    return out


def with_bandwidth(
    before: Mapping[str, Mapping[str, int]],
    after: Mapping[str, dict[str, int]],
    seconds: float,
) -> dict[str, dict[str, Any]]:
    """``after`` with ``bandwidth`` (bytes/s in and out since ``before``) per interface."""
    out: dict[str, dict[str, Any]] = {}
    for name, counters in after.items():
        rate = 0.0
        last = before.get(name)
        if last is not None and seconds > 0:
            moved = counters["rx_bytes"] + counters["tx_bytes"]
            moved -= last["rx_bytes"] + last["tx_bytes"]
            rate = round(max(moved, 0) / seconds, 2)
        out[name] = {**counters, "bandwidth": rate}
    return out


def parse_loadavg(text: str) -> list[float]:
    """``/proc/loadavg`` -> [1 min, 5 min, 15 min] ([] if unreadable). Pure."""
    try:
        return [float(v) for v in text.split()[:3]]
    except ValueError:
        return []


def parse_rss(text: str) -> tuple[int, str] | None:
    """The ``Rss:`` line of ``/proc/self/smaps_rollup`` -> (value, unit). Pure."""
    m = re.search(r"^Rss:\s+(\d+)\s+(\w+)", text, re.MULTILINE)
    return (int(m.group(1)), m.group(2)) if m else None


def parse_uptime(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def parse_temperature(text: str) -> float | None:
    """A thermal zone's millidegrees -> °C. Pure."""
    try:
        return round(int(text.strip()) / 1000.0, 2)
    except ValueError:
        return None


class Reading(msgspec.Struct, frozen=True):
    """What one pass over the files found (raw: deltas are computed by ``ProcStats``)."""

    wall: float
    clock: float
    process_time: float
    cpu_times: dict[str, tuple[int, int]]
    memory: dict[str, int]
    network: dict[str, dict[str, int]]
    load: list[float]
    rss: tuple[int, str] | None
    uptime: float | None
    cpu_temp: float | None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def read_files(
    proc: Path, thermal: Path, wall: float, clock: float, process_time: float
) -> Reading:
    """Read every file once. Blocking (a few small in-memory files)."""
    smaps = _read(proc / "self" / "smaps_rollup")
    rss = parse_rss(smaps)
    if rss is None:  # kernels before 4.14 have no smaps_rollup
        statm = _read(proc / "self" / "statm").split()
        if len(statm) > 1 and statm[1].isdigit():
            rss = (int(statm[1]) * os.sysconf("SC_PAGE_SIZE") // 1024, "kB")
    return Reading(
        wall=wall,
        clock=clock,
        process_time=process_time,
        cpu_times=parse_cpu_times(_read(proc / "stat")),
        memory=parse_meminfo(_read(proc / "meminfo")),
        network=parse_net_dev(_read(proc / "net" / "dev")),
        load=parse_loadavg(_read(proc / "loadavg")),
        rss=rss,
        uptime=parse_uptime(_read(proc / "uptime")),
        cpu_temp=parse_temperature(_read(thermal)) if thermal.exists() else None,
    )


class ProcStats(msgspec.Struct):
    """The sampler behind ``machine.proc_stats`` and the once-a-second notification."""

    proc: Path = Path("/proc")
    thermal: Path = Path("/sys/class/thermal/thermal_zone0/temp")
    wall: Callable[[], float] = time.time
    process_time: Callable[[], float] = time.process_time
    _last: Reading | None = None
    _samples: collections.deque[dict[str, Any]] = msgspec.field(
        default_factory=lambda: collections.deque(maxlen=QUEUE_SIZE)
    )
    _cpu: dict[str, float] = msgspec.field(default_factory=dict)
    _network: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    _lock: trio.Lock = msgspec.field(default_factory=trio.Lock)

    async def sample(self) -> None:
        """Take a sample unless one was taken within ``MIN_SAMPLE_GAP``. Checkpoint."""
        async with self._lock:
            now = trio.current_time()
            if self._last is not None and now - self._last.clock < MIN_SAMPLE_GAP:
                await trio.lowlevel.checkpoint()
                return
            reading = await trio.to_thread.run_sync(
                read_files, self.proc, self.thermal, self.wall(), now, self.process_time()
            )
            self._take(reading)

    def _take(self, reading: Reading) -> None:
        last = self._last
        usage = 0.0
        if last is not None:
            elapsed = reading.clock - last.clock
            if elapsed > 0:
                usage = round(100.0 * (reading.process_time - last.process_time) / elapsed, 2)
                self._cpu = cpu_usage(last.cpu_times, reading.cpu_times)
            self._network = with_bandwidth(last.network, reading.network, elapsed)
        else:
            self._network = with_bandwidth({}, reading.network, 0.0)
        memory, units = reading.rss if reading.rss is not None else (None, None)
        self._samples.append(
            {"time": reading.wall, "cpu_usage": usage, "memory": memory, "mem_units": units}
        )
        self._last = reading

    def _common(self, websockets: int) -> dict[str, Any]:
        last = self._last
        return {
            "cpu_temp": last.cpu_temp if last else None,
            "network": self._network,
            "system_cpu_usage": self._cpu,
            "system_memory": last.memory if last else {},
            "system_load": last.load if last else [],
            "websocket_connections": websockets,
        }

    def response(self, websockets: int, started: float) -> dict[str, Any]:
        """``machine.proc_stats``'s answer (``started``: the daemon's start, for uptime
        when ``/proc/uptime`` cannot be read)."""
        last = self._last
        uptime = last.uptime if last and last.uptime is not None else self.wall() - started
        return {
            "moonraker_stats": list(self._samples),
            "throttled_state": None,  # no vcgencmd: nothing is known about throttling
            "system_uptime": uptime,
            **self._common(websockets),
        }

    def notification(self, websockets: int) -> dict[str, Any]:
        """``notify_proc_stat_update``'s one parameter: the newest sample only."""
        newest = self._samples[-1] if self._samples else None
        return {"moonraker_stats": newest, **self._common(websockets)}

    def system_stats(self) -> dict[str, Any]:
        """Klipper's ``system_stats`` object for the virtual printer: ``sysload`` (1 min),
        ``cputime`` (seconds of CPU this process used), ``memavail`` (kB)."""
        last = self._last
        return {
            "sysload": last.load[0] if last and last.load else 0.0,
            "cputime": round(self.process_time(), 3),
            "memavail": last.memory.get("available", 0) if last else 0,
        }
