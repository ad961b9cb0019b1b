"""A small Server-Sent Events client over a raw trio TCP stream (tests and bench).

Raw on purpose: the tests need to control reading exactly (a client that never reads,
a tiny receive buffer, a connection cut mid-stream), and an endless stream read through
httpx leaves async generators to the garbage collector when abandoned.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
import orjson
import trio


@attrs.frozen
class SSEMessage:
    """One dispatched SSE message, or a comment line (``comment`` set, nothing else)."""

    event: str | None = None
    data: str = ""
    id: int | None = None
    comment: str | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


class StreamEnded(Exception):
    """The server ended the response (or closed the connection)."""


@attrs.define
class SSEClient:
    stream: trio.SocketStream
    status: int = 0
    headers: dict[str, str] = attrs.field(factory=dict)
    _raw: bytearray = attrs.field(factory=bytearray)
    _body: bytearray = attrs.field(factory=bytearray)
    _chunked: bool = True
    _done: bool = False

    @classmethod
    async def open(
        cls,
        url: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        rcvbuf: int | None = None,
        read_head: bool = True,
    ) -> SSEClient:
        """Connect and send ``GET path``. ``rcvbuf`` shrinks the socket's receive buffer
        (set before connecting, so the TCP window stays small)."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect((host, int(port)))
        client = cls(trio.SocketStream(sock))
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await client.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        if read_head:
            await client.read_head()
        return client

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise StreamEnded("connection closed")
        self._raw += data

    async def read_head(self) -> None:
        while b"\r\n\r\n" not in self._raw:
            await self._fill()
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        self._raw = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked:
            length = int(self.headers.get("content-length", "0"))
            while len(self._raw) < length:
                await self._fill()
            self._body += self._raw[:length]
            self._raw = self._raw[length:]
            self._done = True

    async def _more_body(self) -> None:
        """Move the next chunk of the body into ``_body``; StreamEnded at its end."""
        if self._done:
            raise StreamEnded("response ended")
        while b"\r\n" not in self._raw:
            await self._fill()
        size_line, _, rest = bytes(self._raw).partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            await self._fill()
            size_line, _, rest = bytes(self._raw).partition(b"\r\n")
        self._body += rest[:size]
        self._raw = bytearray(rest[size + 2 :])
        if size == 0:
            self._done = True
            raise StreamEnded("response ended")

    def body_json(self) -> Any:
        return orjson.loads(bytes(self._body))

    async def read_body(self) -> bytes:
        """The whole (finite) body."""
        try:
            while True:
                await self._more_body()
        except StreamEnded:
            return bytes(self._body)

    async def next(self) -> SSEMessage:
        """The next message or comment. Raises ``StreamEnded`` at the end of the stream."""
        while True:
            text = bytes(self._body)
            idx = text.find(b"\n\n")
            if idx >= 0:
                block, self._body = text[:idx], bytearray(text[idx + 2 :])
                return _parse(block.decode())
            await self._more_body()

    async def next_message(self) -> SSEMessage:
        """The next real message (comments skipped)."""
        while True:
            msg = await self.next()
            if msg.comment is None:
                return msg

    async def aclose(self) -> None:
        await self.stream.aclose()


def _parse(block: str) -> SSEMessage:
    event: str | None = None
    event_id: int | None = None
    data: list[str] = []
    comments: list[str] = []
    for line in block.split("\n"):
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = int(value)
    if not data and event is None and event_id is None:
        return SSEMessage(comment=" ".join(comments) if comments else "")
    return SSEMessage(event=event, data="\n".join(data), id=event_id)
