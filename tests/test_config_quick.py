"""Issue 17: the config's quick reader against cattrs, the authority.

``config_from_dict`` reads a config without cattrs (``printfarmd/config.py``'s quick
reader) and hands anything it is not sure of to the cattrs converter
(``printfarmd/config_cattrs.py``), which decides and words the errors. The oracle here is
cattrs itself: on every config tried, valid or broken at random, whatever the quick reader
accepts cattrs must accept too, giving an equal ``Config``. The quick reader must also
read every valid config here by itself, or start-up gained nothing.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from printfarmd import config as cfg
from printfarmd import config_cattrs
from printfarmd.config import (
    BambuOptions,
    Config,
    MoonrakerOptions,
    OctoPrintOptions,
    PrinterConfig,
    dump_config,
    starter_config,
)
from printfarmd.errors import ConfigError
from tests.conftest import REPO, sim_printer


def _every_section() -> dict[str, Any]:
    """Every settable key, a printer of each driver among them (each with its tables)."""
    printers = (
        sim_printer("sim-1", materials=("PLA", "PETG")),
        PrinterConfig(
            id="k1", driver="moonraker", moonraker=MoonrakerOptions(url="http://k1.local")
        ),
        PrinterConfig(
            id="o1",
            driver="octoprint",
            octoprint=OctoPrintOptions(url="http://o1.local", api_key="k" * 32),
        ),
        PrinterConfig(
            id="b1",
            driver="bambu",
            bed_size=(256.0, 256.0, 256.0),
            bambu=BambuOptions(host="10.0.0.9", serial="01S00A000000001", access_code="12345678"),
        ),
    )
    return tomllib.loads(dump_config(Config(printers=printers)))


CORPUS = {
    "config.example.toml": tomllib.loads((REPO / "config.example.toml").read_text()),
    "starter": starter_config("sha256:" + "0" * 64),
    "every section": _every_section(),
    "empty": {},
}


def _quick(data: dict[str, Any]) -> Config | None:
    """What the quick reader makes of ``data``; None where it hands over to cattrs."""
    try:
        return cfg._quick_class(copy.deepcopy(data), Config)  # type: ignore[no-any-return]
    except Exception:
        return None


def _cattrs(data: dict[str, Any]) -> Config | ConfigError:
    try:
        return config_cattrs.structure(copy.deepcopy(data))
    except ConfigError as exc:
        return exc


@pytest.mark.parametrize("name", CORPUS)
def test_the_quick_reader_reads_every_valid_config_as_cattrs_does(name: str) -> None:
    data = CORPUS[name]
    quick = _quick(data)
    assert quick is not None, "the quick reader handed a valid config to cattrs"
    assert quick == _cattrs(data)
    # Through the public door, too: same config, same normalisation and checks.
    via_quick = cfg.config_from_dict(data, base_dir=Path("/farm"))
    assert via_quick == cfg._with_state_dirs(
        msgspec.structs.replace(cfg._normalize(_cattrs(data)), base_dir=Path("/farm"))  # type: ignore[arg-type]
    )


#: Values of every TOML type, to put where another type belongs.
VALUES = st.one_of(
    st.integers(-3, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=6),
    st.sampled_from(["PLA", "full", "FULL", "json", "sqlite", "#ff6600", "debug", "x.gcode"]),
    st.lists(st.one_of(st.integers(0, 300), st.floats(0, 300), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _mutate(data: dict[str, Any], draw: st.DrawFn) -> dict[str, Any]:
    """``data`` with one change somewhere in its tree: a value replaced, a key removed,
    an unknown (often misspelt) key added, a table or array swapped for a scalar."""
    data = copy.deepcopy(data)
    node: Any = data
    while True:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        inner = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
        if not inner or draw(st.booleans()):
            break
        _, node = draw(st.sampled_from(inner))
    if isinstance(node, list):
        index = draw(st.integers(0, len(node)))
        if index == len(node) or draw(st.booleans()):
            node.insert(index, draw(VALUES))
        else:
            node[index] = draw(VALUES)
        return data
    keys = sorted(node)
    action = draw(st.sampled_from(["replace", "remove", "add"] if keys else ["add"]))
    if action == "replace":
        node[draw(st.sampled_from(keys))] = draw(VALUES)
    elif action == "remove":
        del node[draw(st.sampled_from(keys))]
    else:
        near = [k[:-1] + "x" for k in keys] + [k.upper() for k in keys] + ["base_dir", "zz"]
        node[draw(st.sampled_from(near))] = draw(VALUES)
    return data


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CORPUS)), st.data())
def test_whatever_the_quick_reader_accepts_cattrs_accepts_the_same(
    name: str, data: st.DataObject
) -> None:
    broken = _mutate(CORPUS[name], data.draw)
    quick = _quick(broken)
    if quick is not None:
        assert _cattrs(broken) == quick


def test_a_wrong_config_is_still_reported_key_by_key() -> None:
    # The quick reader hands over at the first doubt; cattrs words every problem.
    data = copy.deepcopy(CORPUS["config.example.toml"])
    data["server"]["port"] = "7125"
    data["server"]["prot"] = 1
    data["printers"][1]["nozzle_diameter"] = True
    with pytest.raises(ConfigError) as caught:
        cfg.config_from_dict(data)
    lines = caught.value.message.splitlines()
    assert "server.port: expected an integer, got a string" in lines
    assert any(line.startswith("server.prot: unknown key (did you mean 'port'") for line in lines)
    assert "printers[1].nozzle_diameter: expected a number, got a boolean" in lines
