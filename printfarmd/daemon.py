"""The daemon: start-up order, signals, graceful shutdown.

Start order:
1. bind the HTTP socket — a taken port exits 2 with one line naming the port and the
   likely cause, having touched nothing;
2. open the store (integrity check, migrations);
3. the notifier (resumes pending escalations) and the MQTT hub, then the owner: it
   restores the farm from the store and takes inputs; printers' drivers start;
4. serve HTTP on the bound socket (``/api/health`` says ``starting``);
5. reconciliation: every printer's first report is decided, concurrently, under one
   deadline; then dispatch begins, health says ``ok`` and systemd hears READY=1.

SIGTERM/SIGINT: stop accepting connections, end streams, let in-flight requests finish
(at most ``GRACE`` seconds), then cancel everything; a commit in progress always
completes first (the owner's commit is shielded).
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve

from printfarmd import heap, sdnotify, wirelog
from printfarmd.api.app import create_app
from printfarmd.api.context import Services
from printfarmd.api.moonraker import ws
from printfarmd.config import Config, load_config
from printfarmd.core.farm.inputs import JobRequest
from printfarmd.drivers import make_driver
from printfarmd.errors import ConfigError, DatabaseDamaged, FarmError, StorageBusy
from printfarmd.logs import setup_logging
from printfarmd.services import files
from printfarmd.services.backups import Backups
from printfarmd.services.bus import Bus
from printfarmd.services.notifier import Notifier
from printfarmd.services.owner import Owner
from printfarmd.services.retention import Retention
from printfarmd.services.spoolman import SpoolmanService
from printfarmd.services.watchdog import Watchdog
from printfarmd.store import Store, open_backend

if TYPE_CHECKING:
    from printfarmd.drivers.mqtt import MqttHub

log = logging.getLogger("printfarmd")

_E = TypeVar("_E", bound=FarmError)

GRACE = 3.0
DB_NAME = "printfarmd.db"
EXIT_DAMAGED_DB = 3
#: issue 18: the configured PostgreSQL database could not be reached at start.
EXIT_NO_DATABASE = 4
EXIT_PORT_TAKEN = 2
#: A bug ended the process (EX_SOFTWARE).
EXIT_BUG = 70
BACKLOG = 512


class Running(msgspec.Struct, frozen=True):
    """What ``run`` reports when serving."""

    urls: tuple[str, ...]
    services: Services


class PortTaken(Exception):
    """The HTTP port cannot be bound; ``message`` is the one line to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else happens (``PortTaken``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            hint = " (Moonraker's default port: is Moonraker running on this machine?)"
            raise PortTaken(
                f"port {where} is already in use{hint if port == 7125 else ''}; "
                "stop that program or set server.port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortTaken(
                f"address {host} is not an address of this machine (server.host)"
            ) from None
        if exc.errno == errno.EACCES:
            raise PortTaken(
                f"not allowed to listen on {where} (ports below 1024 need privileges)"
            ) from None
        raise PortTaken(f"cannot listen on {where}: {exc.strerror}") from None
    return sock


async def run(
    config: Config,
    *,
    stop: trio.Event | None = None,
    config_path: Path | None = None,
    on_ready: Callable[[], object] | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the farm until ``stop`` is set or SIGTERM/SIGINT arrives.

    Reports ``Running`` once HTTP is served (health may still say ``starting``); calls
    ``on_ready`` once dispatch runs (``serve``: ``heap.settle``, issue 17).
    SIGHUP re-reads ``config_path`` (when given) and applies its printers and access
    rules. Raises ``PortTaken`` (nothing touched) or ``DatabaseDamaged`` before serving.
    """
    stop = stop if stop is not None else trio.Event()
    listener = _bind(config.server.host, config.server.port)
    try:
        config.data_path.mkdir(parents=True, exist_ok=True)
        config.gcodes_path.mkdir(parents=True, exist_ok=True)
        async with open_backend(
            config.storage.backend.value,
            path=config.data_path / DB_NAME,
            dsn=config.storage.dsn,
            synchronous=config.storage.synchronous.value,
            node=config.server.node_id,
        ) as store:
            await _run(config, store, listener, stop, config_path, on_ready, task_status)
    finally:
        listener.close()
    log.info("stopped")


async def _run(
    config: Config,
    store: Store,
    listener: socket.socket,
    stop: trio.Event,
    config_path: Path | None,
    on_ready: Callable[[], object] | None,
    task_status: trio.TaskStatus[Running],
) -> None:
    bus = Bus()
    # One broker link for every MQTT printer (issue 4); None when MQTT is off. Imported
    # only then (issue 17: nothing the first request does not need).
    mqtt_hub: MqttHub | None = None
    if config.mqtt.host.strip():
        from printfarmd.drivers.mqtt import open_mqtt_hub

        mqtt_hub = open_mqtt_hub(config)
    drivers = {p.id: make_driver(p, mqtt_hub=mqtt_hub) for p in config.printers}
    owner = Owner(config=config, store=store, bus=bus, drivers=drivers)
    notifier = Notifier(
        config=config.notify,
        store=store,
        mqtt=mqtt_hub.events if mqtt_hub else None,
        currency=config.cost.currency,
    )
    owner.effects.escalate = notifier.escalate
    owner.effects.maintenance_due = notifier.maintenance_due  # issue 16
    spoolman = None
    if config.spoolman.url:  # issue 16: the filament inventory
        spoolman = SpoolmanService(
            config=config.spoolman,
            store=store,
            post=owner.post,
            bound=owner.bound_spools,
            # issue 18: in a cluster each daemon reports the usage of its own printers
            mine=(lambda: owner.printers.keys()) if config.server.node_id else None,
        )
        owner.spoolman = spoolman
        owner.effects.spoolman_kick = spoolman.kick
    cluster = None
    if config.server.node_id:
        # issue 18: one daemon of several sharing the farm; psycopg is loaded by now.
        from printfarmd.services.cluster import Cluster
        from printfarmd.store.postgresql import PgStore

        assert isinstance(store, PgStore)  # the configuration allows no other
        from printfarmd.api.printers import printer_dicts

        cluster = Cluster(store=store, owner=owner, lease=config.server.lease_seconds)
        cluster.views = lambda: printer_dicts(owner)  # listed by the other daemons
        await cluster.join()  # before the owner reads the farm
    svc = Services(
        config=config, store=store, bus=bus, owner=owner, spoolman=spoolman, cluster=cluster
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, stop)
        # Before the owner: its start-up may already escalate.
        await nursery.start(notifier.run)
        if mqtt_hub is not None:
            # Before the owner: its MQTT drivers are fed by the hub.
            await nursery.start(mqtt_hub.run)
            mqtt_hub.set_add_printer(owner.add_printer)
        await nursery.start(owner.run)
        if cluster is not None:
            await nursery.start(cluster.run)
        if spoolman is not None:
            await nursery.start(spoolman.run)
        http_stop = trio.Event()
        http_done = trio.Event()
        hconf = _hypercorn_config(config, listener)

        async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            # From here hypercorn owns the socket (it wraps the same descriptor).
            listener.detach()
            try:
                await hypercorn_serve(
                    # issue 9: a recorder around the app only with PRINTFARMD_WIRE_LOG set
                    wirelog.wrap(create_app(svc), config.server),
                    hconf,
                    shutdown_trigger=http_stop.wait,
                    task_status=task_status,
                )
            finally:
                http_done.set()

        urls = tuple(await nursery.start(serve_http))
        nursery.start_soon(_watch_reload, config_path, svc, mqtt_hub)
        await nursery.start(Watchdog(owner, config.watchdog).run)
        backups = Backups(
            store,
            config.data_path / "backups",
            # issue 18: PostgreSQL is backed up with its own tools (pg_dump), not by us.
            config.storage.backup_interval if store.backend == "sqlite" else 0.0,
            config.storage.backup_keep,
        )
        await nursery.start(backups.run)
        await nursery.start(Retention(store, config.storage).run)
        task_status.started(Running(urls, svc))
        log.info("printfarmd serving", extra={"urls": ",".join(urls), "printers": len(drivers)})
        # Reconciliation ends at the owner's deadline at the latest.
        await owner.running.wait()
        await _submit_demo_jobs(config, owner, store)
        log.info("printfarmd ready", extra={"urls": ",".join(urls), "printers": len(drivers)})
        # issue 8: systemd Type=notify. READY once dispatch runs; the watchdog ping is a
        # round trip through the owner, so neither a wedged loop nor a stuck owner pings.
        sdnotify.notify("READY=1")
        if on_ready is not None:
            on_ready()
        # issue 17: the G-code metadata cache is filled now, in the background, so the
        # first listings and submissions find it warm; start never waits for it.
        nursery.start_soon(_warm_metadata, config.gcodes_path)
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            nursery.start_soon(sdnotify.ping_watchdog, interval, owner.ping)
        await stop.wait()
        sdnotify.notify("STOPPING=1")
        log.info("shutting down")
        svc.stopping.set()  # requests still arriving get 503, never a lost 2xx
        bus.close()
        http_stop.set()
        with trio.move_on_after(GRACE):
            await http_done.wait()
        with trio.move_on_after(GRACE):
            await owner.flush_progress()
        nursery.cancel_scope.cancel()


def _hypercorn_config(config: Config, listener: socket.socket) -> HyperConfig:
    hconf = HyperConfig()
    hconf.bind = [f"fd://{listener.fileno()}"]
    hconf.backlog = BACKLOG
    hconf.accesslog = None
    hconf.errorlog = logging.getLogger("hypercorn.error")
    hconf.graceful_timeout = GRACE
    # issue 9: an oversize websocket frame is refused (close 1009) before hypercorn
    # buffers more of it; its default would buffer 16 MiB per connection.
    hconf.websocket_max_message_size = ws.MAX_FRAME
    return hconf


async def _submit_demo_jobs(config: Config, owner: Owner, store: Store) -> None:
    """Submit ``[demo] jobs`` once: only when the database has never held a job."""
    if not config.demo.jobs or await store.max_position() > 0:
        return
    for filename in config.demo.jobs:
        try:
            await owner.submit(JobRequest(filename=filename, source="demo"))
        except FarmError as exc:
            log.error("demo job not submitted", extra={"file": filename, "reason": exc.message})


async def _warm_metadata(root: Path) -> None:
    """Parse the metadata of the G-code files under ``root`` into ``files.meta_of``'s
    cache (as many as it holds), one file at a time on a worker thread. Never raises."""
    try:
        found = await trio.to_thread.run_sync(files.list_gcodes, root)
        for stored in found[: files.META_CACHE_SIZE]:
            try:
                # The same path form a submission looks up (resolve_gcode's).
                await trio.to_thread.run_sync(files.gcode_file, root, stored.path)
            except (OSError, FarmError) as exc:  # gone meanwhile: it is read when needed
                log.debug("metadata not warmed", extra={"file": stored.path, "reason": str(exc)})
    except Exception as exc:  # a warm cache is a nicety, never a reason to stop
        log.warning("metadata cache not warmed", extra={"reason": str(exc)})


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()


async def _watch_reload(config_path: Path | None, svc: Services, mqtt_hub: MqttHub | None) -> None:
    """SIGHUP: reload the printers and the access rules (API key, trusted clients and
    proxies, CORS origins) from ``config_path``; a bad file is refused, the old kept."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            if config_path is None:
                log.warning("SIGHUP ignored: no config file to reload")
                continue
            try:
                new = await trio.to_thread.run_sync(load_config, config_path)
                svc.access.update(new.server)  # issue 9: a rotated key takes effect now
                await svc.owner.reload_printers(
                    new.printers, functools.partial(make_driver, mqtt_hub=mqtt_hub)
                )
            except (ConfigError, ValueError) as exc:
                reason = exc.message if isinstance(exc, ConfigError) else str(exc)
                log.error("config reload refused; keeping the old one", extra={"reason": reason})
            except FarmError as exc:
                log.error("config reload not applied", extra={"reason": exc.message})


def serve(config: Config, *, log_format: str | None = None, config_path: Path | None = None) -> int:
    """Run the daemon in the foreground; returns the process exit status."""
    # issue 17: what the command line loaded (under heap.loading) is kept out of every
    # later collection's walk.
    heap.keep_loaded()
    heap.limit_malloc_arenas()
    setup_logging(config.logging.level, log_format or config.logging.format.value)
    wirelog.record_logs()  # a no-op unless PRINTFARMD_WIRE_LOG is set (tests)
    try:
        # issue 17: at READY the heap is settled for a long-lived server (``heap.settle``:
        # start-up's objects frozen, the collector's young threshold raised).
        trio.run(functools.partial(run, config, config_path=config_path, on_ready=heap.settle))
    except PortTaken as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_PORT_TAKEN
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled as a stop signal
        return 0
    except Exception as exc:
        damaged = _find(exc, DatabaseDamaged)
        if damaged is not None:
            log.critical("refusing to run: %s", damaged.message)
            hint = (
                "Restore a backup (see docs/operations.md) or move the file away to start empty."
                if config.storage.backend.value == "sqlite"
                else "See docs/postgresql.md (the role needs to create tables in its schema)."
            )
            print(
                f"error: {damaged.message}\nThe database was left untouched. {hint}",
                file=sys.stderr,
            )
            return EXIT_DAMAGED_DB
        unreachable = _find(exc, StorageBusy)
        if unreachable is not None:
            # issue 18: the PostgreSQL server could not be reached at start.
            log.critical("cannot start: %s", unreachable.message)
            print(f"error: {unreachable.message}", file=sys.stderr)
            return EXIT_NO_DATABASE
        # A bug: one clear line, not a 70-line traceback.
        log.critical("printfarmd stopped by a bug: %s", _one_line(exc))
        return EXIT_BUG
    return 0


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` itself, or the first ``kind`` inside it (through exception groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _one_line(exc: BaseException) -> str:
    """The innermost error of ``exc`` (through exception groups and causes) as
    ``Type: message (file:line in function)``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        frame, line = tb.tb_frame, tb.tb_lineno
        where = f" ({Path(frame.f_code.co_filename).name}:{line} in {frame.f_code.co_name})"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc}{where}"
