"""What route handlers reach: the services, found on the current app."""

from __future__ import annotations

import attrs
from quart import current_app

from printfarmd.config import Config
from printfarmd.services.bus import Bus
from printfarmd.services.scheduler import Scheduler
from printfarmd.store.store import Store

APP_KEY = "PRINTFARMD_SERVICES"


@attrs.frozen
class Services:
    config: Config
    store: Store
    bus: Bus
    scheduler: Scheduler


def services() -> Services:
    svc: Services = current_app.config[APP_KEY]
    return svc
