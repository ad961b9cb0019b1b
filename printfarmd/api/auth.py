"""The one authentication decision for every HTTP route.

A request is authenticated by the ``X-Api-Key`` header, compared in constant time
(``hmac.compare_digest``). Routes that need no key are listed in ``PUBLIC_ROUTES``
and nowhere else; a test enumerates the app's routes against it.
"""

from __future__ import annotations

import hmac

#: (method, rule) pairs that answer without a key. Keep this list short.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/api/health"),
    }
)


def key_matches(presented: str | None, expected: str) -> bool:
    """True if ``presented`` equals the configured key. Constant time; empty never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8"))
