"""Versioned schema steps, applied in order inside one transaction each.

``PRAGMA user_version`` records how many steps have run (on PostgreSQL, the table
``printfarmd_schema``). Steps are append-only: never edit a released step, add a new one.
A step is one text for both engines (its column types translated for PostgreSQL, see
``store/dialect.py``), or a ``Step`` with a text per engine (issue 18).
"""

from __future__ import annotations

from printfarmd.store import cluster, history, upkeep
from printfarmd.store.dialect import Step, pg_types

#: Step 3: the delivery log (PostgreSQL has no implicit ``rowid``: its listing's tie
#: break, insertion order, is a column there).
_NOTIFICATIONS = """
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        address TEXT NOT NULL,
        job_id TEXT,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        delivered_at REAL,
        next_attempt_at REAL
    );
    CREATE INDEX notifications_created ON notifications (created_at);
    CREATE INDEX notifications_job ON notifications (job_id);
    CREATE INDEX notifications_pending ON notifications (status) WHERE status = 'pending';
    """
_NOTIFICATIONS_ROWID = """
    ALTER TABLE notifications ADD COLUMN rowid BIGSERIAL;
"""

MIGRATIONS: tuple[str | Step, ...] = (
    # 1: jobs, the event log, idempotency keys, settings, printer memory.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        filename TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        position INTEGER NOT NULL,
        front INTEGER NOT NULL DEFAULT 0,
        copies INTEGER NOT NULL,
        copy_index INTEGER NOT NULL,
        group_id TEXT NOT NULL,
        name TEXT NOT NULL,
        material TEXT,
        nozzle_diameter REAL,
        required_tags TEXT NOT NULL,
        min_bed TEXT,
        sku TEXT,
        estimated_time REAL,
        printer_id TEXT,
        retry_count INTEGER NOT NULL,
        failed_printers TEXT NOT NULL,
        progress REAL NOT NULL,
        eta REAL,
        retry_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        queued_at REAL,
        started_at REAL,
        finished_at REAL,
        last_error TEXT,
        tracking TEXT,
        source TEXT NOT NULL
    );
    CREATE INDEX jobs_state ON jobs (state);
    CREATE INDEX jobs_created ON jobs (created_at);
    -- A printer holds at most one active job: the database itself refuses a second.
    CREATE UNIQUE INDEX jobs_one_active_per_printer ON jobs (printer_id)
        WHERE state IN ('printing', 'post_process');
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        at REAL NOT NULL,
        job_id TEXT REFERENCES jobs (id),
        printer_id TEXT,
        from_state TEXT,
        to_state TEXT,
        reason TEXT,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        job_ids TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE printers (
        id TEXT PRIMARY KEY,
        plate_clear INTEGER NOT NULL,
        maintenance INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 2: where a retried print may resume (the watchdog records the last position).
    """
    ALTER TABLE jobs ADD COLUMN resume_progress REAL NOT NULL DEFAULT 0;
    """,
    # 3: the notification delivery log (escalations: webhook, email, MQTT).
    # No foreign key to jobs: the log outlives whatever may one day purge old jobs.
    Step(_NOTIFICATIONS, pg_types(_NOTIFICATIONS) + _NOTIFICATIONS_ROWID),
    # 4 (issue 13): retention prunes events and idempotency keys by age.
    """
    CREATE INDEX events_at ON events (at);
    CREATE INDEX idempotency_created ON idempotency_keys (created_at);
    """,
    # 5 (issue 14): print history, one row per attempt, kept by a trigger on the event log
    # and backfilled from the events already recorded (see store/history.py).
    history.MIGRATION,
    # 6 (issue 15): a job may ask for a filament colour (#RRGGBB).
    """
    ALTER TABLE jobs ADD COLUMN colour TEXT;
    """,
    # 7 (issue 16): job filament weight, schedule and spool; spool bindings and
    # what is known of the spools; each attempt's usage and cost (the Spoolman outbox);
    # maintenance counters and the maintenance log (see store/upkeep.py).
    upkeep.MIGRATION,
    # 8 (issue 18): several daemons on one PostgreSQL database: each daemon's lease, and
    # which daemon appended each event (see store/cluster.py).
    cluster.MIGRATION,
)
