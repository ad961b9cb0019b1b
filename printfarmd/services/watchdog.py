"""The periodic loop around ``core.watchdog``: every ``interval`` seconds (trio clock),
ask the owner to sweep for printing jobs with no progress for ``stale_threshold``."""

from __future__ import annotations

import logging

import trio

from printfarmd.config import WatchdogConfig
from printfarmd.errors import FarmError
from printfarmd.services.owner import Owner

log = logging.getLogger("printfarmd.watchdog")


class Watchdog:
    def __init__(self, owner: Owner, config: WatchdogConfig) -> None:
        self.owner = owner
        self.config = config
        self.sweeps = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep forever; a sweep that cannot be stored is retried at the next tick."""
        task_status.started()
        while True:
            await trio.sleep(self.config.interval)
            try:
                await self.owner.watchdog_sweep(self.config.stale_threshold)
            except FarmError as exc:
                log.error("watchdog sweep not stored", extra={"reason": exc.message})
            self.sweeps += 1
