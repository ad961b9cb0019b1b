"""Printer drivers: the simulator (and, later, Klipper via Moonraker, MQTT printers)."""

from __future__ import annotations

from printfarmd.config import PrinterConfig
from printfarmd.drivers.base import PrinterDriver


def make_driver(printer: PrinterConfig) -> PrinterDriver:
    """The driver for ``printer`` as configured. Raises ValueError for an unknown driver
    (config validation rejects those first)."""
    if printer.driver == "simulator":
        from printfarmd.drivers.simulator import SimulatedPrinter

        return SimulatedPrinter(printer.id, printer.simulator)
    if printer.driver == "moonraker":
        from printfarmd.drivers.moonraker import MoonrakerDriver

        return MoonrakerDriver(printer.id, printer.moonraker)
    raise ValueError(f"unknown driver {printer.driver!r}")
