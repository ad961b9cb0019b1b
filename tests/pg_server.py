"""A real PostgreSQL server for the tests (issue 18), from Debian's ``postgresql`` package.

``PgServer.start()`` runs ``initdb`` into a temporary folder and starts the server with
``pg_ctl`` on a free TCP port of 127.0.0.1 (its Unix socket in the same folder), trust
authentication, the C locale. PostgreSQL refuses to run as root: when the tests run as
root (CI), the folder is given to the unprivileged user ``nobody`` and every server
command runs as that user (``runuser``). No PostgreSQL installed is an error, never a
skip. ``fresh_dsn()`` makes a new schema per test (its DSN sets ``search_path``), so
tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SERVER_USER = "nobody"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL is not installed (no initdb): the PostgreSQL store tests need Debian's "
        "`postgresql` package (apt-get install -y postgresql; .ci/run installs it)"
    )


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.as_root = os.getuid() == 0
        # As root, in /tmp itself: the server's user must reach the folder (root's TMPDIR
        # may be a private one).
        base = "/tmp" if self.as_root else None
        self.root = Path(tempfile.mkdtemp(prefix="printfarmd-pg-", dir=base))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._schemas = itertools.count(1)
        if self.as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}"
            )
        return done

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", schema: str | None = None) -> str:
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"
        if schema is not None:
            dsn += f"?options=-csearch_path%3D{schema}"
        return dsn

    def fresh_dsn(self) -> str:
        """The DSN of a new, empty schema (a test's own database, in effect)."""
        import psycopg

        schema = f"t{next(self._schemas)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.dsn(schema=schema)

    def terminate_clients(self) -> int:
        """Kill every other client connection (as a network cut would); how many."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return len(rows)


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
