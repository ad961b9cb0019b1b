"""Metadata extraction for a large G-code file against reading the whole file.

``files.read_meta`` reads the first and last MiB and parses them; the baseline reads
every byte of the same file (what a parser that scanned the whole file would at
least have to do). Both run on the same file in the same run, with the page cache
warm (a first untimed pass of each). Run from the repository root:

    .venv/bin/python bench/bench_gcode_meta.py            # 50 MB and 5 MB files
    .venv/bin/python bench/bench_gcode_meta.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from printfarmd.core.gcode_meta import parse  # noqa: E402 - needs sys.path
from printfarmd.services.files import read_meta  # noqa: E402 - needs sys.path
from tests import gcode_samples  # noqa: E402 - needs sys.path


def make_file(path: Path, size: int) -> None:
    """A PrusaSlicer-style file padded with moves to ``size`` bytes."""
    sample = gcode_samples.prusaslicer()
    split = sample.index(b"; filament used [mm]")
    moves = b"".join(
        b"G1 X%d.%03d Y%d.5 E0.0421\n" % (i % 200, i % 997, i % 180) for i in range(4000)
    )
    with open(path, "wb") as fh:
        fh.write(sample[:split])
        written = split
        tail = sample[split:]
        while written + len(moves) + len(tail) < size:
            fh.write(moves)
            written += len(moves)
        fh.write(tail)


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += len(chunk)
    return n


def parse_all(path: Path) -> object:
    """The naive extractor: read every byte, parse all of it."""
    return parse(path.read_bytes())


def timeit(fn: object, arg: Path, repeat: int) -> float:
    assert callable(fn)
    fn(arg)  # warm the page cache
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(arg)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,50", help="file sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"big-{mb}.gcode"
            make_file(path, mb * 1_000_000)
            meta = read_meta(path)
            if meta.filament_type != "PETG" or meta.estimated_time != 3723.0:
                print(f"wrong metadata for {mb} MB: {meta}", file=sys.stderr)
                return 1
            ours = timeit(read_meta, path, args.repeat)
            base = timeit(read_all, path, args.repeat)
            naive = timeit(parse_all, path, args.repeat)
            rows.append(
                {
                    "size_mb": mb,
                    "read_meta_ms": ours * 1e3,
                    "read_all_ms": base * 1e3,
                    "parse_all_ms": naive * 1e3,
                }
            )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(
        "| file | read_meta (head+tail MiB, parsed) | read whole file (no parsing) "
        "| read + parse whole file | whole-parse / read_meta |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["parse_all_ms"] / r["read_meta_ms"]
        print(
            f"| {r['size_mb']} MB | {r['read_meta_ms']:.1f} ms | {r['read_all_ms']:.1f} ms "
            f"| {r['parse_all_ms']:.1f} ms | {ratio:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
