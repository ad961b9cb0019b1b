"""Retention: the event log and idempotency keys are kept for a season, then pruned.

Once a day (and shortly after start) events older than ``storage.event_retention_days``
and idempotency keys older than ``storage.idempotency_retention_days`` are deleted in
small steps, so a prune never holds the writer for long. 0 keeps them forever.
"""

from __future__ import annotations

import logging
import time

import trio

from printfarmd.config import StorageConfig
from printfarmd.errors import FarmError
from printfarmd.store.store import Store

log = logging.getLogger("printfarmd.retention")

DAY = 86400.0
#: Seconds after start before the first prune (start-up has better things to do).
FIRST_DELAY = 60.0


class Retention:
    def __init__(self, store: Store, config: StorageConfig) -> None:
        self.store = store
        self.config = config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prune forever; a failed prune is logged and tried the next day."""
        task_status.started()
        if self.config.event_retention_days <= 0 and self.config.idempotency_retention_days <= 0:
            return
        await trio.sleep(FIRST_DELAY)
        while True:
            await self.prune_now()
            await trio.sleep(DAY)

    async def prune_now(self, now: float | None = None) -> tuple[int, int]:
        """Prune what is older than the retention periods; returns (events, keys)."""
        now = time.time() if now is None else now
        ev_days, key_days = self.config.event_retention_days, self.config.idempotency_retention_days
        events_before = now - ev_days * DAY if ev_days > 0 else 0.0
        keys_before = now - key_days * DAY if key_days > 0 else 0.0
        total = [0, 0]
        try:
            while True:
                n_events, n_keys = await self.store.prune(
                    events_before=events_before, keys_before=keys_before
                )
                total[0] += n_events
                total[1] += n_keys
                if n_events == 0:
                    break
                await trio.sleep(0.1)  # let other writers in between steps
        except FarmError as exc:
            log.warning("retention prune failed", extra={"reason": exc.message})
        if total != [0, 0]:
            log.info("old events and keys pruned", extra={"events": total[0], "keys": total[1]})
        return total[0], total[1]
