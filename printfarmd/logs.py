"""Structured logging: every record carries named fields (job, printer, state, reason...).

Fields are passed with ``extra={...}``. ``text`` renders ``message key=value ...`` for a
terminal or the journal; ``json`` renders one JSON object per line. Values are
rendered with ``repr``-style escaping so a hostile file name cannot forge log lines.

Credentials never reach a log line (issue 9, S12): both formatters pass the message, every
field and the traceback through ``redact``, which replaces the value of a credential query
parameter (``?token=``, ``?api_key=``, ``?sig=``...) and of an ``X-Api-Key`` or
``Authorization`` header with ``[redacted]``. The daemon logs no request URLs today (the
HTTP access log is off); this holds for any that a future record, or hypercorn's access log
if someone turns it on, would carry.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


REDACTED = "[redacted]"

#: Query parameters whose value is a credential (an API key, a one-shot token, a signature).
_SECRET_PARAMS = r"(?:x[_-])?api[_-]?key|(?:access[_-]|oneshot[_-])?token|sig"  # noqa: S105
#: A log field named like a credential is never rendered.
_SECRET_NAME = re.compile(rf"(?i){_SECRET_PARAMS}")
#: ``token=v`` after ``?``, ``&``, ``;``, a space, a quote or at the start (a URL, a bare
#: query string, a ``key=value`` field); the value ends at ``&``, ``#``, space or a quote.
_QUERY_SECRET = re.compile(rf"""(?i)((?:^|[?&;\s"'])(?:{_SECRET_PARAMS})=)[^&#;\s"'<>]+""")
#: A credential header written as text (``X-Api-Key: v``, ``"x-api-key": "v"``) or as an
#: ASGI header pair (``(b'x-api-key', b'v')``); ``Bearer``/``Basic`` schemes are kept.
_HEADER_SECRET = re.compile(
    r"""(?ix)
    (
      (?:x-api-key|authorization)      # the header name
      (?:["']?\s*:|'\s*,)\s*           # then `: ` (text, JSON) or `', ` (a bytes pair)
      (?:b?["'])?                       # an opening quote, maybe of a bytes literal
      (?:(?:bearer|basic)\s+)?          # an auth scheme
    )
    [^\s"',)]+                          # the secret itself
    """
)


def redact(text: str) -> str:
    """``text`` with every credential-looking query value and header value replaced by
    ``[redacted]``; anything else unchanged."""
    if "=" not in text and ":" not in text and "," not in text:
        return text  # the common case, without running the patterns
    text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
    return _HEADER_SECRET.sub(rf"\1{REDACTED}", text)


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def json_text(value: object) -> str:
    """``value`` as JSON with every unprintable character escaped.

    orjson escapes only C0 controls; C1 controls (``\x9b`` starts a terminal escape
    sequence), line and paragraph separators and bidi overrides would otherwise reach a
    terminal or a line-splitting reader raw and forge or hide log lines.
    """
    out = orjson.dumps(value, default=str).decode()
    if out.isascii() or out.isprintable():
        return out
    return "".join(c if c.isprintable() else _json_escape(c) for c in out)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _text_value(value: object) -> str:
    text = redact(str(value))
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json_text(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = redact(record.getMessage())
        safe = msg if msg.isprintable() else json_text(msg)
        parts = [f"{ts}Z {record.levelname:<7} {record.name}: {safe}"]
        parts += [
            f"{k}={REDACTED if _SECRET_NAME.fullmatch(k) else _text_value(v)}"
            for k, v in fields_of(record).items()
        ]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def _redact_value(name: str, value: object) -> object:
    if _SECRET_NAME.fullmatch(name):
        return REDACTED
    # Numbers and booleans stay JSON numbers and booleans; anything else is logged as text.
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **{k: _redact_value(k, v) for k, v in fields_of(record).items()},
        }
        if record.exc_info:
            body["traceback"] = redact(self.formatException(record.exc_info))
        return json_text(body)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Route every logger to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn's own access log is off; its error log goes through ours.
    logging.getLogger("hypercorn.access").disabled = True
