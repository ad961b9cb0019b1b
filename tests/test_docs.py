"""Every REST endpoint is documented in docs/api.md (the OpenAPI test covers the rest)."""

from __future__ import annotations

from printfarmd.api.openapi import PATHS
from tests.conftest import REPO


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
