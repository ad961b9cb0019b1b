"""Server-Sent Events: ``GET /api/events`` (all events, filtered) and
``GET /api/jobs/{id}/stream`` (one job, until it is final).

Wire format (``text/event-stream``):

- a committed event: ``id: <seq>`` / ``event: <type>`` / ``data: <event JSON>``; the id is
  the event-log sequence number, so a client reconnecting with ``Last-Event-ID`` gets
  exactly what it missed (replayed from the store, then live from the bus);
- a progress update (ephemeral, not in the log): ``event: progress`` with no id;
- the job stream's first message: ``event: job`` with the job as ``GET /api/jobs/{id}``
  returns it;
- ``: heartbeat`` comments every ``server.sse_heartbeat`` seconds keep proxies from cutting
  an idle stream.

No gap, no duplicate: the stream subscribes to the bus *before* it replays from the store,
then drops bus events whose seq it already sent. A subscriber that falls a full buffer
(``server.sse_buffer``) behind is dropped by the bus and its connection is closed (see
``api/front.py``), so one stuck client never slows the farm or the other clients.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import orjson
import trio
from quart import Blueprint, Response, request

from printfarmd.api.context import Services, client_address, services
from printfarmd.api.front import StreamControl, control_of, stream_response
from printfarmd.api.jobs import check_job_id
from printfarmd.api.serialize import event_json, iso, job_json
from printfarmd.config import PRINTER_ID_RE
from printfarmd.errors import BadRequest, Forbidden, NotFound
from printfarmd.models import JOB_ID_RE, Event, Job, JobState
from printfarmd.services.bus import Message, ProgressUpdate

bp = Blueprint("events", __name__)
log = logging.getLogger("printfarmd.api.events")

HEARTBEAT = b": heartbeat\n\n"
#: Sent first: how long a client should wait before reconnecting (ms).
RETRY = b"retry: 2000\n\n"
REPLAY_PAGE = 500
#: Most messages sent in one write.
BATCH_MAX = 256
#: At shutdown a stream that does not finish by itself within this is cut.
SHUTDOWN_GRACE = 1.0
PROGRESS = "progress"
MAX_SEQ = 2**63 - 1


# ------------------------------------------------------------------ pure helpers


def frame(data: Any, event: str | None = None, event_id: int | None = None) -> bytes:
    """One SSE message. ``data`` is JSON-encoded on one line (JSON escapes newlines)."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


#: Frames of recently published events: the bus hands the *same* Event object to every
#: subscriber, so with many clients each event is encoded once, not once per client.
#: Keyed by object identity; the entry holds the event, so its id cannot be reused while
#: cached. Bounded; oldest dropped first.
_FRAMES: dict[int, tuple[Event, bytes]] = {}
_FRAMES_MAX = 4096


def event_frame(ev: Event) -> bytes:
    cached = _FRAMES.get(id(ev))
    if cached is not None and cached[0] is ev:
        return cached[1]
    data = frame(event_json(ev), ev.type, ev.seq)
    _FRAMES[id(ev)] = (ev, data)
    if len(_FRAMES) > _FRAMES_MAX:
        del _FRAMES[next(iter(_FRAMES))]
    return data


def progress_json(p: ProgressUpdate) -> dict[str, Any]:
    return {
        "printer_id": p.printer_id,
        "printer_state": p.printer_state.value,
        "job_id": p.job_id,
        "progress": round(p.progress, 2),
        "eta": iso(p.eta),
    }


@functools.lru_cache(maxsize=256)
def progress_frame(p: ProgressUpdate) -> bytes:
    return frame(progress_json(p), PROGRESS)


class EventFilter(msgspec.Struct, frozen=True):
    """Which messages a stream wants: all filters must match (empty = any)."""

    job_id: str | None = None
    printer_id: str | None = None
    types: frozenset[str] = frozenset()

    def accepts(self, message: Message) -> bool:
        kind: str = PROGRESS if isinstance(message, ProgressUpdate) else message.type
        job, printer = message.job_id, message.printer_id
        return (
            (not self.types or kind in self.types)
            and (self.job_id is None or job == self.job_id)
            and (self.printer_id is None or printer == self.printer_id)
        )

    @property
    def store_types(self) -> tuple[str, ...]:
        return tuple(sorted(t for t in self.types if t != PROGRESS))


def job_is_final(job: Job) -> bool:
    """Shipped, cancelled, or failed with no retry scheduled: nothing more will happen."""
    return job.state in (JobState.SHIPPED, JobState.CANCELLED) or (
        job.state is JobState.FAILED and job.retry_at is None
    )


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """``Last-Event-ID`` (header, else ``last_event_id`` query parameter) as a seq.

    Raises ``BadRequest`` unless it is a non-negative integer."""
    raw = header if header is not None else query
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_SEQ:
        raise BadRequest("Last-Event-ID: expected an event sequence number")
    return int(raw)


def parse_filter(args: Any) -> EventFilter:
    """The ``job``, ``printer`` and ``type`` query parameters. Raises ``BadRequest``."""
    job = args.get("job") or None
    if job is not None and not JOB_ID_RE.match(job):
        raise BadRequest("job: not a job id (16 uppercase hex characters)")
    printer = args.get("printer") or None
    if printer is not None and not PRINTER_ID_RE.fullmatch(printer):
        raise BadRequest("printer: not a printer id")
    raw_types = args.get("type") or ""
    types = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
    if len(types) > 50 or any(len(t) > 64 or not t.isprintable() for t in types):
        raise BadRequest("type: at most 50 comma-separated event types")
    return EventFilter(job, printer, types)


# ------------------------------------------------------------------ streaming


def _check_origin(svc: Services) -> None:
    """A page from a foreign origin may not read the farm's live events (only pages from
    this host or from ``server.cors_domains``); browsers send ``Origin`` cross-site."""
    origin = request.headers.get("Origin")
    if origin and not svc.access.origin_allowed(origin, request.host):
        raise Forbidden("this page's origin may not read the event stream (server.cors_domains)")


def _log_fields(stream: str, filt: EventFilter, last_id: int | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"stream": stream, "client": client_address()}
    if filt.job_id:
        fields["job"] = filt.job_id
    if filt.printer_id:
        fields["printer"] = filt.printer_id
    if filt.types:
        fields["types"] = ",".join(sorted(filt.types))
    if last_id is not None:
        fields["last_event_id"] = last_id
    return fields


def _sse_response(body: AsyncIterator[bytes]) -> Response:
    """The stream's response; the front writes ``body`` itself (``stream_response``)."""
    return stream_response(request.scope, body, _sse_head)


def _sse_head(body: AsyncIterator[bytes]) -> Response:
    resp = Response(body, status=200, content_type="text/event-stream; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    resp.timeout = None  # Quart's RESPONSE_TIMEOUT (60 s) would cut the stream
    return resp


def _on_end(control: StreamControl | None, fields: dict[str, Any]) -> Callable[[bool], None]:
    def ended(dropped: bool) -> None:
        if dropped:
            log.warning(
                "event stream client dropped",
                extra={**fields, "reason": "fell a full buffer behind (not reading)"},
            )
        if control is None:
            return
        if dropped:
            # Fell a full buffer behind: the writer is probably blocked on a client
            # that does not read. Close the connection; it can reconnect and replay.
            control.abort()
        else:
            # Shutdown: a healthy stream ends by itself at once; cut a blocked one.
            control.abort_after(SHUTDOWN_GRACE)

    return ended


class _Ended(Exception):
    """The bus ended the subscription (dropped, or shutdown)."""


async def _next(recv: trio.MemoryReceiveChannel[Message], heartbeat: float) -> Message | None:
    """The next message, or ``None`` after ``heartbeat`` seconds of silence.

    Raises ``_Ended`` when the bus ended the subscription. A checkpoint only when it has
    to wait: a stream that is behind takes its next message at once (its write to the
    client, right after, is the checkpoint), with no timer set up per message."""
    try:
        return recv.receive_nowait()
    except trio.WouldBlock:
        pass
    except (trio.EndOfChannel, trio.ClosedResourceError):
        raise _Ended from None
    with trio.move_on_after(heartbeat):
        try:
            return await recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise _Ended from None
    return None


async def _next_batch(recv: trio.MemoryReceiveChannel[Message], heartbeat: float) -> list[Message]:
    """Every message waiting (at least one, at most ``BATCH_MAX``), or ``[]`` after
    ``heartbeat`` seconds of silence: a burst goes out as one write, not one per event.

    Raises ``_Ended`` when the bus ended the subscription. A checkpoint when it waits."""
    first = await _next(recv, heartbeat)
    if first is None:
        return []
    batch = [first]
    while len(batch) < BATCH_MAX:
        try:
            batch.append(recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break  # an ended channel is reported by the next call
    return batch


async def _event_stream(
    svc: Services,
    filt: EventFilter,
    last_id: int | None,
    control: StreamControl | None,
    fields: dict[str, Any],
) -> AsyncIterator[bytes]:
    cfg = svc.config.server
    with svc.bus.subscribed(filt.accepts, cfg.sse_buffer, _on_end(control, fields)) as sub:
        yield RETRY
        last = last_id if last_id is not None else MAX_SEQ
        if last_id is not None:
            # Replay what the client missed, then continue live from the bus.
            while True:
                page = await svc.store.events_since(
                    last,
                    job_id=filt.job_id,
                    printer_id=filt.printer_id,
                    types=filt.store_types,
                    limit=REPLAY_PAGE,
                )
                if page:
                    yield b"".join(event_frame(ev) for ev in page)
                    last = page[-1].seq
                if len(page) < REPLAY_PAGE:
                    break
        while True:
            try:
                batch = await _next_batch(sub.receive_channel, cfg.sse_heartbeat)
            except _Ended:
                return
            if not batch:
                yield HEARTBEAT
                continue
            out: list[bytes] = []
            for message in batch:
                if isinstance(message, ProgressUpdate):
                    out.append(progress_frame(message))
                elif last_id is None or message.seq > last:
                    last = message.seq
                    out.append(event_frame(message))
            if out:
                yield b"".join(out)


@bp.get("/api/events")
async def stream_events() -> Response:
    """Every committed event (filtered), live; replays from ``Last-Event-ID``."""
    svc = services()
    _check_origin(svc)
    filt = parse_filter(request.args)
    last_id = parse_last_event_id(
        request.headers.get("Last-Event-ID"), request.args.get("last_event_id")
    )
    fields = _log_fields("events", filt, last_id)
    log.info("event stream opened", extra=fields)
    return _sse_response(_event_stream(svc, filt, last_id, control_of(request.scope), fields))


async def _job_stream(
    svc: Services, job_id: str, control: StreamControl | None, fields: dict[str, Any]
) -> AsyncIterator[bytes]:
    cfg = svc.config.server
    sched = svc.owner
    filt = EventFilter(job_id=job_id)
    with svc.bus.subscribed(filt.accepts, cfg.sse_buffer, _on_end(control, fields)) as sub:
        # Live jobs are in the owner's memory, applied and published together with
        # no checkpoint in between: a snapshot taken right after subscribing is followed
        # by exactly the changes it does not contain. A job not in memory is finished.
        job = sched.jobs.get(job_id)
        if job is None:
            job = await sched.get_job(job_id)
        yield RETRY
        yield frame(job_json(job), "job")
        if job_is_final(job):
            return
        while True:
            try:
                batch = await _next_batch(sub.receive_channel, cfg.sse_heartbeat)
            except _Ended:
                return
            if not batch:
                yield HEARTBEAT
                continue
            out: list[bytes] = []
            for message in batch:
                if isinstance(message, ProgressUpdate):
                    out.append(progress_frame(message))
                    continue
                out.append(event_frame(message))
                if _ends_job(message, sched.jobs.get(job_id)):
                    yield b"".join(out)
                    return
            yield b"".join(out)


def _ends_job(ev: Event, current: Job | None) -> bool:
    """Whether ``ev`` put the job in a final state (``current``: the job now, if open)."""
    if ev.type != "job.transition":
        return False
    if ev.to_state in (JobState.SHIPPED.value, JobState.CANCELLED.value):
        return True
    if ev.to_state == JobState.FAILED.value and "retry_at" in ev.data:
        return ev.data["retry_at"] is None  # the event says whether a retry follows
    # (Events from before that was recorded:) final only if no retry is scheduled: the
    # job is still failed, with the same attempt count as this event.
    return (
        ev.to_state == JobState.FAILED.value
        and current is not None
        and current.state is JobState.FAILED
        and current.retry_at is None
        and current.retry_count == ev.data.get("retry_count")
    )


@bp.get("/api/jobs/<job_id>/stream")
async def stream_job(job_id: str) -> Response:
    """The job's current state at once, then every change; ends when it is final."""
    svc = services()
    _check_origin(svc)
    check_job_id(job_id)
    if job_id not in svc.owner.jobs and await svc.store.get_job(job_id) is None:
        raise NotFound(f"job {job_id} not found")
    fields = _log_fields("job", EventFilter(job_id=job_id), None)
    log.info("event stream opened", extra=fields)
    return _sse_response(_job_stream(svc, job_id, control_of(request.scope), fields))
