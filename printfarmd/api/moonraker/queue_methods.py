"""``server.job_queue.*``: the farm queue as Moonraker's job queue.

Every method answers ``{"queued_jobs": [...], "queue_state": ...}`` after its change
is committed; notifications follow from the bus (see ``notify``).
"""

from __future__ import annotations

import trio

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, Raw, method
from printfarmd.errors import BadRequest, ValidationFailed
from printfarmd.services import files

MAX_FILENAMES = 1000


@method("server.job_queue.status", ("GET", "/server/job_queue/status"))
async def status(caller: Caller, args: Args) -> Raw:
    return Raw(caller.facade.status_json())


async def _check_files(caller: Caller, names: list[str]) -> None:
    """Every name must be a G-code file under the gcodes root (400 otherwise)."""
    root = caller.facade.gcodes_root
    for name in names:
        try:
            await trio.to_thread.run_sync(files.resolve_gcode, root, name)
        except ValidationFailed:
            raise RpcError(400, f"G-Code File {_printable(name)} does not exist") from None
        except BadRequest as exc:
            raise RpcError(400, f"Invalid filename {_printable(name)}: {exc.message}") from None


def _printable(name: str) -> str:
    """``name`` safe to echo: control characters escaped, length capped."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 200 else text[:200] + "..."


@method("server.job_queue.post_job", ("POST", "/server/job_queue/job"))
async def post_job(caller: Caller, args: Args) -> Raw:
    names = args.get_list("filenames")
    reset = args.get_bool("reset", False)
    if len(names) > MAX_FILENAMES:
        raise RpcError(400, f"Too many filenames (at most {MAX_FILENAMES})")
    await _check_files(caller, names)
    if names or reset:
        await caller.facade.svc.scheduler.enqueue_files(names, reset=reset, source="moonraker")
    return Raw(caller.facade.status_json())


@method("server.job_queue.delete_job", ("DELETE", "/server/job_queue/job"))
async def delete_job(caller: Caller, args: Args) -> Raw:
    every = args.get_bool("all", False)
    ids = caller.facade.queued_ids() if every else args.get_list("job_ids")
    if ids:
        await caller.facade.svc.scheduler.cancel_queued(ids, "removed from the job queue")
    return Raw(caller.facade.status_json())


@method("server.job_queue.pause", ("POST", "/server/job_queue/pause"))
async def pause(caller: Caller, args: Args) -> Raw:
    sched = caller.facade.svc.scheduler
    if not sched.paused:
        await sched.set_paused(True)
    return Raw(caller.facade.status_json())


@method("server.job_queue.start", ("POST", "/server/job_queue/start"))
async def start(caller: Caller, args: Args) -> Raw:
    sched = caller.facade.svc.scheduler
    if sched.paused:
        await sched.set_paused(False)
    return Raw(caller.facade.status_json())


@method("server.job_queue.jump", ("POST", "/server/job_queue/jump"))
async def jump(caller: Caller, args: Args) -> Raw:
    job_id = args.get_str("job_id")
    sched = caller.facade.svc.scheduler
    if job_id not in sched.queue:
        raise RpcError(400, f"Invalid job id: {_printable(job_id)}")
    await sched.jump(job_id)
    return Raw(caller.facade.status_json())
