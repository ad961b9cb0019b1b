"""The stack's floor: a bare quart-trio + hypercorn app answering constant bodies.

Usage: ``python bench/floor_app.py PORT [BODY_FILE [FRAME_FILE]]``

Nothing of printfarmd is imported: this is what the daemon's framework costs on its own.

- ``GET /api/health``: ``{"status": "ok"}`` (the benches' readiness probe);
- ``GET /server/job_queue/status``: the bytes of ``BODY_FILE`` (default ``{"result":{}}``)
  as ``application/json``: the benches put the daemon's own answer there, so the floor
  moves exactly as many bytes as the daemon does;
- ``/websocket``: every text frame received is answered with the text of ``FRAME_FILE``
  (default a tiny JSON-RPC result);
- ``GET /api/events``: an event stream, the plain Quart way (an async generator body fed
  by a memory channel per stream); ``POST /api/orchestrator/reprioritize`` publishes one
  event (``id``, ``event``, ``data`` with ``seq`` and ``at``, printfarmd's shape) to every
  stream and answers 200 (the SSE bench's floor).

The default hypercorn configuration but the access log (off, as in the daemon).

With ``FLOOR_HEAP=1`` in its environment the floor also takes printfarmd's heap policy
(``printfarmd/heap.py``, issue 17: start-up's objects frozen, the young generation
collected every 10,000 net allocations), written out here so that nothing of printfarmd
is imported: the floor for what the daemon's own code costs under the same collector.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request, websocket
from quart_trio import QuartTrio


def main() -> None:
    port = int(sys.argv[1])
    body = Path(sys.argv[2]).read_bytes() if len(sys.argv) > 2 else b'{"result":{}}'
    frame = (
        Path(sys.argv[3]).read_text()
        if len(sys.argv) > 3
        else '{"jsonrpc":"2.0","result":{},"id":1}'
    )
    app = QuartTrio("floor")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/server/job_queue/status")
    async def status() -> Response:
        return Response(body, content_type="application/json")

    streams: set[trio.MemorySendChannel[bytes]] = set()
    seq = [0]

    @app.get("/api/events")
    async def events() -> Response:
        send, recv = trio.open_memory_channel[bytes](1024)

        async def body() -> AsyncIterator[bytes]:
            streams.add(send)
            try:
                yield b"retry: 2000\n\n"
                async for frame in recv:
                    yield frame
            finally:
                streams.discard(send)

        resp = Response(body(), content_type="text/event-stream; charset=utf-8")
        resp.timeout = None
        return resp

    @app.post("/api/orchestrator/reprioritize")
    async def publish() -> dict[str, int]:
        # Read the body first: answering before it arrived trips a hypercorn/quart-trio
        # race that leaves the connection hanging (printfarmd's front shields against it).
        await request.get_data()
        seq[0] += 1
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        data = json.dumps({"seq": seq[0], "type": "job.reprioritized", "at": at})
        frame = f"id: {seq[0]}\nevent: job.reprioritized\ndata: {data}\n\n".encode()
        for stream in list(streams):
            try:
                stream.send_nowait(frame)
            except trio.WouldBlock:
                streams.discard(stream)
        return {"seq": seq[0]}

    @app.websocket("/websocket")
    async def ws() -> None:
        while True:
            await websocket.receive()
            await websocket.send(frame)

    if os.environ.get("FLOOR_HEAP") == "1":

        @app.before_serving
        async def settle() -> None:
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.websocket_max_message_size = 1 << 20
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
