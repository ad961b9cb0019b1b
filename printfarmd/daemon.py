"""The daemon: start-up order, signals, graceful shutdown.

Start order: store (integrity check, migrations) -> bus -> notifier (resumes pending
escalation deliveries) -> scheduler (rebuild the queue,
start drivers, reconcile in-flight jobs) -> HTTP server. Each piece is started with
``nursery.start`` and reports ready only when it is. SIGTERM/SIGINT: stop accepting
connections, end streams, let in-flight requests finish (at most ``GRACE`` seconds),
then cancel everything; a commit in progress always completes first.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve

from printfarmd import sdnotify, wirelog
from printfarmd.api.app import create_app
from printfarmd.api.context import Services
from printfarmd.api.moonraker import ws
from printfarmd.config import Config, load_config
from printfarmd.drivers import make_driver
from printfarmd.drivers.mqtt import MqttHub, open_mqtt_hub
from printfarmd.errors import ConfigError, DatabaseDamaged, FarmError
from printfarmd.logs import setup_logging
from printfarmd.services.backups import Backups
from printfarmd.services.bus import Bus
from printfarmd.services.notifier import Notifier
from printfarmd.services.scheduler import JobRequest, Scheduler
from printfarmd.services.watchdog import Watchdog
from printfarmd.store import Store, open_store

log = logging.getLogger("printfarmd")

GRACE = 3.0
DB_NAME = "printfarmd.db"
EXIT_DAMAGED_DB = 3


@attrs.frozen
class Running:
    """What ``run`` reports when ready."""

    urls: tuple[str, ...]
    services: Services


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run(
    config: Config,
    *,
    stop: trio.Event | None = None,
    config_path: Path | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the farm until ``stop`` is set or SIGTERM/SIGINT arrives.

    SIGHUP re-reads ``config_path`` (when given) and applies its printers (issue 8).

    Raises ``DatabaseDamaged`` before serving anything if the database is damaged.
    """
    stop = stop if stop is not None else trio.Event()
    config.data_path.mkdir(parents=True, exist_ok=True)
    config.gcodes_path.mkdir(parents=True, exist_ok=True)
    async with open_store(config.data_path / DB_NAME, config.storage.synchronous.value) as store:
        bus = Bus()
        # One broker link for every MQTT printer (issue 4); None when MQTT is off.
        mqtt_hub = open_mqtt_hub(config)
        drivers = {p.id: make_driver(p, mqtt_hub=mqtt_hub) for p in config.printers}
        scheduler = Scheduler(config=config, store=store, bus=bus, drivers=drivers)
        notifier = Notifier(
            config=config.notify, store=store, mqtt=mqtt_hub.events if mqtt_hub else None
        )
        scheduler.escalate = notifier.escalate
        svc = Services(config=config, store=store, bus=bus, scheduler=scheduler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, stop)
            # Before the scheduler: its start-up reconciliation may already escalate.
            await nursery.start(notifier.run)
            if mqtt_hub is not None:
                # Before the scheduler: its MQTT drivers are fed by the hub.
                await nursery.start(mqtt_hub.run)
            await nursery.start(scheduler.run)
            nursery.start_soon(_watch_reload, config_path, svc, mqtt_hub)
            if mqtt_hub is not None:
                mqtt_hub.set_add_printer(scheduler.add_printer)
            await nursery.start(Watchdog(scheduler, config.watchdog).run)
            backups = Backups(
                store,
                config.data_path / "backups",
                config.storage.backup_interval,
                config.storage.backup_keep,
            )
            await nursery.start(backups.run)
            await _submit_demo_jobs(config, scheduler, store)
            hconf = HyperConfig()
            hconf.bind = [_bind(config.server.host, config.server.port)]
            hconf.accesslog = None
            hconf.errorlog = logging.getLogger("hypercorn.error")
            hconf.graceful_timeout = GRACE
            # issue 9: an oversize websocket frame is refused (close 1009) before hypercorn
            # buffers more of it; its default would buffer 16 MiB per connection.
            hconf.websocket_max_message_size = ws.MAX_FRAME
            http_stop = trio.Event()
            http_done = trio.Event()

            async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
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

            binds = await nursery.start(serve_http)
            urls = tuple(binds)
            log.info("printfarmd ready", extra={"urls": ",".join(urls), "printers": len(drivers)})
            task_status.started(Running(urls, svc))
            # issue 8: systemd Type=notify. READY only now that the port accepts; the
            # watchdog ping runs on this loop, so a wedged loop stops pinging.
            sdnotify.notify("READY=1")
            interval = sdnotify.watchdog_interval()
            if interval is not None:
                nursery.start_soon(sdnotify.ping_watchdog, interval, lambda: scheduler.ready)
            await stop.wait()
            sdnotify.notify("STOPPING=1")
            log.info("shutting down")
            svc.stopping.set()  # requests still arriving get 503, never a lost 2xx
            bus.close()
            http_stop.set()
            with trio.move_on_after(GRACE):
                await http_done.wait()
            await scheduler.flush_progress()
            nursery.cancel_scope.cancel()
    log.info("stopped")


async def _submit_demo_jobs(config: Config, scheduler: Scheduler, store: Store) -> None:
    """Submit ``[demo] jobs`` once: only when the database has never held a job."""
    if not config.demo.jobs or await store.max_position() > 0:
        return
    for filename in config.demo.jobs:
        try:
            await scheduler.submit(JobRequest(filename=filename, source="demo"))
        except FarmError as exc:
            log.error("demo job not submitted", extra={"file": filename, "reason": exc.message})


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
                await svc.scheduler.reload_printers(
                    new.printers, functools.partial(make_driver, mqtt_hub=mqtt_hub)
                )
            except (ConfigError, ValueError) as exc:
                reason = exc.message if isinstance(exc, ConfigError) else str(exc)
                log.error("config reload refused; keeping the old one", extra={"reason": reason})


def serve(config: Config, *, log_format: str | None = None, config_path: Path | None = None) -> int:
    """Run the daemon in the foreground; returns the process exit status."""
    setup_logging(config.logging.level, log_format or config.logging.format.value)
    wirelog.record_logs()  # a no-op unless PRINTFARMD_WIRE_LOG is set (tests)
    try:
        trio.run(functools.partial(run, config, config_path=config_path))
    except DatabaseDamaged as exc:
        log.critical("refusing to start: %s", exc.message)
        print(
            f"error: {exc.message}\nThe database was left untouched. Restore a backup "
            "(see docs/operations.md) or move the file away to start empty.",
            file=sys.stderr,
        )
        return EXIT_DAMAGED_DB
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled as a stop signal
        return 0
    return 0
