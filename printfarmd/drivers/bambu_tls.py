"""TLS for Bambu Lab printers in LAN mode: certificate pinning and implicit FTPS.

A Bambu printer presents its own certificate (issued to its serial number by Bambu
Lab's device CA, not by a public one) on MQTT (8883) and FTPS (990). printfarmd pins
it: on first contact the SHA-256 fingerprint of the certificate each service presents
is stored (trust on first use) in ``<data dir>/bambu/<printer id>.json``; later a
different certificate is refused with ``CertificateChanged`` before a single byte of
the access code is sent. A configured ``ca_fingerprint`` is the pin for both services
instead (nothing is stored then).

The check runs inside the TLS handshake: ``PinningContext`` is an ``ssl.SSLContext``
whose sockets (``sslsocket_class``) compare the peer certificate as soon as the
handshake completes, so it works for paho-mqtt (which calls ``do_handshake``) and
for ``ftplib`` alike. Blocking: used from worker threads only.

``ImplicitFTPS`` is ``ftplib.FTP_TLS`` speaking TLS from the first byte (port 990, no
``AUTH TLS``), with data connections that reuse the control connection's TLS session
(the printers' FTP server refuses data connections that do not).
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("printfarmd.drivers.bambu")

_HEX64 = re.compile(r"[0-9A-F]{64}")
SERVICES = ("mqtt", "ftps")


class CertificateChanged(ssl.SSLError):
    """The printer presented a certificate other than the pinned one.

    ``str(exc)`` is safe to show an operator (fingerprints, no paths).
    """

    def __init__(self, service: str, pinned: str, presented: str) -> None:
        self.service = service
        self.pinned = pinned
        self.presented = presented
        super().__init__(
            f"{service} certificate changed: pinned SHA-256 {short(pinned)}, "
            f"presented {short(presented)}; refused"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def normalize_fingerprint(text: str) -> str | None:
    """``"ab:cd:..."`` or ``"ABCD..."`` -> 64 upper-case hex digits; ``None`` if it is
    not a SHA-256 fingerprint. Pure."""
    value = re.sub(r"[\s:]", "", text).upper()
    return value if _HEX64.fullmatch(value) else None


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, 64 upper-case hex digits. Pure."""
    return hashlib.sha256(der).hexdigest().upper()


def short(fp: str) -> str:
    """``AB:CD:EF:...:12:34`` (the first and last four bytes), for messages. Pure."""
    pairs = [fp[i : i + 2] for i in range(0, len(fp), 2)]
    return ":".join(pairs[:4]) + ":...:" + ":".join(pairs[-4:]) if len(pairs) > 8 else fp


class PinStore:
    """The pinned fingerprints of one printer, by service (thread-safe).

    ``path`` is the JSON file; ``override`` (a normalized fingerprint) replaces the
    file for every service. ``path=None`` keeps pins in memory only.
    """

    def __init__(self, path: Path | None, *, serial: str, override: str | None = None) -> None:
        self.path = path
        self.serial = serial
        self.override = override
        self._lock = threading.Lock()
        self._pins: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._pins is not None:
            return self._pins
        pins: dict[str, str] = {}
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                data = {}
            except (OSError, ValueError) as exc:
                # Unreadable: refuse rather than trust whatever answers now.
                raise ssl.SSLError(f"certificate pins unreadable: {exc}") from None
            if isinstance(data, dict) and data.get("serial") in (None, self.serial):
                for service in SERVICES:
                    value = data.get(service)
                    fp = normalize_fingerprint(value) if isinstance(value, str) else None
                    if fp is not None:
                        pins[service] = fp
        self._pins = pins
        return pins

    def pinned(self, service: str) -> str | None:
        if self.override is not None:
            return self.override
        with self._lock:
            return self._load().get(service)

    def check(self, service: str, der: bytes) -> None:
        """Accept ``der`` for ``service`` (pinning it on first use) or raise
        ``CertificateChanged``. Blocking (may write the pin file)."""
        presented = fingerprint(der)
        if self.override is not None:
            if presented != self.override:
                raise CertificateChanged(service, self.override, presented)
            return
        with self._lock:
            pins = self._load()
            pinned = pins.get(service)
            if pinned is None:
                pins[service] = presented
                self._save(pins)
                log.warning(
                    "bambu printer certificate pinned on first contact",
                    extra={"service": service, "fingerprint": presented, "pins": str(self.path)},
                )
                return
        if pinned != presented:
            log.error(
                "bambu printer certificate changed: refused",
                extra={
                    "service": service,
                    "pinned": pinned,
                    "presented": presented,
                    "pins": str(self.path),
                    "hint": "if the printer was replaced or reset, delete the pins file "
                    "or set ca_fingerprint",
                },
            )
            raise CertificateChanged(service, pinned, presented)

    def _save(self, pins: dict[str, str]) -> None:
        if self.path is None:
            return
        data = {"serial": self.serial, **pins}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pins-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class _PinnedSocket(ssl.SSLSocket):
    """An SSLSocket that checks its peer against the context's pins after the handshake."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        if not isinstance(context, PinningContext):
            return
        der = self.getpeercert(binary_form=True)
        try:
            if der is None:
                raise ssl.SSLError("the printer presented no certificate")
            context.pins.check(context.service, der)
        except BaseException:
            self.close()
            raise


class PinningContext(ssl.SSLContext):
    """A client context that trusts exactly the pinned certificate of ``service``.

    Chain and host name are not checked (the printer's CA is not a public one and it
    is reached by address); the fingerprint is, during the handshake.
    """

    pins: PinStore
    service: str

    def __new__(cls, pins: PinStore, service: str) -> PinningContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, pins: PinStore, service: str) -> None:
        # ssl.SSLContext is set up in __new__; it has no __init__ of its own to call.
        self.pins = pins
        self.service = service
        self.check_hostname = False
        self.verify_mode = ssl.CERT_NONE
        self.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sslsocket_class = _PinnedSocket


class ImplicitFTPS(ftplib.FTP_TLS):
    """FTPS with TLS from the first byte (implicit, port 990). Blocking."""

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: tuple[str, int] | None = None,
    ) -> str:
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        raw = socket.create_connection(
            (self.host, self.port), self.timeout, source_address=self.source_address
        )
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        # Always over TLS (the control connection is TLS from the first byte).
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            try:
                conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            except BaseException:
                conn.close()
                raise
        return conn, size


def open_ftps(
    host: str, port: int, access_code: str, context: PinningContext, timeout: float
) -> ImplicitFTPS:
    """Connect and log in as ``bblp`` with protected data connections. Blocking.

    Raises ``OSError`` (``ssl.SSLError``, ``CertificateChanged``) or ``ftplib.Error``.
    """
    ftp = ImplicitFTPS(context=context, timeout=timeout)
    try:
        ftp.connect(host, port)
        ftp.login("bblp", access_code)
        ftp.prot_p()
    except BaseException:
        _close_quietly(ftp)
        raise
    return ftp


def _close_quietly(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(OSError):
        ftp.close()


def close_ftps(ftp: ftplib.FTP) -> None:
    """Say goodbye (QUIT) if the link still works, and close. Blocking, never raises."""
    with contextlib.suppress(OSError, ftplib.Error, EOFError):
        ftp.quit()
    _close_quietly(ftp)


def ftp_reply_code(exc: BaseException) -> str:
    """The three-digit reply code of an ``ftplib`` error (``""`` for other errors)."""
    text: Any = exc.args[0] if exc.args else ""
    return str(text)[:3] if isinstance(exc, ftplib.Error) else ""
