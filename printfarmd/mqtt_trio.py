"""paho-mqtt 2.x driven natively from trio (asyncio-mqtt does not run on trio).

``MqttLink`` owns one paho client and keeps it connected: it runs paho's external-loop
API (``loop_read``/``loop_write``/``loop_misc``) around ``trio.lowlevel.wait_readable``
and ``wait_writable``, reconnects with capped exponential backoff, subscribes again on
every connect (a broker without persistence forgets sessions), and lets paho's
keepalive catch half-open links (``loop_misc`` closes a link whose PINGRESP is late).

Deliveries are at-least-once (QoS 1): consumers must be idempotent. ``publish`` never
blocks: QoS 1 messages published while disconnected are queued by paho and sent after
the next connect.

paho calls its callbacks on the thread that called into it. Only the blocking connect
runs in a worker thread; callbacks that fire there hop back with
``TrioToken.run_sync_soon``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

log = logging.getLogger("printfarmd.mqtt")

#: Seconds between ``loop_misc`` calls (keepalive pings, ping timeouts, retries).
MISC_INTERVAL = 0.5


class MqttSettings(msgspec.Struct, frozen=True):
    """How to reach the broker. ``tls`` turns TLS on (``ca_certs`` empty = system CAs)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password: str = ""
    keepalive: int = 30
    tls: bool = False
    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    tls_insecure: bool = False
    backoff_initial: float = 1.0
    backoff_max: float = 30.0


class Message(msgspec.Struct, frozen=True):
    """One received message."""

    topic: str
    payload: bytes
    retain: bool = False


def backoff_delays(initial: float, cap: float) -> Callable[[], float]:
    """A function returning ``initial, 2*initial, ...`` capped at ``cap``. Pure."""
    state = {"next": initial}

    def step() -> float:
        delay = state["next"]
        state["next"] = min(delay * 2, cap)
        return delay

    return step


class MqttLink:
    """One broker connection. Construct, then ``await nursery.start(link.run)``.

    ``subscriptions`` are (topic filter, qos) pairs subscribed on every connect.
    ``on_message`` is called on the trio thread for every message (must not block).
    ``on_state`` is called with ``True``/``False`` when the link comes up/goes down.
    ``on_connect_error`` is called on the trio thread with the reason when a connect
    fails (TCP, TLS) or the broker refuses it (CONNACK), e.g. a wrong password.
    ``ssl_context`` replaces the TLS settings of ``settings`` with a context of the
    caller's (e.g. one that pins a certificate); it turns TLS on.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[Message], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        on_connect_error: Callable[[str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_state = on_state
        self._on_connect_error = on_connect_error
        self._ssl_context = ssl_context
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_thread = threading.get_ident()
        self._write_wanted = trio.Event()
        self._lost = trio.Event()
        self.connected = False
        self.connects = 0
        self._configured = False
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=not s.client_id,
        )
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if self._ssl_context is not None:
            client.tls_set_context(self._ssl_context)
        elif s.tls:
            client.tls_set(
                ca_certs=s.ca_certs or None,
                certfile=s.certfile or None,
                keyfile=s.keyfile or None,
                cert_reqs=ssl.CERT_NONE if s.tls_insecure else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(s.tls_insecure)
        # The queue of QoS 1 messages waiting for a connection is unbounded by default.
        client.max_inflight_messages_set(100)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_socket_close = self._handle_socket_close
        client.on_socket_register_write = self._handle_register_write
        client.on_socket_unregister_write = self._handle_unregister_write
        return client

    # -- paho callbacks (any thread) -------------------------------------------------

    def _on_trio(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the trio thread: now if we are on it, else soon."""
        if threading.get_ident() == self._trio_thread or self._token is None:
            fn()
        else:
            self._token.run_sync_soon(fn)

    def _handle_connect(
        self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt broker refused the connection", extra={"reason": str(reason)})
            self._connect_error(f"refused: {reason}")
            return
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos)

        def up() -> None:
            self.connected = True
            self.connects += 1
            log.info(
                "mqtt connected", extra={"broker": f"{self.settings.host}:{self.settings.port}"}
            )
            if self._on_state is not None:
                self._on_state(True)

        self._on_trio(up)

    def _connect_error(self, reason: str) -> None:
        callback = self._on_connect_error
        if callback is None:
            return

        def tell() -> None:
            try:
                callback(reason)
            except Exception:
                log.exception("mqtt connect-error handler failed")

        self._on_trio(tell)

    def _handle_disconnect(
        self, _client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        def down() -> None:
            was = self.connected
            self.connected = False
            self._lost.set()
            if was:
                log.warning("mqtt disconnected", extra={"reason": str(reason)})
                if self._on_state is not None:
                    self._on_state(False)

        self._on_trio(down)

    def _handle_message(self, _client: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain))
        cb = self._on_message

        def deliver() -> None:
            try:
                cb(message)
            except Exception:
                # A consumer bug must not kill the link: log it and carry on.
                log.exception("mqtt message handler failed", extra={"topic": message.topic})

        self._on_trio(deliver)

    def _handle_socket_close(self, _client: paho.Client, _ud: Any, sock: Any) -> None:
        # trio must hear of a close before it happens, or a task waiting on it hangs.
        if threading.get_ident() == self._trio_thread:
            trio.lowlevel.notify_closing(sock)

    def _handle_register_write(self, _client: paho.Client, _ud: Any, _sock: Any) -> None:
        self._on_trio(self._write_wanted.set)

    def _handle_unregister_write(self, _client: paho.Client, _ud: Any, _sock: Any) -> None:
        pass

    # -- public API ------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; sent now if connected, else after the next connect (QoS >= 1).

        Not a checkpoint. Must be called on the trio thread.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("mqtt publish refused", extra={"topic": topic, "rc": int(info.rc)})

    async def publish_acked(self, topic: str, payload: bytes, *, within: float = 10.0) -> None:
        """Publish with QoS 1 and return once the broker acknowledged it (PUBACK).

        Raises ``OSError`` if it was refused or not acknowledged within ``within`` seconds
        (the message stays queued in the client and may still go out later). Checkpoint.
        """
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise OSError(f"MQTT publish refused (rc {int(info.rc)})")
        with trio.move_on_after(within):
            while True:
                # paho raises while disconnected: keep waiting for the reconnect.
                with contextlib.suppress(RuntimeError, ValueError):
                    if info.is_published():
                        return
                await trio.sleep(0.02)
        raise OSError(f"MQTT broker did not acknowledge within {within:g} s")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect with backoff until cancelled.

        Calls ``task_status.started()`` after the first connection attempt (successful
        or not): a broker that is down must not stop the daemon from starting.
        """
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        s = self.settings
        delays = backoff_delays(s.backoff_initial, s.backoff_max)
        started = False
        try:
            while True:
                sock = await self._connect()
                if not started:
                    task_status.started()
                    started = True
                if sock is not None:
                    await self._serve(sock)
                    if self.connects:
                        delays = backoff_delays(s.backoff_initial, s.backoff_max)
                await trio.sleep(delays())
        finally:
            self._close()

    def _close(self) -> None:
        """Say goodbye to the broker if we can, and close the socket. Not a checkpoint."""
        open_sock = self._client.socket()
        if open_sock is not None:
            trio.lowlevel.notify_closing(open_sock)
        self._client.on_socket_close = None
        self._client.on_disconnect = None
        try:
            self._client.disconnect()
            self._client.loop_write()
        except (OSError, ValueError) as exc:
            log.debug("mqtt goodbye failed", extra={"reason": str(exc)})
        open_sock = self._client.socket()
        if open_sock is not None:
            open_sock.close()

    async def _connect(self) -> socket.socket | None:
        s = self.settings
        self._lost = trio.Event()
        try:
            if not self._configured:
                self._configured = True
                await trio.to_thread.run_sync(
                    lambda: self._client.connect(s.host, s.port, s.keepalive)
                )
            else:
                await trio.to_thread.run_sync(self._client.reconnect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning(
                "mqtt connect failed", extra={"broker": f"{s.host}:{s.port}", "reason": reason}
            )
            self._connect_error(reason)
            return None
        sock = self._client.socket()
        return sock if isinstance(sock, socket.socket) else None

    async def _serve(self, sock: socket.socket) -> None:
        """Run paho's loop on ``sock`` until the link is lost."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, sock, nursery.cancel_scope)
            nursery.start_soon(self._writer, sock, nursery.cancel_scope)
            nursery.start_soon(self._misc, nursery.cancel_scope)
            await self._lost.wait()
            nursery.cancel_scope.cancel()
        if self.connected:
            self.connected = False
            if self._on_state is not None:
                self._on_state(False)

    def _gone(self, sock: socket.socket) -> bool:
        return self._client.socket() is not sock or self._lost.is_set()

    def _step(self, call: Callable[[], MQTTErrorCode]) -> MQTTErrorCode:
        """One paho loop call; an exception from the socket or TLS layer is a lost link,
        never a crashed task."""
        try:
            return call()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("mqtt link error", extra={"reason": str(exc) or type(exc).__name__})
            return MQTTErrorCode.MQTT_ERR_CONN_LOST

    async def _reader(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        while not self._gone(sock):
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                break
            if self._gone(sock):
                break
            rc = self._step(self._client.loop_read)
            # With TLS, decrypted bytes may wait inside the SSL object, invisible to select.
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and _pending(sock) > 0:
                rc = self._step(self._client.loop_read)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._lost.set()
        scope.cancel()

    async def _writer(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        while not self._gone(sock):
            if not self._client.want_write():
                self._write_wanted = trio.Event()
                if not self._client.want_write():
                    await self._write_wanted.wait()
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                break
            if self._gone(sock):
                break
            rc = self._step(self._client.loop_write)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._lost.set()
        scope.cancel()

    async def _misc(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(MISC_INTERVAL)
            rc = self._step(self._client.loop_misc)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
                scope.cancel()
                return
            if self._client.want_write():
                self._write_wanted.set()


def _pending(sock: socket.socket) -> int:
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0
