"""Several daemons on one PostgreSQL database (issue 18): leases, fencing, job claims and
the event feed between daemons — their SQL.

A daemon of a cluster (``server.node_id``) holds a lease row in ``nodes``: an ``epoch``
that grows each time the node (re)joins or is taken over, and an expiry the node pushes
forward while it lives. Time is the database server's clock (``clock_timestamp()``), so
the daemons' own clocks may disagree. Every write transaction of a cluster daemon:

1. takes the farm's event-order lock (a transaction advisory lock): the daemons' write
   transactions commit one at a time, so the event log's ``seq`` order is its commit
   order and a daemon that has read up to ``seq`` N has missed nothing below it;
2. checks, under a share lock of its own lease row, that its epoch is still the row's and
   the row not marked lost: a daemon taken over (``Fenced``) writes nothing, and a
   takeover waits for a transaction of the node it takes over to end;
3. tells the other daemons (``pg_notify``, delivered at commit, dropped on rollback).

A queued job is claimed for a printer with a row lock that skips rows other transactions
hold (``FOR UPDATE SKIP LOCKED``) in the transaction that moves it to printing.

The migration creates the table on SQLite too (one migration list), where it stays empty:
the configuration refuses ``node_id`` without PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson

from printfarmd.errors import Fenced, StaleWrite
from printfarmd.models import Event
from printfarmd.store import events
from printfarmd.store.dialect import Conn

MIGRATION = """
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    printers TEXT NOT NULL,
    lost INTEGER NOT NULL DEFAULT 0,
    joined_at REAL NOT NULL,
    views TEXT NOT NULL DEFAULT '[]'
);
ALTER TABLE events ADD COLUMN node TEXT;
"""

#: The LISTEN/NOTIFY channel: a wake-up only (the payload is the writer's node id); what
#: changed is read from the event log.
CHANNEL = "printfarmd_events"
#: The farm's event-order lock (any constant, always the same).
ORDER_LOCK = 0x70F4_2020
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


class Membership(msgspec.Struct):
    """This daemon in the cluster: its node id and the lease epoch it acts under (0:
    not joined, nothing may be written)."""

    node: str
    epoch: int = 0


class Peer(msgspec.Struct, frozen=True):
    """A node's lease as the database has it now."""

    node: str
    epoch: int
    #: Seconds until the lease expires (negative: expired), by the server's clock.
    expires_in: float
    printers: tuple[str, ...]
    lost: bool
    #: Its printers as its REST API shows them (JSON objects), as of its last renewal.
    views: tuple[dict[str, Any], ...] = ()


# ---------------------------------------------------------------------- leases


def join(
    conn: Conn, node: str, printers: Sequence[str], lease: float
) -> tuple[int, tuple[str, ...]]:
    """Take ``node``'s lease under a new epoch (first join, a restart, or back after a
    takeover). Returns the epoch and the printers the node had listed before (``()``
    for a new node). Runs in its own transaction."""
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT printers FROM nodes WHERE node_id = ? FOR UPDATE", (node,)
        ).fetchone()
        before = () if row is None else tuple(orjson.loads(row[0]))
        found = conn.execute(
            "INSERT INTO nodes (node_id, epoch, expires_at, printers, lost, joined_at) "
            f"VALUES (?, 1, {_NOW} + ?, ?, 0, {_NOW}) ON CONFLICT (node_id) DO UPDATE SET "
            "epoch = nodes.epoch + 1, expires_at = EXCLUDED.expires_at, "
            "printers = EXCLUDED.printers, lost = 0, joined_at = EXCLUDED.joined_at "
            "RETURNING epoch",
            (node, lease, orjson.dumps(list(printers)).decode()),
        ).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(found[0]), before


def renew(conn: Conn, me: Membership, lease: float, views: str = "[]") -> bool:
    """Push ``me``'s lease ``lease`` seconds ahead and store its printers' ``views`` (a
    JSON array); False when the lease is no longer ours (another daemon took the node
    over: re-read before acting again)."""
    cur = conn.execute(
        f"UPDATE nodes SET expires_at = {_NOW} + ?, views = ? "
        "WHERE node_id = ? AND epoch = ? AND lost = 0",
        (lease, views, me.node, me.epoch),
    )
    return bool(cur.rowcount == 1)


def peers(conn: Conn) -> list[Peer]:
    rows = conn.execute(
        f"SELECT node_id, epoch, expires_at - {_NOW}, printers, lost, views FROM nodes "
        "ORDER BY node_id"
    ).fetchall()
    return [
        Peer(
            str(n), int(e), float(left), tuple(orjson.loads(p)), bool(lost), tuple(orjson.loads(v))
        )
        for n, e, left, p, lost, v in rows
    ]


# ---------------------------------------------------------------------- in every write


def begin(conn: Conn, me: Membership) -> None:
    """The start of each of ``me``'s write transactions (see the module docstring):
    the order lock, the fence, the wake-up. Raises ``Fenced`` when ``me`` lost its lease."""
    conn.execute("SELECT pg_advisory_xact_lock(?)", (ORDER_LOCK,))
    row = conn.execute(
        "SELECT epoch, lost FROM nodes WHERE node_id = ? FOR SHARE", (me.node,)
    ).fetchone()
    if row is None or int(row[0]) != me.epoch or row[1]:
        raise Fenced(
            f"daemon {me.node} lost its lease (another daemon took its jobs over): "
            "nothing was stored; it re-reads the farm before acting again"
        )
    conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, me.node))


def claim(conn: Conn, job_id: str) -> None:
    """Lock queued ``job_id`` for the transaction moving it to printing, skipping it if
    another transaction holds it: ``StaleWrite`` when it is held, or no longer queued."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE id = ? AND state = 'queued' FOR UPDATE SKIP LOCKED",
        (job_id,),
    ).fetchone()
    if row is None:
        raise StaleWrite(f"job {job_id} was claimed by another daemon: nothing was stored")


def fence(conn: Conn, node: str, epoch: int) -> None:
    """Mark ``node``'s lease lost (and end its epoch) if it is still ``epoch`` and expired:
    the takeover of its jobs commits with this, or not at all (``StaleWrite``: the node
    renewed, rejoined, or another daemon took it over first)."""
    cur = conn.execute(
        "UPDATE nodes SET epoch = epoch + 1, lost = 1 "
        f"WHERE node_id = ? AND epoch = ? AND lost = 0 AND expires_at < {_NOW}",
        (node, epoch),
    )
    if cur.rowcount != 1:
        raise StaleWrite(f"node {node} renewed its lease or was taken over already")


# ---------------------------------------------------------------------- the feed


def events_after(conn: Conn, after: int, limit: int = 1000) -> list[tuple[Event, str | None]]:
    """Events with ``seq > after`` in order, each with the node that appended it."""
    rows: list[Any] = conn.execute(
        f"SELECT {events.COLUMNS}, node FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(events.from_row(r[:-1]), r[-1]) for r in rows]
