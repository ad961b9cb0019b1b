"""Benchmark: what issue 9's checks cost per request.

Usage: ``.venv/bin/python bench/bench_security.py [--repeat 5] [--json]``

Three measurements, each against a baseline measured in the same run (ratios are
baseline time / checked time, so 1.0 means free and 0.25 means four times slower):

- JSON: ``api.jsonin.decode`` (orjson plus depth, number and duplicate-key limits)
  against bare ``orjson.loads``, on a job-creation body, 64 KiB and 1 MiB of small
  objects, and 1 MiB in one long string;
- access: ``Access.decide`` for a request with the right key (SHA-256 of what was
  presented, ``compare_digest``), with a wrong key, and from a trusted address, in µs,
  against ``orjson.loads`` of the job-creation body as a yardstick of per-request work;
- middleware: one ASGI request through the front (``api/front.py``: connection limit,
  Host check, the access decision with the right key on a kept-alive connection, headers
  hardened, last body shielded) against the same trivial app called bare, under trio.

- the REST contract: a job body through ``contract.parse(JobCreate)`` against the
  field-by-field helpers the handlers called before issue 17, and ``orjson.loads``.

Best of ``--repeat`` timings of a fixed number of loops each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

from printfarmd.api import contract, jsonin
from printfarmd.api.auth import Access, hash_key
from printfarmd.api.front import Front
from printfarmd.api.shapes import JobCreate
from printfarmd.config import Config, ServerConfig

KEY = "k" * 43


def best_of(fn: Callable[[], object], loops: int, repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``loops`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def json_bodies() -> dict[str, bytes]:
    job = orjson.dumps(
        {"filename": "benchy_pla.gcode", "priority": 5, "copies": 2, "material": "PLA"}
    )
    small = [{"id": i, "name": f"part-{i}", "ok": True, "w": 1.5} for i in range(22000)]
    return {
        "job creation (~80 B)": job,
        "64 KiB of small objects": orjson.dumps(small[:1350]),
        "1 MiB of small objects": orjson.dumps(small),
        "1 MiB long string": orjson.dumps({"notes": "x" * (1 << 20)}),
    }


def bench_json(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name, body in json_bodies().items():
        jsonin.decode(body)  # valid within the limits
        loops = max(3, int(2_000_000 / max(len(body), 100)))
        base = best_of(lambda b=body: orjson.loads(b), loops, repeat)
        ours = best_of(lambda b=body: jsonin.decode(b), loops, repeat)
        rows.append(
            {
                "body": name,
                "bytes": len(body),
                "orjson_us": base * 1e6,
                "decode_us": ours * 1e6,
                "ratio": base / ours,
            }
        )
    return rows


def bench_access(repeat: int) -> list[dict[str, Any]]:
    access = Access(ServerConfig(api_key_hash=hash_key(KEY), trusted_clients=("192.168.1.0/24",)))
    job = json_bodies()["job creation (~80 B)"]
    yardstick = best_of(lambda: orjson.loads(job), 20000, repeat)
    cases: dict[str, Callable[[], object]] = {
        "right key": lambda: access.decide(
            peer="10.0.0.5", host="farm.local", api_key=KEY, forwarded_for=None, oneshot=None
        ),
        "trusted address": lambda: access.decide(
            peer="192.168.1.7", host="farm.local", api_key=None, forwarded_for=None, oneshot=None
        ),
    }
    rows = []
    for name, fn in cases.items():
        t = best_of(fn, 20000, repeat)
        rows.append({"case": name, "us": t * 1e6, "ratio_vs_parsing_a_job_body": yardstick / t})
    # A wrong key also counts towards the back-off; loopback is never counted, so this
    # measures the comparison without filling the throttle.
    t = best_of(
        lambda: access.decide(
            peer="127.0.0.1", host="localhost", api_key="w" * 43, forwarded_for=None, oneshot=None
        ),
        20000,
        repeat,
    )
    rows.append({"case": "wrong key", "us": t * 1e6, "ratio_vs_parsing_a_job_body": yardstick / t})
    return rows


async def _trivial_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _asgi_loop(app: Any, loops: int) -> float:
    headers = [(b"host", b"farm.local:7125"), (b"x-api-key", KEY.encode())]
    client = ("10.0.0.5", 50123)
    scope = {"type": "http", "method": "GET", "path": "/api/jobs", "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    start = time.perf_counter()
    for _ in range(loops):
        await app({**scope, "client": client}, receive, send)
    return (time.perf_counter() - start) / loops


class _Services:
    """What the front reads of the daemon's services."""

    def __init__(self) -> None:
        self.config = Config(server=ServerConfig(api_key_hash=hash_key(KEY)))
        self.access = Access(self.config.server)
        self.stopping = trio.Event()


def _by_hand(body: dict[str, Any]) -> None:
    """The old per-handler parsing of a job body: one helper call per field."""
    from printfarmd.api import validate as v

    v.only_fields(body, [f.name for f in contract.fields_of(JobCreate)])
    v.opt_str(body, "filename", 65536, required=True)
    v.opt_str(body, "name", 200)
    v.opt_int(body, "priority", -100, 100)
    v.opt_int(body, "copies", 1, 100)
    v.opt_str(body, "material", 32)
    v.opt_num(body, "nozzle_diameter", 0.05, 5.0)
    v.str_list(body, "required_tags", 20, 64)
    v.num_list(body, "min_bed", 3, 0.0, 10_000.0)
    v.opt_str(body, "sku", 100)
    v.opt_num(body, "estimated_time", 0.0, 30 * 86400.0)


def bench_contract(repeat: int) -> dict[str, Any]:
    """A job body through the contract (``contract.parse(JobCreate)``) against the
    field-by-field helpers the handlers used before, and orjson's parse of it."""
    raw = json_bodies()["job creation (~80 B)"]
    body = orjson.loads(raw)
    loops = 20000
    parse = best_of(lambda: orjson.loads(raw), loops, repeat)
    contract_t = best_of(lambda: contract.parse(JobCreate, body), loops, repeat)
    by_hand = best_of(lambda: _by_hand(body), loops, repeat)
    return {"orjson_us": parse * 1e6, "contract_us": contract_t * 1e6, "by_hand_us": by_hand * 1e6}


def bench_middleware(repeat: int) -> dict[str, Any]:
    wrapped = Front(_trivial_app, _Services(), lambda: None)  # type: ignore[arg-type]
    loops = 20000
    base = min(trio.run(_asgi_loop, _trivial_app, loops) for _ in range(repeat))
    ours = min(trio.run(_asgi_loop, wrapped, loops) for _ in range(repeat))
    return {"bare_us": base * 1e6, "wrapped_us": ours * 1e6, "added_us": (ours - base) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {
        "json": bench_json(args.repeat),
        "access": bench_access(args.repeat),
        "middleware": bench_middleware(args.repeat),
        "contract": bench_contract(args.repeat),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("JSON decoding: jsonin.decode vs orjson.loads")
    for row in result["json"]:
        print(
            f"  {row['body']:<26} {row['bytes']:>9} B  orjson {row['orjson_us']:>9.1f} µs"
            f"  decode {row['decode_us']:>9.1f} µs  ratio {row['ratio']:.2f}"
        )
    print("Access.decide (µs per request; ratio = parsing a job body / decide)")
    for row in result["access"]:
        ratio = row["ratio_vs_parsing_a_job_body"]
        print(f"  {row['case']:<16} {row['us']:6.2f} µs  ratio {ratio:.2f}")
    mw = result["middleware"]
    print(
        f"ASGI front: bare {mw['bare_us']:.2f} µs, through the front {mw['wrapped_us']:.2f} µs,"
        f" added {mw['added_us']:.2f} µs per request"
    )
    ct = result["contract"]
    print(
        f"a job body: contract.parse {ct['contract_us']:.2f} µs, the old field-by-field"
        f" helpers {ct['by_hand_us']:.2f} µs, orjson.loads {ct['orjson_us']:.2f} µs"
    )


if __name__ == "__main__":
    main()
