"""What route handlers reach: the services, found on the current app."""

from __future__ import annotations

import attrs
import trio
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
    #: Set when the daemon begins to stop: new requests are refused with 503.
    stopping: trio.Event = attrs.field(factory=trio.Event)


def services() -> Services:
    svc: Services = current_app.config[APP_KEY]
    return svc
