"""The one decoder for JSON that comes from a client.

Every entry point that parses client JSON calls ``decode``: REST bodies
(``validate.parse_json_object``), the facade's HTTP bodies and ``key:json`` query
arguments, ``POST /server/jsonrpc`` and websocket frames. Size is capped before this
runs (``server.max_body_bytes``, the websocket frame cap); ``decode`` accepts I-JSON
(RFC 7493) within these limits and refuses everything else with ``JsonRefused`` (400):

- the text must be UTF-8 (no byte-order mark, no lone surrogates);
- no ``NaN``/``Infinity`` (not JSON, though many encoders emit them);
- containers nest at most ``MAX_DEPTH`` levels (``[[1]]`` is 2 levels): deep nesting is
  what crashes recursive parsers and encoders (the stdlib raises ``RecursionError``,
  orjson refuses to *encode* beyond 255 levels); the API's own requests need 5 at
  most, and 32 leaves room for UI settings stored through ``server.database``;
- a number literal has at most ``MAX_NUMBER_CHARS`` characters (the longest shortest
  round-trip form of a double is 24), an integer literal must fit a signed 64-bit
  integer (SQLite's INTEGER) and a number must be finite as a double: orjson would
  otherwise turn ``18446744073709551616`` into a float quietly;
- an object may not repeat a key. Parsers disagree on which copy wins (orjson and the
  stdlib keep the last, others the first), which is the classic way to smuggle one
  value past a check that reads another; so a duplicate, even ``"a"`` vs ``"\\u0061"``,
  is refused.

The limits are checked on the text after orjson accepted it: the strings are blanked out
(a split on ``"`` when the text has no escapes, else one regular-expression pass) and byte
translations measure the rest, all in C (``bench/bench_security.py``; docs/security.md).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from printfarmd.errors import BadRequest

#: Deepest container nesting accepted (levels; a scalar is 0, ``{}`` is 1).
MAX_DEPTH = 32
#: Longest number literal accepted, in characters (sign, digits, point and exponent).
MAX_NUMBER_CHARS = 32
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

# The checks run on the text orjson has just accepted as JSON, with every string literal
# replaced by a lone '"' and whitespace removed: what is left is brackets, separators,
# literals and numbers, so plain byte operations (all in C) can measure it. In valid
# JSON every '"' outside a string opens one, so this pattern never starts inside one.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_WHITESPACE = b" \t\r\n"
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# Number characters become '0', everything else ' ': a run of '0's is one number
# (separators always stand between two values, and true/false end in one lone 'e').
_NUMBER_RUNS = bytes(ord("0") if b in b"0123456789.eE+-" else ord(" ") for b in range(256))
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{19,}+(?![.eE])")


class JsonRefused(BadRequest):
    """Client JSON that ``decode`` refuses (HTTP 400).

    ``reason`` says what was wrong in a few words ("nested deeper than 32 levels");
    ``syntax`` is True when the text is not JSON at all (JSON-RPC -32700 Parse error)
    and False when it is JSON beyond one of our limits (-32600 Invalid Request);
    ``malformed`` is True for plain syntax errors (``reason`` is then orjson's own words,
    and the facade answers Moonraker's bare "Parse error").
    """

    def __init__(self, reason: str, *, syntax: bool, malformed: bool = False) -> None:
        super().__init__(f"not valid JSON: {reason}")
        self.reason = reason
        self.syntax = syntax
        self.malformed = malformed


def decode(raw: bytes | bytearray | memoryview | str) -> Any:
    """Decode client JSON within the limits above; raises ``JsonRefused``, nothing else.

    Empty input is refused like any other non-JSON (callers that treat an empty body as
    ``{}`` check for that first).
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRefused("not UTF-8", syntax=True) from None
    else:
        data = bytes(raw)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _refusal(exc) from None
    if not isinstance(value, dict | list):
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_numbers(data.strip())
        return value
    skeleton = _skeleton(data)
    _check_depth(skeleton)
    _check_numbers(skeleton)
    keys = skeleton.count(b'":')
    # orjson keeps the last of repeated keys, so fewer keys in the decoded value than in
    # the text means a key was repeated. A small value is counted in Python; a large one
    # is re-encoded (C) and its keys counted like the text's.
    if (
        keys
        and (
            _keys_in(value)
            if len(data) <= SMALL_TEXT
            else _skeleton(orjson.dumps(value)).count(b'":')
        )
        != keys
    ):
        raise JsonRefused("duplicate key in an object", syntax=False)
    return value


#: Texts up to this many bytes have their decoded keys counted in Python (a JSON-RPC
#: frame, a job body): quicker than re-encoding them, which wins on larger texts.
SMALL_TEXT = 512


def _skeleton(data: bytes) -> bytes:
    if b"\\" not in data:
        # Without escapes every '"' opens or closes a string, so the even pieces of a
        # split on '"' are what lies outside the strings: the same text as the pattern
        # gives, several times faster.
        return b'"'.join(data.split(b'"')[::2]).translate(None, _WHITESPACE)
    return _STRING.sub(b'"', data).translate(None, _WHITESPACE)


def _keys_in(value: dict[str, Any] | list[Any]) -> int:
    """The keys of every object in ``value`` (nested at most ``MAX_DEPTH`` levels)."""
    count = 0
    if isinstance(value, dict):
        count = len(value)
        items: Any = value.values()
    else:
        items = value
    for item in items:
        if isinstance(item, dict | list):
            count += _keys_in(item)
    return count


def _check_depth(skeleton: bytes) -> None:
    if skeleton.count(b"[") + skeleton.count(b"{") <= MAX_DEPTH:
        return  # too few containers to nest deeper
    # Each pass deletes every innermost (empty) container, so the passes needed to
    # empty the brackets are the nesting depth. Braces become brackets first: in valid
    # JSON they pair up the same way.
    brackets = skeleton.translate(None, _NOT_BRACKET).replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(MAX_DEPTH):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return
    raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels", syntax=False)


def _check_numbers(skeleton: bytes) -> None:
    runs = skeleton.translate(_NUMBER_RUNS)
    if b"0" * (MAX_NUMBER_CHARS + 1) in runs:
        raise JsonRefused(f"number longer than {MAX_NUMBER_CHARS} characters", syntax=False)
    if b"0" * 19 in runs:  # 19 digits or more may leave the signed 64-bit range
        for literal in _LONG_INTEGER.findall(skeleton):
            if not INT_MIN <= int(literal) <= INT_MAX:
                raise JsonRefused("integer outside the signed 64-bit range", syntax=False)


def _refusal(exc: orjson.JSONDecodeError) -> JsonRefused:
    """orjson's error in our words (its ``msg`` texts are not an API, so anything not
    recognised falls back to its own words: still a 400)."""
    msg = exc.msg
    if msg.startswith("depth limit exceeded"):
        return JsonRefused(f"nested deeper than {MAX_DEPTH} levels", syntax=False)
    if "byte order mark" in msg:
        return JsonRefused("starts with a byte-order mark", syntax=True)
    if "UTF-8" in msg or "surrogate" in msg:
        return JsonRefused("not UTF-8", syntax=True)
    if "infinity" in msg:
        return JsonRefused("number out of range", syntax=False)
    doc = exc.doc
    if isinstance(doc, str) and doc.startswith(("NaN", "Infinity"), exc.pos):
        return JsonRefused("NaN and Infinity are not JSON numbers", syntax=True)
    if not exc.doc or (isinstance(doc, str) and not doc.strip()):
        return JsonRefused("empty", syntax=True)
    return JsonRefused(f"{msg} at character {exc.pos}", syntax=True, malformed=True)
