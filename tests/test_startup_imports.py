"""Issue 17: ``printfarmd serve`` imports nothing the first request does not need.

The heavy libraries (httpx and, through it, rich; Pillow; paho-mqtt; sqlite-utils;
cattrs; tomli-w) are imported only when a command, a webhook, Spoolman, a photo, an MQTT broker, a
table listing, or a config that is wrong or being written needs them. A fresh interpreter
imports what ``serve`` imports (the CLI, the daemon, the app with every blueprint) and
reports which of them got in; another runs the real command line until ``serve`` finds
its port taken."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, make_config, sim_printer, write_config

#: Loaded lazily: none of these may be imported by the start-up path.
LAZY = (
    "httpx",
    "rich",
    "PIL",
    "paho",
    "sqlite_utils",
    "multipart",
    "python_multipart",
    "cattrs",
    "tomli_w",
)

PROBE = f"""
import json, sys
import printfarmd.cli
import printfarmd.daemon
import printfarmd.api.app
print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))
"""


COMPILED = """
import json
import printfarmd.cli, printfarmd.daemon, printfarmd.api.app
from printfarmd.core import gcode_meta
print(json.dumps(gcode_meta._re.cache_info().currsize))
"""


def test_the_g_code_parser_compiles_its_patterns_on_its_first_parse() -> None:
    # Nothing reads a G-code file before the first answer (the cache warms after READY).
    out = subprocess.run(
        [sys.executable, "-c", COMPILED], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == 0


def test_the_start_up_path_imports_none_of_the_lazy_libraries() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


#: The real command line (``printfarmd.__main__.main``, the console script) run until
#: ``serve`` has loaded the server stack and found its port taken (exit 2).
COMMAND_LINE = f"""
import json, sys
sys.argv = ["printfarmd", "serve", "--config", sys.argv[1]]
from printfarmd.__main__ import main
code = main()
print(json.dumps({{"code": code, "lazy": sorted(m for m in {LAZY!r} if m in sys.modules)}}))
"""


def test_the_command_line_serving_imports_none_of_the_lazy_libraries(tmp_path: Path) -> None:
    # The command line makes the console every command prints through before it knows
    # the command; serve never prints through it, so rich must not come in with it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(tmp_path, (sim_printer("p1"),), port=taken.getsockname()[1])
        path = write_config(config, tmp_path / "farm.toml")
        out = subprocess.run(
            [sys.executable, "-c", COMMAND_LINE, str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"code": 2, "lazy": []}
