"""Session-wide leak scan (issue 9: S12, S14, S16): nothing the daemon sends or logs during
the whole test run may contain an API key, and every HTTP response must be safe to render.

How it works:

- At session start a session directory is made and ``PRINTFARMD_WIRE_LOG`` points at it,
  so every daemon of the run (in-process and subprocess) records what it sends there
  (``printfarmd/wirelog.py``); subprocess daemons also copy their log records there. The
  in-process daemons' records (logger ``printfarmd`` and ``hypercorn``, level INFO as in
  production) go through the project's text formatter to ``inprocess.log`` there.
- Keys are collected from ``register_key`` (conftest registers ``API_KEY``), the example
  config, every in-process daemon (``wirelog.wrap`` is watched), every config a
  ``DaemonProcess`` starts with and every ``*.toml`` under pytest's base temp directory.
  Each wire file names its daemon's key by SHA-256, so a daemon whose key the scan does
  not know is itself a finding: the scan cannot silently miss a key.
- At session end every wire file, every daemon log file and the in-process log are
  searched for each key: plain, URL-encoded, JSON-escaped, hex and base64 (every
  alignment). Every recorded HTTP response is checked: no ``Set-Cookie`` (S16),
  ``X-Content-Type-Options: nosniff``, and a content type that cannot carry user data into
  a browser page (S14; the one HTML page, the dashboard shell, must be byte-identical
  across the run: static).
- Any finding is printed and fails the run (exit status 1), whatever the tests said.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import attrs
import orjson
import pytest

from printfarmd import wirelog
from printfarmd.logs import TextFormatter

REPO = Path(__file__).resolve().parent.parent
#: Shorter keys would match unrelated text; a daemon serving one is a finding.
MIN_KEY_LEN = 12
IN_PROCESS_LOG = "inprocess.log"

# ---------------------------------------------------------------- what the scan knows

_KEYS: set[str] = set()
_LOG_FILES: set[Path] = set()
_WIRE_DIRS: set[Path] = set()


def register_key(key: str) -> None:
    """Search the run's output for ``key`` too (a test that serves a key of its own)."""
    if key:
        _KEYS.add(key)


def add_log_file(path: Path) -> None:
    """Scan this daemon log file at the end of the session."""
    _LOG_FILES.add(Path(path))


def add_wire_dir(path: Path) -> None:
    """Scan the wire and log files in this directory too (a test's own recording)."""
    _WIRE_DIRS.add(Path(path))


def _keys_of_toml(path: Path) -> Iterator[str]:
    try:
        data = tomllib.loads(path.read_text(errors="replace"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    server = data.get("server")
    key = server.get("api_key") if isinstance(server, dict) else None
    if isinstance(key, str) and key:
        yield key


def watch_daemon_process(cls: Any) -> None:
    """Wrap ``cls.start`` (conftest's ``DaemonProcess``) to note its log file and key."""
    original: Callable[..., Any] = cls.start
    if getattr(original, "_keyleak", False):
        return

    def start(self: Any, *args: Any, **kwargs: Any) -> Any:
        add_log_file(self.log_path)
        for key in _keys_of_toml(Path(self.config_path)):
            register_key(key)
        return original(self, *args, **kwargs)

    start._keyleak = True  # type: ignore[attr-defined]
    cls.start = start


# ---------------------------------------------------------------- the scanner


# Not slotted: pytest plugins read ``__dict__`` of whatever the terminal's stats hold.
@attrs.frozen(slots=False)
class Finding:
    file: Path
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.where}: {self.what}"


def key_forms(key: str) -> dict[str, bytes]:
    """Every encoding of ``key`` the scan looks for, by name."""
    raw = key.encode("utf-8")
    forms = {
        "plain": raw,
        "url-encoded": quote(key, safe="").encode(),
        "form-encoded": quote_plus(key).encode(),
        "json-escaped": orjson.dumps(key)[1:-1],
        "hex": raw.hex().encode(),
    }
    # Base64 of the key inside longer data depends on where it starts modulo 3: for each
    # offset keep the characters made only of the key's bits.
    for offset in range(3):
        n = offset + len(raw)
        first = -(-offset * 8 // 6)
        last = n * 8 // 6
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            forms[f"{name}+{offset}"] = encode(b"\0" * offset + raw)[first:last]
    unique: dict[bytes, str] = {}
    for name, value in forms.items():
        unique.setdefault(value, name)
    return {name: value for value, name in unique.items()}


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _bytes(value: Any) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b""


def _strings(value: Any) -> Iterator[bytes]:
    """Every text and byte value inside a recorded message."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        yield _bytes(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value.encode("utf-8", "surrogatepass")


def _masked(data: bytes, at: int, length: int) -> str:
    before = data[max(0, at - 40) : at].decode("utf-8", "replace")
    after = data[at + length : at + length + 40].decode("utf-8", "replace")
    return repr(f"{before}<KEY>{after}")


#: Content types that carry data but cannot be rendered as a page: (type, allowed paths or
#: None for any path).
_SAFE_TYPES: dict[str, frozenset[str] | None] = {
    "application/json": None,
    "text/event-stream": None,
    "application/octet-stream": None,
    # Prometheus exposition format.
    "text/plain": frozenset({"/metrics"}),
    "text/javascript": frozenset({"/dashboard/dashboard.js"}),
    "text/css": frozenset({"/dashboard/dashboard.css"}),
    # The dashboard shell: checked to be identical across the run (static).
    "text/html": frozenset({"/dashboard"}),
}


@attrs.define
class _Response:
    path: str
    method: str
    status: int
    headers: list[tuple[str, str]]
    line: int
    body: bytearray = attrs.field(factory=bytearray)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class Scanner:
    """Searches recorded output for keys and checks recorded responses (S12, S14, S16)."""

    def __init__(self, keys: Iterable[str]) -> None:
        known = {k for k in keys if k}
        self.known_digests = {_sha256(k): k for k in known}
        self.forms = [
            (key, name, value)
            for key in sorted(known)
            if len(key) >= MIN_KEY_LEN
            for name, value in key_forms(key).items()
        ]
        #: Distinct bodies of the dashboard shell seen (it must be static).
        self.shells: dict[bytes, tuple[Path, int]] = {}
        self.responses = 0
        self.messages = 0
        self.daemons = 0

    def search(self, data: bytes, file: Path, where: str) -> list[Finding]:
        found = []
        for key, name, form in self.forms:
            at = data.find(form)
            if at >= 0:
                what = f"API key {key[:4]}... ({name}) at byte {at}: {_masked(data, at, len(form))}"
                found.append(Finding(file, where, what))
        return found

    def scan_log(self, path: Path) -> list[Finding]:
        """A log file: any key form anywhere is a finding (with its line number)."""
        data = path.read_bytes()
        found = []
        for key, name, form in self.forms:
            start = 0
            while (at := data.find(form, start)) >= 0:
                line = data.count(b"\n", 0, at) + 1
                what = f"API key {key[:4]}... ({name}): {_masked(data, at, len(form))}"
                found.append(Finding(path, f"line {line}, byte {at}", what))
                start = at + 1
        return found

    def scan_wire(self, path: Path) -> list[Finding]:
        """A wire file: keys in anything sent, and every HTTP response's hygiene."""
        found: list[Finding] = []
        open_responses: dict[int, _Response] = {}
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # a daemon killed mid-write (cannot happen: one write per line)
                record = orjson.loads(raw)
                if "daemon" in record:
                    self.daemons += 1
                    found += self._check_daemon_key(path, number, record)
                    continue
                self.messages += 1
                found += self._message(path, number, record, open_responses)
        for resp in open_responses.values():
            found += self._finish(path, resp)
        return found

    def _check_daemon_key(self, path: Path, line: int, record: dict[str, Any]) -> list[Finding]:
        digest = record.get("key_sha256")
        if digest is None:
            return []
        key = self.known_digests.get(digest)
        if key is None:
            return [
                Finding(
                    path,
                    f"line {line}",
                    f"daemon pid {record.get('daemon')} serves a key this scan does not know "
                    f"(sha256 {digest[:12]}...): register it with keyleak.register_key",
                )
            ]
        if len(key) < MIN_KEY_LEN:
            return [
                Finding(
                    path,
                    f"line {line}",
                    f"daemon pid {record.get('daemon')} serves a {len(key)}-character key: "
                    f"too short to search for, use at least {MIN_KEY_LEN} characters",
                )
            ]
        return []

    def _message(
        self, path: Path, line: int, record: dict[str, Any], responses: dict[int, _Response]
    ) -> list[Finding]:
        msg = record["message"]
        kind = msg.get("type", "")
        conn = int(record["conn"])
        where = f"line {line} ({record.get('method') or 'WS'} {record['path']}, {kind})"
        found: list[Finding] = []
        if kind in ("http.response.body", "websocket.http.response.body"):
            resp = responses.get(conn)
            if resp is not None:
                resp.body += _bytes(msg.get("body", {"b64": ""}))
                if not msg.get("more_body", False):
                    found += self._finish(path, responses.pop(conn))
            else:
                found += self.search(_bytes(msg.get("body", "")), path, where)
            return found
        for data in _strings(msg):
            found += self.search(data, path, where)
        if kind in ("http.response.start", "websocket.http.response.start"):
            headers = [
                (_bytes(k).decode("latin-1").lower(), _bytes(v).decode("latin-1"))
                for k, v in msg.get("headers", [])
            ]
            responses[conn] = _Response(
                path=record["path"],
                method=record.get("method") or "GET",
                status=int(msg.get("status", 0)),
                headers=headers,
                line=line,
            )
        elif kind == "websocket.accept":
            for k, _ in msg.get("headers", []) or []:
                if _bytes(k).lower() == b"set-cookie":
                    found.append(Finding(path, where, "S16: Set-Cookie on a websocket accept"))
        return found

    def _finish(self, path: Path, resp: _Response) -> list[Finding]:
        """A whole response: keys split across chunks, then S14/S16 hygiene."""
        self.responses += 1
        where = f"line {resp.line} ({resp.method} {resp.path} -> {resp.status})"
        found = self.search(bytes(resp.body), path, where)
        if resp.header("set-cookie") is not None:
            found.append(Finding(path, where, "S16: Set-Cookie sent"))
        if (resp.header("x-content-type-options") or "").lower() != "nosniff":
            found.append(Finding(path, where, "S14: no X-Content-Type-Options: nosniff"))
        ctype = (resp.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype:
            found += self._content_type(path, where, resp, ctype)
        elif resp.body:
            found.append(Finding(path, where, "S14: a body without a Content-Type"))
        return found

    def _content_type(self, path: Path, where: str, resp: _Response, ctype: str) -> list[Finding]:
        attachment = (resp.header("content-disposition") or "").lower().startswith("attachment")
        if ctype.startswith("image/") or (attachment and ctype != "text/html"):
            return []  # a photo, a thumbnail or a file download
        if ctype not in _SAFE_TYPES:
            return [Finding(path, where, f"S14: unexpected Content-Type {ctype!r}")]
        paths = _SAFE_TYPES[ctype]
        if paths is not None and resp.path not in paths:
            return [Finding(path, where, f"S14: {ctype} from {resp.path} (not allowed there)")]
        if ctype == "text/html" and resp.status == 200 and resp.method == "GET":
            self.shells.setdefault(bytes(resp.body), (path, resp.line))
        return []

    def shell_findings(self) -> list[Finding]:
        """More than one distinct dashboard shell in a run: it is not static."""
        if len(self.shells) <= 1:
            return []
        return [
            Finding(file, f"line {line}", "S14: the dashboard shell differs between responses")
            for file, line in self.shells.values()
        ]


# ---------------------------------------------------------------- the pytest plugin


@attrs.define
class _Session:
    directory: Path
    handler: logging.Handler
    levels: dict[str, int]
    unwrap: Callable[[], None]


_STATE: list[_Session] = []


def session_directory() -> Path | None:
    """This run's recording directory (None outside a session)."""
    return _STATE[0].directory if _STATE else None


def _install_in_process_log(directory: Path) -> tuple[logging.Handler, dict[str, int]]:
    handler = logging.FileHandler(directory / IN_PROCESS_LOG, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    levels = {}
    for name in ("printfarmd", "hypercorn"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.addHandler(handler)
        # INFO as in production; without it only warnings would be written.
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return handler, levels


def _watch_in_process_keys() -> Callable[[], None]:
    original = wirelog.wrap

    def wrap(app: Any, server: Any) -> Any:
        register_key(getattr(server, "api_key", ""))
        return original(app, server)

    wirelog.wrap = wrap  # type: ignore[assignment]

    def unwrap() -> None:
        wirelog.wrap = original

    return unwrap


def pytest_sessionstart(session: pytest.Session) -> None:
    directory = Path(tempfile.mkdtemp(prefix="printfarmd-wire-"))
    os.environ[wirelog.ENV] = str(directory)
    handler, levels = _install_in_process_log(directory)
    _STATE.append(_Session(directory, handler, levels, _watch_in_process_keys()))
    for key in _keys_of_toml(REPO / "config.example.toml"):
        register_key(key)
    # Imported here, not at the top: conftest loads this plugin while it is being imported.
    from tests import conftest

    register_key(conftest.API_KEY)
    watch_daemon_process(conftest.DaemonProcess)


def _basetemp(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)
    try:
        return Path(factory.getbasetemp()) if factory is not None else None
    except (OSError, ValueError, AttributeError):
        return None


def scan_directory(scanner: Scanner, directory: Path) -> list[Finding]:
    """Every wire file and log file recorded in ``directory``."""
    found: list[Finding] = []
    for path in sorted(directory.glob("wire-*.log")):
        found += scanner.scan_wire(path)
    for path in sorted(directory.glob("log-*.log")):
        found += scanner.scan_log(path)
    if (directory / IN_PROCESS_LOG).exists():
        found += scanner.scan_log(directory / IN_PROCESS_LOG)
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _STATE:
        return
    state = _STATE.pop()
    state.unwrap()
    for name, level in state.levels.items():
        logging.getLogger(name).removeHandler(state.handler)
        logging.getLogger(name).setLevel(level)
    state.handler.close()
    os.environ.pop(wirelog.ENV, None)
    if (base := _basetemp(session.config)) is not None:
        for toml in base.rglob("*.toml"):
            for key in _keys_of_toml(toml):
                register_key(key)
    scanner = Scanner(_KEYS)
    findings: list[Finding] = []
    for directory in (state.directory, *sorted(_WIRE_DIRS)):
        if directory.is_dir():
            findings += scan_directory(scanner, directory)
    for path in sorted(_LOG_FILES):
        if path.exists():
            findings += scanner.scan_log(path)
    findings += scanner.shell_findings()
    reporter: Any = session.config.pluginmanager.get_plugin("terminalreporter")
    write: Callable[..., None] = (
        reporter.write_line if reporter is not None else (lambda line, **_: print(line))
    )
    keys = len({k for k in _KEYS if len(k) >= MIN_KEY_LEN})
    summary = (
        f"key-leak scan: {scanner.daemons} daemons, {scanner.responses} HTTP responses, "
        f"{scanner.messages} messages, {len(_LOG_FILES)} daemon logs, {keys} keys"
    )
    if not findings:
        write(f"{summary}: nothing found")
        shutil.rmtree(state.directory, ignore_errors=True)
        return
    write("=" * 28 + f" KEY-LEAK SCAN: {len(findings)} FINDINGS " + "=" * 28, red=True, bold=True)
    for finding in findings:
        write(f"LEAK {finding}", red=True)
    write(f"{summary}; recordings kept in {state.directory}", red=True)
    if reporter is not None:
        # Shown in the final "N passed, ..." line too.
        reporter.stats.setdefault("key-leak findings", []).extend(findings)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@contextlib.contextmanager
def recording(directory: Path) -> Iterator[Path]:
    """Record the daemons started inside the block into ``directory`` (also scanned at
    session end) and the in-process log records into ``directory/inprocess.log``."""
    directory.mkdir(parents=True, exist_ok=True)
    add_wire_dir(directory)
    before = os.environ.get(wirelog.ENV)
    os.environ[wirelog.ENV] = str(directory)
    handler = logging.FileHandler(directory / IN_PROCESS_LOG, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("printfarmd")
    logger.addHandler(handler)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield directory
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
        if before is None:
            os.environ.pop(wirelog.ENV, None)
        else:
            os.environ[wirelog.ENV] = before
