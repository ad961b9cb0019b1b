"""Printer drivers: the simulator, Klipper via Moonraker, MQTT printers, OctoPrint,
PrusaLink and Bambu Lab."""

from __future__ import annotations

from typing import TYPE_CHECKING

from printfarmd.config import PrinterConfig
from printfarmd.drivers.base import PrinterDriver

if TYPE_CHECKING:
    from printfarmd.drivers.mqtt import MqttHub


def make_driver(printer: PrinterConfig, *, mqtt_hub: MqttHub | None = None) -> PrinterDriver:
    """The driver for ``printer`` as configured. Raises ValueError for an unknown driver
    (config validation rejects those first) or an MQTT printer without ``mqtt_hub``."""
    if printer.driver == "simulator":
        from printfarmd.drivers.simulator import SimulatedPrinter

        return SimulatedPrinter(printer.id, printer.simulator)
    if printer.driver == "moonraker":
        from printfarmd.drivers.moonraker import MoonrakerDriver

        return MoonrakerDriver(printer.id, printer.moonraker)
    if printer.driver == "octoprint":
        from printfarmd.drivers.octoprint import OctoPrintDriver

        return OctoPrintDriver(printer.id, printer.octoprint)
    if printer.driver == "prusalink":
        from printfarmd.drivers.prusalink import PrusaLinkDriver

        return PrusaLinkDriver(printer.id, printer.prusalink)
    if printer.driver == "bambu":
        from printfarmd.drivers.bambu import BambuDriver

        return BambuDriver(printer.id, printer.bambu)
    if printer.driver == "mqtt":
        if mqtt_hub is None:
            raise ValueError(f"printer {printer.id} uses MQTT but no broker is configured")
        return mqtt_hub.driver_for(printer)
    raise ValueError(f"unknown driver {printer.driver!r}")
