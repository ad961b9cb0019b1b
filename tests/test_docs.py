"""Every REST endpoint is documented in docs/api.md (the OpenAPI test covers the rest)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from printfarmd.api.openapi import PATHS
from tests.conftest import REPO, free_port


def test_every_endpoint_has_a_section_in_docs_api() -> None:
    text = (REPO / "docs" / "api.md").read_text()
    missing = [
        f"{method.upper()} {path}"
        for path, ops in PATHS.items()
        for method in ops
        if f"### `{method.upper()} {path}`" not in text
    ]
    assert not missing, f"undocumented endpoints: {missing}"


def test_readme_holds_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    run_cmd = (
        "python3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/printfarmd serve --config config.example.toml"
    )
    assert test_cmd in readme and run_cmd in readme
    assert test_cmd.replace("-e '", "-q -e '") in ci


def test_readme_run_command_starts_a_printing_demo_farm(tmp_path: Path) -> None:
    """The README's first command: the installed console script on config.example.toml
    (only its port and data folder moved, so the test can run anywhere) serves the API and
    the demo farm starts printing at once."""
    text = (REPO / "config.example.toml").read_text()
    port = free_port()
    text = re.sub(r"(?m)^port = 7125$", f"port = {port}", text, count=1)
    text = re.sub(r'(?m)^data_dir = "data"$', f'data_dir = "{tmp_path / "data"}"', text, count=1)
    text = re.sub(
        r'(?m)^gcodes_dir = "demo/gcodes"$', f'gcodes_dir = "{REPO / "demo" / "gcodes"}"', text
    )
    assert str(port) in text and str(tmp_path) in text
    config = tmp_path / "config.example.toml"
    config.write_text(text)
    script = Path(sys.executable).parent / "printfarmd"
    assert script.exists(), "the console script is installed by `pip install -e .`"
    proc = subprocess.Popen(
        [str(script), "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        headers = {"X-Api-Key": "demo-key-change-me"}
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "the demo farm did not start printing"
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/jobs",
                    params={"status": "printing"},
                    headers=headers,
                    timeout=2,
                )
                if r.status_code == 200 and r.json()["total"] > 0:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
