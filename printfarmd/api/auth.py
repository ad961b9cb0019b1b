"""The one authentication decision for every HTTP route and the websocket.

A request is let in by the ``X-Api-Key`` header (its SHA-256 digest compared in constant
time with the configured one), by a client address in ``server.trusted_clients``, or by a
one-shot ``?token=``. ``Access.decide`` makes that decision for REST, SSE, the dashboard,
the Moonraker facade's HTTP routes and its websocket alike. Routes that need no key are
listed in ``PUBLIC_ROUTES`` and nowhere else; a test enumerates the app's routes against it.

The client address is the TCP peer, except when the peer is one of
``server.trusted_proxies``: then it is the last address in ``X-Forwarded-For`` that is not
itself a trusted proxy. Forwarded headers from anyone else are ignored.

An address that keeps presenting wrong credentials is made to wait (HTTP 429) for a
doubling back-off; loopback is never made to wait, so the machine's own administrator
cannot be locked out.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import msgspec

#: (method, rule) pairs that answer without a key. Keep this list short.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/api/health"),
        # The dashboard shell and its assets carry no farm data; its data calls need the key.
        ("GET", "/dashboard"),
        ("GET", "/dashboard/dashboard.js"),
        ("GET", "/dashboard/dashboard.css"),
        # Moonraker's login probe: says only whether this client is trusted.
        ("GET", "/access/info"),
        # A pre-signed photo URL: the view checks its HMAC and expiry itself (403).
        ("GET", "/api/photos/low/<path:key>"),
        # issue 14: a webcam's pre-signed snapshot URL (the same HMAC as the photos').
        ("GET", "/server/webcams/snapshot/<printer_id>"),
    }
)


#: (method, rule) pairs that the config may make public (issue 8): rule -> its switch.
CONFIG_PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/metrics")})

#: The stored form of a key: ``sha256:`` and 64 lowercase hex digits.
KEY_HASH_PREFIX = "sha256:"


class _MetricsSwitch(Protocol):
    @property
    def metrics_public(self) -> bool: ...


class ServerAccess(Protocol):
    """The ``[server]`` settings the access decision reads."""

    @property
    def api_key(self) -> str: ...
    @property
    def api_key_hash(self) -> str: ...
    @property
    def trusted_clients(self) -> Sequence[str]: ...
    @property
    def trusted_proxies(self) -> Sequence[str]: ...
    @property
    def cors_domains(self) -> Sequence[str]: ...


def public_by_config(method: str, rule: str, server: _MetricsSwitch) -> bool:
    """True if the config made this route public (``server.metrics_public``)."""
    method = "GET" if method == "HEAD" else method
    return (method, rule) in CONFIG_PUBLIC_ROUTES and server.metrics_public


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of ``key``: ``sha256:<hex>``.

    A fast hash is enough because keys made by ``new_key`` carry 256 random bits: there is
    nothing to brute-force, and every request can afford to hash what it presents.
    """
    return KEY_HASH_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _digest_of(stored_hash: str) -> bytes | None:
    if not stored_hash.startswith(KEY_HASH_PREFIX):
        return None
    try:
        raw = bytes.fromhex(stored_hash.removeprefix(KEY_HASH_PREFIX))
    except ValueError:
        return None
    return raw if len(raw) == hashlib.sha256().digest_size else None


def expected_digest(api_key: str, api_key_hash: str) -> bytes | None:
    """The SHA-256 digest a presented key must have, from the config's ``api_key_hash``
    or (legacy, plain text) ``api_key``; None when no key is configured."""
    if api_key_hash:
        return _digest_of(api_key_hash)
    if api_key:
        return hashlib.sha256(api_key.encode("utf-8")).digest()
    return None


def key_matches(presented: str | None, expected: bytes | None) -> bool:
    """True if ``presented`` hashes to ``expected``. Constant time (``hmac.compare_digest``
    on equal-length digests); an empty key or no configured key never matches."""
    if not presented or expected is None:
        return False
    digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(digest, expected)


# ---------------------------------------------------------------- addresses

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """IP or CIDR strings as networks; invalid entries are skipped (the config refuses them)."""
    nets: list[Network] = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    return tuple(nets)


# Peers and Host values repeat from request to request: parse each once (bounded).
@functools.lru_cache(maxsize=1024)
def parse_address(text: str | None) -> Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port" as some proxies write it
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address | None, nets: Sequence[Network]) -> bool:
    return addr is not None and any(addr in net for net in nets)


def client_address(
    peer: str | None, forwarded_for: str | None, proxies: Sequence[Network]
) -> str | None:
    """The client's address: the TCP ``peer``, or, when the peer is a trusted proxy, the
    last ``X-Forwarded-For`` hop that is not itself a trusted proxy.

    A trusted proxy that sends a malformed header gives None (an unknown client, trusted
    by nothing); one that sends no header is the client itself.
    """
    addr = parse_address(peer)
    if addr is None or not _within(addr, proxies) or not forwarded_for:
        return str(addr) if addr is not None else peer
    hops = [h.strip() for h in forwarded_for.split(",")]
    for hop in reversed(hops):
        hop_addr = parse_address(hop)
        if hop_addr is None:
            return None
        if not _within(hop_addr, proxies):
            return str(hop_addr)
    first = parse_address(hops[0])
    return str(first) if first is not None else None


#: Host-name suffixes reserved for private networks: nobody can register them publicly.
LOCAL_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal", ".localdomain")


def hostname_of(host: str | None) -> str | None:
    """The lower-case host name of a ``Host`` header value (port and brackets removed)."""
    if not host:
        return None
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def host_is_private(host: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """Whether a request's ``Host`` names this farm the way only its own network can:
    an IP address, ``localhost``, a private-use suffix (``.local`` …), or one of ``extra``
    (the machine's own name, the CORS origins' hosts).

    DNS rebinding: a page on ``evil.example`` whose name is made to resolve to the farm
    sends requests from the visitor's browser, so from a trusted address, but with
    ``Host: evil.example``. A request without ``Host`` (not a browser) passes.
    """
    if not host:
        return True
    name = hostname_of(host)
    if name is None:
        return False
    if parse_address(name) is not None or name == "localhost":
        return True
    return name.endswith(LOCAL_SUFFIXES) or name in extra


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str]) -> bool:
    """A browser ``Origin`` may open the websocket or an event stream if it is
    allow-listed (``server.cors_domains``) or names the host the request was sent to
    (ports may differ: Mainsail on :80, printfarmd on :7125). ``null`` never passes."""
    if origin in allowed:
        return True
    if origin == "null" or not host:
        return False
    try:
        origin_host = urlsplit(origin).hostname
        request_host = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return origin_host is not None and origin_host == request_host


# ---------------------------------------------------------------- one-shot tokens
# (issue 3) Moonraker-style single-use tokens for clients that cannot send headers.

ONESHOT_TTL = 5.0
#: Live tokens kept at most; the oldest go first (a flood of requests cannot grow memory).
ONESHOT_MAX = 1024


class OneshotTokens:
    """Single-use tokens that expire after ``ONESHOT_TTL`` seconds, bound to a client address."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[float, str]] = {}

    def issue(self, peer: str) -> str:
        now = self._clock()
        self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
        while len(self._tokens) >= ONESHOT_MAX:
            del self._tokens[next(iter(self._tokens))]
        token = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
        self._tokens[token] = (now + ONESHOT_TTL, peer)
        return token

    def redeem(self, token: str | None, peer: str | None) -> bool:
        """True (and the token is spent) if ``token`` is live and was issued to ``peer``."""
        if not token:
            return False
        entry = self._tokens.pop(token, None)
        if entry is None:
            return False
        expires, owner = entry
        return expires > self._clock() and owner == peer


# ---------------------------------------------------------------- back-off

#: Wrong credentials an address may present before it has to wait.
FAILURES_BEFORE_BACKOFF = 10
#: The first wait (seconds); it doubles with each further failure, up to BACKOFF_MAX.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
#: An address with no failure for this long starts afresh.
FORGET_AFTER = 900.0
#: Addresses tracked at most (the least recently failing are forgotten first).
TRACKED_MAX = 4096


class _Failures(msgspec.Struct):
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class AuthThrottle:
    """Counts wrong credentials per client address and imposes a doubling wait.

    Loopback addresses are never counted nor made to wait.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_addr: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def exempt(addr: str | None) -> bool:
        parsed = parse_address(addr)
        return parsed is not None and parsed.is_loopback

    def wait_for(self, addr: str | None) -> float:
        """Seconds ``addr`` must still wait before it may try again (0 = may try now)."""
        entry = self._by_addr.get(addr or "?")
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - self._clock())

    def failed(self, addr: str | None) -> None:
        if self.exempt(addr):
            return
        key = addr or "?"
        now = self._clock()
        entry = self._by_addr.pop(key, None)
        if entry is None or now - entry.last > FORGET_AFTER:
            entry = _Failures()
        entry.count += 1
        entry.last = now
        over = entry.count - FAILURES_BEFORE_BACKOFF
        if over > 0:
            entry.blocked_until = now + min(BACKOFF_FIRST * 2 ** min(over - 1, 30), BACKOFF_MAX)
        self._by_addr[key] = entry
        while len(self._by_addr) > TRACKED_MAX:
            self._by_addr.popitem(last=False)

    def succeeded(self, addr: str | None) -> None:
        self._by_addr.pop(addr or "?", None)


# ---------------------------------------------------------------- the decision

#: Connections whose verified key ``Access`` remembers at most (``server.max_connections``
#: is 1024 by default).
VERIFIED_MAX = 4096


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    #: No credential, or a wrong one: 401 (JSON-RPC "Unauthorized").
    DENIED = "denied"
    #: Too many wrong credentials from this address: 429 with Retry-After.
    THROTTLED = "throttled"


class Decision(msgspec.Struct, frozen=True):
    verdict: Verdict
    #: The client address the decision was made for (after trusted proxies).
    client: str | None
    #: Seconds to wait, for THROTTLED.
    retry_after: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


class Access:
    """The farm's access rules, current as of the last (re)load of ``[server]``.

    Holds the key's digest (never the key), the trusted networks and proxies, the CORS
    allow-list, the one-shot tokens and the failure back-off. ``update`` swaps the rules
    (SIGHUP); tokens and back-off state carry over.
    """

    def __init__(self, server: ServerAccess, clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens = OneshotTokens(clock)
        self.throttle = AuthThrottle(clock)
        self._digest: bytes | None = None
        self._trusted: tuple[Network, ...] = ()
        self._proxies: tuple[Network, ...] = ()
        self.cors_domains: frozenset[str] = frozenset()
        self._own_hosts: frozenset[str] = frozenset()
        #: Keys verified on a connection (hypercorn's ``scope["client"]``, one per TCP
        #: connection): a request presenting the same bytes again is not hashed again.
        #: A different connection, or different bytes, are checked afresh; emptied when
        #: the rules change (a rotated key). Bounded; the least recently used go first.
        self._verified: OrderedDict[object, bytes] = OrderedDict()
        self.update(server)

    def update(self, server: ServerAccess) -> None:
        self._verified.clear()
        self._digest = expected_digest(server.api_key, server.api_key_hash)
        self._trusted = parse_networks(server.trusted_clients)
        self._proxies = parse_networks(server.trusted_proxies)
        self.cors_domains = frozenset(server.cors_domains)
        own = {socket.gethostname().lower()}
        # Pages on the CORS origins' hosts are the operator's own (Mainsail elsewhere).
        own.update(h for o in self.cors_domains if (h := hostname_of(o.partition("//")[2])))
        self._own_hosts = frozenset(own)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client address of a request from ``peer`` carrying ``X-Forwarded-For``."""
        return client_address(peer, forwarded_for, self._proxies)

    def trusted(self, client: str | None, host: str | None = None) -> bool:
        """Whether ``client`` is in ``trusted_clients`` and, for a request that named a
        ``host``, that host is one only the farm's own network uses (``host_is_private``)."""
        return _within(parse_address(client), self._trusted) and host_is_private(
            host, self._own_hosts
        )

    def key_matches(self, presented: str | None) -> bool:
        return key_matches(presented, self._digest)

    def check_credential(
        self,
        client: str | None,
        *,
        key: str | None,
        token: str | None,
        connection: object | None = None,
    ) -> bool:
        """Whether ``key`` or one-shot ``token`` lets ``client`` in; a wrong one counts
        towards the client's back-off, a right one clears it. With ``connection`` (a
        hashable identity of the TCP connection), a key verified on it is remembered
        there and compared in constant time the next time instead of hashed."""
        if key and self._remembered(connection, key):
            self.throttle.succeeded(client)
            return True
        if key and self.key_matches(key):
            self._remember(connection, key)
            self.throttle.succeeded(client)
            return True
        if self.tokens.redeem(token, client):
            self.throttle.succeeded(client)
            return True
        if key or token:
            self.throttle.failed(client)
        return False

    def _remembered(self, connection: object | None, key: str) -> bool:
        if connection is None:
            return False
        known = self._verified.get(connection)
        if known is None:
            return False
        return hmac.compare_digest(known, key.encode("utf-8", "surrogatepass"))

    def _remember(self, connection: object | None, key: str) -> None:
        if connection is None:
            return
        self._verified[connection] = key.encode("utf-8", "surrogatepass")
        self._verified.move_to_end(connection)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)

    def decide(
        self,
        *,
        peer: str | None,
        host: str | None,
        api_key: str | None,
        forwarded_for: str | None,
        oneshot: str | None,
    ) -> Decision:
        """THE access decision for every HTTP request and websocket upgrade.

        Allowed: a trusted client address (asking for a private ``host``: no DNS
        rebinding), the right ``X-Api-Key``, or a live one-shot token (spent here). A
        client address in back-off is refused before its credential is even looked at, so
        guessing cannot go on at full speed.
        """
        return self.decide_for(
            self.client(peer, forwarded_for), host=host, api_key=api_key, oneshot=oneshot
        )

    def decide_for(
        self,
        client: str | None,
        *,
        host: str | None,
        api_key: str | None,
        oneshot: str | None,
        connection: object | None = None,
    ) -> Decision:
        """``decide`` for a ``client`` address already worked out (``client``); with
        ``connection``, a key verified on that connection before is not hashed again."""
        if self.trusted(client, host):
            return Decision(Verdict.ALLOWED, client)
        wait = self.throttle.wait_for(client)
        if wait > 0 and not self.throttle.exempt(client):
            return Decision(Verdict.THROTTLED, client, retry_after=max(1, int(wait + 0.999)))
        if self.check_credential(client, key=api_key or None, token=oneshot, connection=connection):
            return Decision(Verdict.ALLOWED, client)
        return Decision(Verdict.DENIED, client)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        return origin_allowed(origin, host, self.cors_domains)
