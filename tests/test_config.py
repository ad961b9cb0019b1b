"""Config loading: strict types, dotted-key errors, semantic rules, and documentation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from printfarmd.config import (
    Config,
    LogFormat,
    PrinterConfig,
    SchedulerConfig,
    ServerConfig,
    SimulatorOptions,
    StorageBackend,
    StorageConfig,
    Synchronous,
    config_field_paths,
    config_from_dict,
    dump_config,
    load_config,
    starter_config,
)
from printfarmd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
CONFIG_DOC = REPO / "docs" / "configuration.md"


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "farm.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def error_lines(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value.message.splitlines()


def printers(*bodies: str) -> str:
    """TOML for ``[[printers]]`` tables; each body is the table's lines."""
    return "".join(f"[[printers]]\n{body}\n" for body in bodies)


# -- the example file ---------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.base_dir == REPO
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 7125
    assert config.server.api_key == "demo-key-change-me"
    assert config.data_path == REPO / "data"
    assert config.gcodes_path == REPO / "demo" / "gcodes"
    by_id = {p.id: p for p in config.printers}
    assert list(by_id) == ["sim-1", "sim-2", "sim-3", "sim-4"]
    assert by_id["sim-1"].materials == ("PLA",)
    assert by_id["sim-2"].materials == ("PLA", "PETG")
    assert by_id["sim-3"].materials == ("PETG",)
    assert by_id["sim-3"].nozzle_diameter == 0.6
    assert by_id["sim-3"].tags == ("large",)
    assert by_id["sim-3"].bed_size == (300.0, 300.0, 300.0)
    assert by_id["sim-4"].auto_clear is True
    assert [p.auto_clear for p in config.printers].count(True) == 1
    assert all(p.driver == "simulator" for p in config.printers)
    assert all(p.simulator.speed == 60.0 for p in config.printers)


def _example_keys(text: str) -> dict[str, str]:
    """Dotted key -> the comment block above its first appearance in a TOML file.

    Commented-out settings (``# key = value``) count as present; their own line is the
    comment. ``[[x]]`` makes later ``[x.sub]`` tables ``x[].sub``.
    """
    arrays: set[str] = set()
    section = ""
    comment: list[str] = []
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        uncommented = line.lstrip("#").strip()
        header = re.fullmatch(r"(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?", uncommented)
        if header:
            parts = header.group(2).split(".")
            if header.group(1) == "[[":
                arrays.add(header.group(2))
            section = ".".join(
                f"{part}[]" if ".".join(parts[: i + 1]) in arrays else part
                for i, part in enumerate(parts)
            )
            comment = []
            continue
        key = re.match(r"([A-Za-z_][A-Za-z0-9_-]*)\s*=", uncommented)
        if key and (not line.startswith("#") or re.match(r"#\s*\w+\s*=\s*\S", line)):
            path = f"{section}.{key.group(1)}" if section else key.group(1)
            own = line if line.startswith("#") else ""
            found.setdefault(path, "\n".join([*comment, own]))
            comment = []
        elif line.startswith("#"):
            comment.append(line)
        elif not line:
            comment = []
    return found


def test_field_paths_cover_the_classes() -> None:
    paths = config_field_paths()
    assert len(paths) == len(set(paths))
    for expected in (
        "server.port",
        "server.api_key",
        "storage.synchronous",
        "scheduler.retry_backoff",
        "logging.level",
        "printers[].id",
        "printers[].bed_size",
        "printers[].simulator.speed",
        "printers[].simulator.report_interval",
    ):
        assert expected in paths
    # Internal fields and whole tables are not settable keys.
    assert "base_dir" not in paths
    assert "server" not in paths
    assert "printers[].simulator" not in paths


@pytest.mark.parametrize("path", config_field_paths())
def test_every_key_is_in_the_example_with_its_default(path: str) -> None:
    keys = _example_keys(EXAMPLE.read_text(encoding="utf-8"))
    assert path in keys, f"{path} is missing from config.example.toml"
    comment = keys[path].lower()
    assert "default" in comment or "required" in comment, f"{path}: no comment with its default"


@pytest.mark.parametrize("path", config_field_paths())
def test_every_key_is_documented(path: str) -> None:
    doc = CONFIG_DOC.read_text(encoding="utf-8")
    row = re.search(rf"^\| `{re.escape(path)}` \|(.+)$", doc, re.MULTILINE)
    assert row is not None, f"{path} has no row in docs/configuration.md"
    cells = [cell.strip() for cell in row.group(1).split("|")]
    kind, default, meaning = cells[0], cells[1], cells[2]
    assert kind and default and len(meaning) > 10


def test_doc_examples_are_valid() -> None:
    doc = CONFIG_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert blocks
    for block in blocks:
        config_from_dict(tomllib.loads(block))


# -- type errors: dotted key, no coercion ------------------------------------------------

TYPE_ERRORS = [
    pytest.param(
        printers('id = "a"', 'id = "b"', 'id = "c"\nnozzle_diameter = "0.4"'),
        "printers[2].nozzle_diameter: expected a number, got a string",
        id="string-for-number",
    ),
    pytest.param(
        '[server]\nport = "7125"', "server.port: expected an integer, got a string", id="str-int"
    ),
    pytest.param(
        "[server]\nport = 7125.0", "server.port: expected an integer, got a float", id="float-int"
    ),
    pytest.param(
        "[server]\nport = true", "server.port: expected an integer, got a boolean", id="bool-int"
    ),
    pytest.param(
        printers('id = "a"\nnozzle_diameter = true'),
        "printers[0].nozzle_diameter: expected a number, got a boolean",
        id="bool-number",
    ),
    pytest.param(
        "[server]\nhost = 127", "server.host: expected a string, got an integer", id="int-str"
    ),
    pytest.param(
        "[server]\napi_key = 1.5", "server.api_key: expected a string, got a float", id="float-str"
    ),
    pytest.param(
        '[scheduler]\ndispatch_paused = "yes"',
        "scheduler.dispatch_paused: expected a boolean (true or false), got a string",
        id="str-bool",
    ),
    pytest.param(
        "[scheduler]\ndispatch_paused = 1",
        "scheduler.dispatch_paused: expected a boolean (true or false), got an integer",
        id="int-bool",
    ),
    pytest.param(printers('name = "x"'), "printers[0].id: required", id="missing-id"),
    pytest.param(
        printers('id = "a"\nmaterials = "PLA"'),
        "printers[0].materials: expected an array, got a string",
        id="string-for-array",
    ),
    pytest.param(
        printers('id = "a"\nmaterials = ["PLA", 1]'),
        "printers[0].materials[1]: expected a string, got an integer",
        id="array-element",
    ),
    pytest.param(
        printers('id = "a"\nbed_size = [200, 200]'),
        "printers[0].bed_size: expected an array of 3 numbers, got 2 items",
        id="bed-length",
    ),
    pytest.param(
        printers('id = "a"\nbed_size = [200, "200", 200]'),
        "printers[0].bed_size[1]: expected a number, got a string",
        id="bed-element",
    ),
    pytest.param(
        printers('id = "a"\n[printers.simulator]\nseed = 1.5'),
        "printers[0].simulator.seed: expected an integer, got a float",
        id="nested-table",
    ),
    pytest.param(
        '[storage]\nsynchronous = "OFF"',
        'storage.synchronous: expected one of FULL, NORMAL, got "OFF"',
        id="enum",
    ),
    pytest.param(
        '[logging]\nformat = "xml"',
        'logging.format: expected one of text, json, got "xml"',
        id="enum-2",
    ),
    pytest.param('server = "x"', "server: expected a table, got a string", id="not-a-table"),
    pytest.param(
        'printers = { id = "a" }', "printers: expected an array, got a table", id="not-an-array"
    ),
    pytest.param(
        "[scheduler]\nretry_backoff = [60, inf]",
        "scheduler.retry_backoff[1]: expected a finite number, got inf",
        id="infinity",
    ),
    pytest.param(
        "[scheduler]\ncooldown_seconds = 2024-01-01",
        "scheduler.cooldown_seconds: expected a number, got a date/time",
        id="datetime",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TYPE_ERRORS)
def test_type_errors_name_the_dotted_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_lines(tmp_path, text) == [expected]


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("", ""),
        ("[server]\n", "server."),
        ("[storage]\n", "storage."),
        ("[scheduler]\n", "scheduler."),
        ("[logging]\n", "logging."),
        ('[[printers]]\nid = "a"\n', "printers[0]."),
        ('[[printers]]\nid = "a"\n[printers.simulator]\n', "printers[0].simulator."),
    ],
)
def test_unknown_key_rejected_at_every_level(tmp_path: Path, section: str, where: str) -> None:
    assert error_lines(tmp_path, f"{section}bogus = 1\n") == [f"{where}bogus: unknown key"]


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    assert error_lines(tmp_path, "[server]\nprot = 1\n") == [
        "server.prot: unknown key (did you mean 'port'?)"
    ]


def test_unknown_quoted_key_is_quoted(tmp_path: Path) -> None:
    assert error_lines(tmp_path, '[server]\n"a b" = 1\n') == ['server."a b": unknown key']


def test_base_dir_is_not_a_toml_key(tmp_path: Path) -> None:
    assert error_lines(tmp_path, 'base_dir = "/"\n') == ["base_dir: unknown key"]


def test_every_error_reported_one_per_line(tmp_path: Path) -> None:
    text = '[server]\nport = "x"\nbogus = 1\n' + printers('id = "a"', 'nozzle_diameter = "0.4"')
    assert error_lines(tmp_path, text) == [
        "server.port: expected an integer, got a string",
        "server.bogus: unknown key",
        "printers[1].id: required",
        "printers[1].nozzle_diameter: expected a number, got a string",
    ]


def test_python_callers_get_the_same_strictness() -> None:
    with pytest.raises(ConfigError, match=r"^server\.port: expected an integer, got a float$"):
        config_from_dict({"server": {"port": 1.0}})
    # Tuples are not TOML arrays: data must look like what tomllib returns.
    with pytest.raises(ConfigError, match=r"scheduler\.retry_backoff: expected an array"):
        config_from_dict({"scheduler": {"retry_backoff": (1.0,)}})


# -- file-level errors -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    lines = error_lines(tmp_path, '[server]\nport = 7125\nhost "x"\n')
    assert len(lines) == 1
    assert "invalid TOML" in lines[0]
    assert "line 3, column" in lines[0]
    assert "farm.toml" in lines[0]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_unreadable_file(tmp_path: Path) -> None:
    # A path through a regular file fails for root too (CI runs as root, where a
    # chmod 0 file would still be readable).
    (tmp_path / "plain").write_text("")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "plain" / "farm.toml")


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path / "farm.toml")


# -- semantic rules ----------------------------------------------------------------------

SEMANTIC_ERRORS = [
    ("[server]\nport = -1", "server.port: must be between 0 and 65535"),
    ("[server]\nport = 65536", "server.port: must be between 0 and 65535"),
    ('[server]\nhost = " "', "server.host: must not be empty"),
    ("[server]\nmax_body_bytes = 1023", "server.max_body_bytes: must be at least 1024"),
    ('[storage]\ndata_dir = ""', "storage.data_dir: must not be empty"),
    ('[storage]\nbackend = "postgresql"', "storage.dsn: must name the PostgreSQL database"),
    (
        '[storage]\ndsn = "postgresql://h/db"',
        'storage.dsn: is only used with backend = "postgresql"',
    ),
    ("[scheduler]\ncooldown_seconds = -0.5", "scheduler.cooldown_seconds: must be >= 0"),
    ("[scheduler]\nmax_retries = -1", "scheduler.max_retries: must be >= 0"),
    ("[scheduler]\nretry_backoff = []", "scheduler.retry_backoff: must not be empty"),
    ("[scheduler]\nretry_backoff = [60, -1]", "scheduler.retry_backoff[1]: must be >= 0"),
    ("[scheduler]\nmax_priority = 0", "scheduler.max_priority: must be >= 1"),
    ('[logging]\nlevel = "loud"', "logging.level: expected one of debug, info, warning, error"),
    (printers('id = ""'), "printers[0].id: must be 1 to 64 characters"),
    (printers('id = "a b"'), "printers[0].id: must be 1 to 64 characters"),
    (printers('id = "a/b"'), "printers[0].id: must be 1 to 64 characters"),
    (printers(f'id = "{"x" * 65}"'), "printers[0].id: must be 1 to 64 characters"),
    (
        printers('id = "a"', 'id = "b"', 'id = "a"'),
        'printers[2].id: duplicate printer id "a" (also printers[0])',
    ),
    (printers('id = "a"\ndriver = "klipper"'), 'printers[0].driver: unknown driver "klipper"'),
    (printers('id = "a"\nnozzle_diameter = 0'), "printers[0].nozzle_diameter: must be > 0"),
    (printers('id = "a"\nbed_size = [220, 0, 250]'), "printers[0].bed_size[1]: must be > 0"),
    (printers('id = "a"\nmaterials = ["PLA", " "]'), "printers[0].materials[1]: must not be"),
    (printers('id = "a"\ntags = [""]'), "printers[0].tags[0]: must not be empty"),
    (
        printers('id = "a"\n[printers.simulator]\nspeed = 0'),
        "printers[0].simulator.speed: must be > 0",
    ),
    (
        printers('id = "a"\n[printers.simulator]\nfailure_rate = 1.5'),
        "printers[0].simulator.failure_rate: must be between 0 and 1",
    ),
    (
        printers('id = "a"\n[printers.simulator]\nfailure_rate = -0.1'),
        "printers[0].simulator.failure_rate: must be between 0 and 1",
    ),
    (
        printers('id = "a"\n[printers.simulator]\nreport_interval = 0'),
        "printers[0].simulator.report_interval: must be > 0",
    ),
    (
        printers('id = "a"\n[printers.simulator]\ndefault_print_time = -1'),
        "printers[0].simulator.default_print_time: must be > 0",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SEMANTIC_ERRORS)
def test_semantic_errors_name_the_dotted_key(tmp_path: Path, text: str, expected: str) -> None:
    lines = error_lines(tmp_path, text)
    assert len(lines) == 1
    assert lines[0].startswith(expected), lines[0]


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nport = 0",
        "[server]\nport = 65535",
        "[server]\nmax_body_bytes = 1024",
        "[scheduler]\nmax_retries = 0\ncooldown_seconds = 0\nretry_backoff = [0]",
        "[scheduler]\nmax_priority = 1",
        '[logging]\nlevel = "WARNING"',
        printers(f'id = "{"x" * 64}"'),
        printers('id = "Printer_1.a-b"'),
        printers('id = "a"\n[printers.simulator]\nfailure_rate = 0'),
        printers('id = "a"\n[printers.simulator]\nfailure_rate = 1\nspeed = 60'),
        printers('id = "a"', 'id = "A"'),
    ],
)
def test_boundary_values_accepted(tmp_path: Path, text: str) -> None:
    load_text(tmp_path, text)


# -- normalisation and paths -------------------------------------------------------------


def test_postgresql_backend(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, '[storage]\nbackend = "PostgreSQL"\ndsn = "postgresql://farm@db/printfarm"\n'
    )
    assert config.storage.backend is StorageBackend.POSTGRESQL
    assert config.storage.dsn == "postgresql://farm@db/printfarm"
    assert load_text(tmp_path, "").storage.backend is StorageBackend.SQLITE


def test_normalisation(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[storage]\nsynchronous = "normal"\n[logging]\nlevel = "DEBUG"\nformat = "JSON"\n'
        + printers('id = "a"\nmaterials = ["pla", " petg "]', 'id = "b"\nname = "  "'),
    )
    assert config.storage.synchronous is Synchronous.NORMAL
    assert config.logging.level == "debug"
    assert config.logging.format is LogFormat.JSON
    assert config.printers[0].materials == ("PLA", "PETG")
    assert config.printers[0].name == "a"
    assert config.printers[1].name == "b"
    # Integers are fine where a number is expected, and come out as floats.
    config = load_text(tmp_path, printers('id = "a"\nbed_size = [300, 300, 300]'))
    assert config.printers[0].bed_size == (300.0, 300.0, 300.0)
    assert all(type(size) is float for size in config.printers[0].bed_size)


def test_colours_and_discovered_materials_are_upper_cased_too(tmp_path: Path) -> None:
    # The config classes are plain values (issue 17: msgspec Structs have no converters):
    # the loader is what spells names the farm's way, on every field that holds them.
    config = load_text(
        tmp_path,
        '[mqtt.discovered]\nmaterials = [" petg", "tpu"]\n'
        + printers('id = "a"\nmaterials = ["pla"]\ncolours = [" #ff6600 "]'),
    )
    assert config.printers[0].colours == ("#FF6600",)
    assert config.mqtt.discovered.materials == ("PETG", "TPU")


def test_relative_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "config.toml").write_text('[storage]\ndata_dir = "state"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../farm/config.toml"))
    assert config.base_dir.is_absolute()
    assert config.data_path == farm / "state"
    assert config.gcodes_path == farm / "state" / "gcodes"
    (farm / "config.toml").write_text(f'[storage]\ngcodes_dir = "{tmp_path / "g"}"\n')
    assert load_config(farm / "config.toml").gcodes_path == tmp_path / "g"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    assert msgspec.structs.replace(config, base_dir=Path(".")) == Config()


# -- writing configs ---------------------------------------------------------------------


def test_dump_round_trips_the_example() -> None:
    config = load_config(EXAMPLE)
    text = dump_config(config)
    assert "base_dir" not in text
    assert config_from_dict(tomllib.loads(text), base_dir=config.base_dir) == config


def test_starter_config_is_valid() -> None:
    digest = "sha256:" + "ab" * 32
    data = starter_config(digest)
    assert "api_key" not in data["server"]  # issue 9: only the hash is written
    config = config_from_dict(tomllib.loads(dump_config(config_from_dict(data))))
    assert config.server.api_key_hash == digest and config.server.api_key == ""
    assert len(config.printers) == 2
    assert {p.driver for p in config.printers} == {"simulator"}


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            'api_key = "k"\napi_key_hash = "sha256:' + "0" * 64 + '"',
            "server.api_key_hash: set either api_key or api_key_hash, not both",
        ),
        ('api_key_hash = "md5:abc"', 'server.api_key_hash: must be "sha256:" followed by 64'),
        ('api_key_hash = "sha256:' + "A" * 64 + '"', "server.api_key_hash: must be"),
        ('trusted_proxies = ["10.0.0.0/33"]', "server.trusted_proxies[0]: must be an IP"),
        ("max_connections = 0", "server.max_connections: must be >= 1"),
    ],
)
def test_access_settings_are_checked(tmp_path: Path, server: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"[server]\n{server}\n")
    assert message in info.value.message


_names = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=64)
_positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
_printer = st.builds(
    PrinterConfig,
    id=_names,
    name=st.text(max_size=20).filter(lambda s: s.strip() == s and s != ""),
    materials=st.lists(st.text(alphabet="ABCPLAETG+", min_size=1, max_size=8), max_size=3).map(
        tuple
    ),
    nozzle_diameter=_positive,
    bed_size=st.tuples(_positive, _positive, _positive),
    tags=st.lists(_names, max_size=3).map(tuple),
    auto_clear=st.booleans(),
    simulator=st.builds(
        SimulatorOptions,
        speed=_positive,
        failure_rate=st.floats(min_value=0, max_value=1),
        seed=st.integers(-(2**63), 2**63 - 1),
        default_print_time=_positive,
        report_interval=_positive,
    ),
)


@given(
    server=st.builds(
        ServerConfig,
        host=st.sampled_from(["127.0.0.1", "0.0.0.0", "::1"]),
        port=st.integers(0, 65535),
        api_key=st.text(),
        max_body_bytes=st.integers(1024, 2**40),
    ),
    storage=st.builds(
        StorageConfig,
        data_dir=st.text(min_size=1).filter(str.strip),
        gcodes_dir=st.text(),
        synchronous=st.sampled_from(Synchronous),
    ),
    scheduler=st.builds(
        SchedulerConfig,
        dispatch_paused=st.booleans(),
        cooldown_seconds=st.floats(0, 1e6),
        max_retries=st.integers(0, 100),
        retry_backoff=st.lists(st.floats(0, 1e6), min_size=1, max_size=5).map(tuple),
        max_priority=st.integers(1, 10**6),
    ),
    printer_list=st.lists(_printer, max_size=4, unique_by=lambda p: p.id),
)
def test_dump_and_load_round_trip(
    server: ServerConfig,
    storage: StorageConfig,
    scheduler: SchedulerConfig,
    printer_list: list[PrinterConfig],
) -> None:
    config = Config(
        server=server, storage=storage, scheduler=scheduler, printers=tuple(printer_list)
    )
    assert config_from_dict(tomllib.loads(dump_config(config))) == config
