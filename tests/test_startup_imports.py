"""Issue 17: ``printfarmd serve`` imports nothing the first request does not need.

The heavy libraries (httpx and, through it, rich; Pillow; paho-mqtt; sqlite-utils) are
imported only when a command, a webhook, Spoolman, a photo, an MQTT broker or a table
listing needs them. A fresh interpreter imports what ``serve`` imports (the CLI, the
daemon, the app with every blueprint) and reports which of them got in."""

from __future__ import annotations

import json
import subprocess
import sys

#: Loaded lazily: none of these may be imported by the start-up path.
LAZY = ("httpx", "rich", "PIL", "paho", "sqlite_utils", "multipart", "python_multipart")

PROBE = f"""
import json, sys
import printfarmd.cli
import printfarmd.daemon
import printfarmd.api.app
print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))
"""


def test_the_start_up_path_imports_none_of_the_lazy_libraries() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
