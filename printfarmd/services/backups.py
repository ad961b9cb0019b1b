"""Periodic online backups into ``<data_dir>/backups``, keeping the newest ``keep``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from printfarmd.errors import FarmError
from printfarmd.store.store import Store

log = logging.getLogger("printfarmd.backups")

PREFIX = "printfarmd-"


def backup_name(now: float) -> str:
    return PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + ".db"


def prune(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` periodic backups; returns what was removed."""
    backups = sorted(folder.glob(PREFIX + "*.db"))
    doomed = backups[:-keep] if keep > 0 else backups
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


class Backups:
    def __init__(self, store: Store, folder: Path, interval: float, keep: int) -> None:
        self.store = store
        self.folder = folder
        self.interval = interval
        self.keep = keep
        self.made: list[Path] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Back up every ``interval`` seconds (never if 0). Failures are logged, not fatal."""
        task_status.started()
        if self.interval <= 0:
            return
        while True:
            await trio.sleep(self.interval)
            await self.backup_now()

    async def backup_now(self) -> Path | None:
        dest = self.folder / backup_name(time.time())
        try:
            await self.store.backup_to(dest)
        except FarmError as exc:
            log.error("backup failed", extra={"path": dest.name, "reason": exc.message})
            return None
        self.made.append(dest)
        await trio.to_thread.run_sync(prune, self.folder, self.keep)
        log.info("backup written", extra={"path": dest.name})
        return dest
