"""Real Moonraker beside printfarmd (``bench_moonraker.py --moonraker DIR``): a bonus figure.

Nothing of Moonraker is in this repository. Prepare ``DIR`` once (a checkout of
github.com/Arksine/moonraker, v0.10, and a venv with its requirements)::

    git clone https://github.com/Arksine/moonraker DIR/src
    python3 -m venv DIR/venv
    DIR/venv/bin/pip install -r DIR/src/scripts/moonraker-requirements.txt

``start`` runs ``DIR/venv/bin/python DIR/src/moonraker/moonraker.py -d DATA -n`` on a free
loopback port with a data folder of its own (the demo G-code files in its gcodes root; no
Klipper, so ``klippy_state`` is ``disconnected``, which ``server.job_queue.*`` does not
need), loopback as a trusted client (no key per request), the job queue not loading on
start, and the remote announcement feeds off (nothing leaves the machine).
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from pathlib import Path

from common import DEMO_GCODES, free_port

CONFIG = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {data}/klippy-absent.sock

[authorization]
trusted_clients:
    127.0.0.0/8

[file_manager]
enable_object_processing: False

[job_queue]
load_on_startup: False
automatic_transition: False

[announcements]
enable_moonlight: False
dev_mode: True
"""


def start(folder: Path, where: Path, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start Moonraker from ``where``; returns the process and its port once it answers."""
    port = free_port()
    data = folder / "moonraker-data"
    for sub in ("config", "gcodes", "logs", "database"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for f in DEMO_GCODES.glob("*.gcode"):
        shutil.copy(f, data / "gcodes" / f.name)
    (data / "config" / "moonraker.conf").write_text(CONFIG.format(port=port, data=data))
    log = open(folder / "moonraker.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [str(where / "venv" / "bin" / "python"), str(where / "src" / "moonraker" / "moonraker.py"),
         "-d", str(data), "-n"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Moonraker exited with {proc.returncode}: see moonraker.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/server/info")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("Moonraker did not answer /server/info")
