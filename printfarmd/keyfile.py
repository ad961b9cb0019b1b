"""Setting the API key's hash in a config file without disturbing the rest of it.

``printfarmd api-key rotate`` must keep the operator's comments, order and formatting, so
the file is edited as text: inside the ``[server]`` table every ``api_key`` and
``api_key_hash`` line is removed and one ``api_key_hash`` line takes the place of the
first. The result is parsed and validated before anyone writes it (``set_key_hash``
raises ``ConfigError`` rather than return a file that would not load), and
``write_preserving`` replaces the file atomically with its owner and mode kept, so a
daemon running as another user can still read it.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path

from printfarmd.config import config_from_dict
from printfarmd.errors import ConfigError

_TABLE_RE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
_KEY_LINE_RE = re.compile(r"^\s*(api_key|api_key_hash)\s*=")


def set_key_hash(text: str, key_hash: str, *, base_dir: Path) -> str:
    """``text`` (a config file) with ``server.api_key_hash = key_hash`` and no ``api_key``.

    Raises ``ConfigError`` if ``text`` is not a valid config, or if the edit could not be
    made safely (e.g. the key is written as a dotted key or a multi-line string): then the
    operator has to edit the file by hand.
    """
    config_from_dict(_parse(text), base_dir=base_dir)  # refuse to touch a broken file
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    table: str | None = None
    placed = False
    has_server = False
    new_line = f'api_key_hash = "{key_hash}"\n'
    for line in lines:
        match = _TABLE_RE.match(line)
        if match:
            if table == "server" and not placed:
                out.append(new_line)
                placed = True
            array = line.lstrip().startswith("[[")
            table = None if array else match.group(1)
            has_server = has_server or table == "server"
        elif table == "server" and _KEY_LINE_RE.match(line):
            if not placed:
                out.append(new_line)
                placed = True
            continue
        out.append(line)
    if table == "server" and not placed:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(new_line)
        placed = True
    if not has_server:
        out.append(f"\n[server]\n{new_line}")
    result = "".join(out)
    server = _parse(result).get("server")
    if not isinstance(server, dict):
        server = {}
    if server.get("api_key_hash") != key_hash or server.get("api_key"):
        raise ConfigError(
            "could not set server.api_key_hash in this file safely (is the key a dotted key"
            " or a multi-line string?): edit it by hand"
        )
    config_from_dict(_parse(result), base_dir=base_dir)
    return result


def _parse(text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None


def write_preserving(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, keeping its mode, owner and group.

    A crash leaves the old file or the new one, never half of either.
    """
    st = path.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fchmod(file.fileno(), st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                # Root rotating the key of a file the daemon's user owns: give it back.
                os.fchown(file.fileno(), st.st_uid, st.st_gid)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
