"""What route handlers reach: the services, found on the current app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio
from quart import current_app, request

from printfarmd.api.auth import Access
from printfarmd.api.front import CLIENT_KEY, client_of
from printfarmd.config import Config
from printfarmd.errors import Conflict
from printfarmd.services.bus import Bus
from printfarmd.services.owner import Owner
from printfarmd.services.spoolman import SpoolmanService
from printfarmd.store.store import Store

if TYPE_CHECKING:  # issue 17: psycopg is imported only when a cluster is configured
    from printfarmd.services.cluster import Cluster

APP_KEY = "PRINTFARMD_SERVICES"


@attrs.frozen
class Services:
    config: Config
    store: Store
    bus: Bus
    owner: Owner
    #: (issue 16) The Spoolman client, when ``spoolman.url`` is set.
    spoolman: SpoolmanService | None = None
    #: (issue 18) This daemon's part in a cluster (``server.node_id``), or None.
    cluster: Cluster | None = None
    #: Set when the daemon begins to stop: new requests are refused with 503.
    stopping: trio.Event = attrs.field(factory=trio.Event)
    #: Who may come in (issue 9): the key's digest, trusted networks and proxies, tokens,
    #: back-off. Updated in place on SIGHUP; ``config.server`` keeps the start-up values.
    access: Access = attrs.field(
        default=attrs.Factory(lambda self: Access(self.config.server), takes_self=True)
    )


def services() -> Services:
    svc: Services = current_app.config[APP_KEY]
    return svc


def client_address() -> str | None:
    """The current request's client address: the TCP peer, or what a trusted proxy
    forwarded (``server.trusted_proxies``); used for trust, tokens, back-off and logs.
    Worked out once, by the front (``api/front.py``)."""
    scope = request.scope
    if CLIENT_KEY in scope:
        return client_of(scope)
    return services().access.client(request.remote_addr, request.headers.get("X-Forwarded-For"))


def remote_printer(printer_id: str) -> dict[str, Any] | None:
    """(issue 18) ``printer_id`` as another daemon of the cluster last showed it, when
    that daemon (not this one) drives it; else None."""
    svc = services()
    if svc.cluster is None or printer_id in svc.owner.printers:
        return None
    return svc.cluster.remote(printer_id)


def local_printer(printer_id: str) -> None:
    """(issue 18) ``Conflict`` when another daemon of the cluster drives ``printer_id``:
    only that daemon can act on it (it is listed here, not driven here)."""
    view = remote_printer(printer_id)
    if view is not None:
        raise Conflict(
            f"printer {printer_id} is driven by daemon {view['node']} of this farm: "
            "send this to that daemon"
        )
