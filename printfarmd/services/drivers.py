"""The printers' drivers as running tasks: started, stopped (a reload), restarted when
one fails, and their reports forwarded to the owner as inputs."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from printfarmd.core.farm.inputs import Input, Report
from printfarmd.drivers.base import DriverEvent, PrinterDriver, StatusReport
from printfarmd.models import PrinterState

log = logging.getLogger("printfarmd.drivers")

#: Seconds before a driver whose task failed is started again.
RESTART_DELAY = 5.0


class DriverHost:
    """Owns the driver tasks. ``post`` sends an input to the owner (never blocks)."""

    def __init__(self, post: Callable[[Input], None]) -> None:
        self._post = post
        self.drivers: dict[str, PrinterDriver] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._send, self._recv = trio.open_memory_channel[DriverEvent](math.inf)
        self.nursery: trio.Nursery | None = None

    def driver(self, printer_id: str) -> PrinterDriver | None:
        return self.drivers.get(printer_id)

    def register(self, printer_id: str, driver: PrinterDriver) -> None:
        """Make ``driver`` the one for ``printer_id`` (started by ``start``)."""
        self.drivers[printer_id] = driver

    def start(self, printer_id: str) -> None:
        """Run the registered driver of ``printer_id`` (sync: spawns its task)."""
        driver = self.drivers.get(printer_id)
        if driver is None or printer_id in self._scopes or self.nursery is None:
            return
        scope = trio.CancelScope()
        self._scopes[printer_id] = scope
        self.nursery.start_soon(self._run, printer_id, driver, scope)

    def stop(self, printer_id: str) -> None:
        scope = self._scopes.pop(printer_id, None)
        if scope is not None:
            scope.cancel()
        self.drivers.pop(printer_id, None)

    async def forward(self) -> None:
        """Reports from every driver, in order, to the owner."""
        async for event in self._recv:
            self._post(Report(event))

    async def _run(self, printer_id: str, driver: PrinterDriver, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await driver.run(self._send.clone())
                except Exception as exc:
                    # A driver must never take the daemon down: report the printer
                    # offline, then try again.
                    log.error(
                        "printer driver failed; restarting it",
                        extra={"printer": printer_id, "reason": repr(exc)},
                    )
                    self._post(
                        Report(
                            StatusReport(printer_id, PrinterState.OFFLINE, message="driver failed")
                        )
                    )
                else:
                    log.error(
                        "printer driver stopped; restarting it", extra={"printer": printer_id}
                    )
                await trio.sleep(RESTART_DELAY)
