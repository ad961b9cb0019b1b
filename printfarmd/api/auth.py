"""The one authentication decision for every HTTP route.

A request is authenticated by the ``X-Api-Key`` header, compared in constant time
(``hmac.compare_digest``), by a peer address in ``server.trusted_clients``, or by a
one-shot ``?token=`` (``request_allowed``: REST, the Moonraker facade and its websocket
all use it). Routes that need no key are listed in ``PUBLIC_ROUTES`` and nowhere else;
a test enumerates the app's routes against it.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Protocol

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
    }
)


#: (method, rule) pairs that the config may make public (issue 8): rule -> its switch.
CONFIG_PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/metrics")})


class _MetricsSwitch(Protocol):
    @property
    def metrics_public(self) -> bool: ...


def public_by_config(method: str, rule: str, server: _MetricsSwitch) -> bool:
    """True if the config made this route public (``server.metrics_public``)."""
    method = "GET" if method == "HEAD" else method
    return (method, rule) in CONFIG_PUBLIC_ROUTES and server.metrics_public


def key_matches(presented: str | None, expected: str) -> bool:
    """True if ``presented`` equals the configured key. Constant time; empty never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8"))


# ---------------------------------------------------------------- Moonraker-style access
# (issue 3) Trusted client networks and one-shot tokens, decided here for REST and the
# Moonraker facade alike.

ONESHOT_TTL = 5.0


def peer_is_trusted(peer: str | None, networks: Sequence[str]) -> bool:
    """True if the TCP peer address lies in one of ``networks`` (IP or CIDR strings).

    Only the connection's own address counts: forwarded headers are never consulted.
    """
    if not peer or not networks:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    for net in networks:
        try:
            if addr in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


class OneshotTokens:
    """Single-use tokens that expire after ``ONESHOT_TTL`` seconds, bound to a peer IP."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[float, str]] = {}

    def issue(self, peer: str) -> str:
        now = self._clock()
        self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
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


def request_allowed(
    *,
    api_key: str | None,
    peer: str | None,
    oneshot: str | None,
    expected_key: str,
    trusted: Sequence[str],
    tokens: OneshotTokens,
) -> bool:
    """THE access decision for every HTTP request and websocket upgrade: the right
    ``X-Api-Key``, a peer in a trusted network, or a live one-shot token (spent here)."""
    if key_matches(api_key, expected_key):
        return True
    if peer_is_trusted(peer, trusted):
        return True
    return tokens.redeem(oneshot, peer)
