"""The scheduler's live view of one printer (owned and mutated by the scheduler only)."""

from __future__ import annotations

import attrs

from printfarmd.config import PrinterConfig
from printfarmd.drivers.base import PrinterDriver
from printfarmd.models import Capabilities, Printer, PrinterState
from printfarmd.store.store import PrinterMemory


@attrs.define(eq=False)
class PrinterSlot:
    """A printer as the scheduler tracks it.

    ``reported`` is what the driver last said; ``current_job`` is the farm's view: the
    job this printer holds in ``printing`` or ``post_process``. ``confirmed`` turns true
    once the driver has reported printing ``current_job``, so a stale idle report that
    was in flight when we dispatched is not mistaken for a lost job.
    """

    config: PrinterConfig
    driver: PrinterDriver
    capabilities: Capabilities
    reported: PrinterState = PrinterState.OFFLINE
    reported_job: str | None = None
    progress: float = 0.0
    message: str = ""
    plate_clear: bool = True
    maintenance: bool = False
    current_job: str | None = None
    confirmed: bool = False
    #: trio time at which the printer accepted ``current_job`` (None: not yet).
    start_acked_at: float | None = None
    dispatching: bool = False
    eta: float | None = None
    updated_at: float = 0.0

    @classmethod
    def from_config(cls, config: PrinterConfig, driver: PrinterDriver) -> PrinterSlot:
        caps = Capabilities(
            materials=tuple(m.upper() for m in config.materials),
            nozzle_diameter=config.nozzle_diameter,
            bed_size=config.bed_size,
            tags=tuple(config.tags),
        )
        return cls(config=config, driver=driver, capabilities=caps)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def memory(self) -> PrinterMemory:
        return PrinterMemory(plate_clear=self.plate_clear, maintenance=self.maintenance)

    @property
    def state(self) -> PrinterState:
        """The farm-level state, derived from the driver's report and our own flags."""
        if self.maintenance:
            return PrinterState.MAINTENANCE
        if self.reported is PrinterState.IDLE and (self.dispatching or self.current_job):
            # Handed a job that it has not started reporting yet.
            return PrinterState.PRINTING if self.dispatching else self._idle_state()
        if self.reported is PrinterState.IDLE:
            return self._idle_state()
        return self.reported

    def _idle_state(self) -> PrinterState:
        return PrinterState.IDLE if self.plate_clear else PrinterState.AWAITING_CLEAR

    @property
    def dispatchable(self) -> bool:
        """May be given a job now: idle, plate known clear, nothing assigned or in flight."""
        return (
            not self.maintenance
            and self.reported is PrinterState.IDLE
            and self.plate_clear
            and self.current_job is None
            and not self.dispatching
        )

    def view(self) -> Printer:
        return Printer(
            id=self.id,
            name=self.config.name or self.id,
            driver=self.config.driver,
            capabilities=self.capabilities,
            state=self.state,
            plate_clear=self.plate_clear,
            current_job=self.current_job,
            progress=self.progress,
            message=self.message,
            maintenance=self.maintenance,
            auto_clear=self.config.auto_clear,
            updated_at=self.updated_at,
        )
