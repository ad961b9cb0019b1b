"""``server.job_queue.*``: the farm queue as Moonraker's job queue.

Every method answers ``{"queued_jobs": [...], "queue_state": ...}`` after its change
is committed; notifications follow from the bus (see ``notify``).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from printfarmd.api.errors import RpcError
from printfarmd.api.moonraker.args import Args
from printfarmd.api.moonraker.rpc import Caller, Raw, method
from printfarmd.core.farm.inputs import QueueFile
from printfarmd.errors import BadRequest, Conflict, ValidationFailed
from printfarmd.services import files
from printfarmd.services.owner import Owner

MAX_FILENAMES = 1000
#: Attempts at a ``reset`` whose queue changed between reading and deciding.
RESET_ATTEMPTS = 3


async def enqueue_files(
    owner: Owner, filenames: Sequence[str], *, reset: bool = False, source: str = "moonraker"
) -> None:
    """Moonraker's ``post_job``: one queued job per filename, in order, in ONE commit;
    nothing is stored if any file is missing or illegal (the first bad one's error).

    With ``reset`` the listed files become the whole queue, in the listed order: each
    entry takes the first not-yet-matched queued job with that filename (keeping its id,
    priority and history), extra entries become new jobs, and queued jobs not listed are
    cancelled — one generic ``set_queue`` command to the owner.
    """
    facts = {name: await owner.file_facts(name) for name in dict.fromkeys(filenames)}
    if not reset:
        await owner.set_queue([QueueFile(n, facts[n], source) for n in filenames], ordered=False)
        return
    for attempt in range(RESET_ATTEMPTS):
        pool: dict[str, list[str]] = {}
        for job in owner.queue.ordered():
            pool.setdefault(job.filename, []).append(job.id)
        items: list[str | QueueFile] = []
        for name in filenames:
            ids = pool.get(name)
            items.append(ids.pop(0) if ids else QueueFile(name, facts[name], source))
        try:
            await owner.set_queue(items, cancel_unlisted=True)
            return
        except Conflict:
            if attempt == RESET_ATTEMPTS - 1:
                raise  # the queue keeps changing under us: say so


@method("server.job_queue.status", ("GET", "/server/job_queue/status"))
async def status(caller: Caller, args: Args) -> Raw:
    return Raw(pieces=caller.facade.status_pieces())


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
        await enqueue_files(caller.facade.svc.owner, names, reset=reset)
    return Raw(pieces=caller.facade.status_pieces())


@method("server.job_queue.delete_job", ("DELETE", "/server/job_queue/job"))
async def delete_job(caller: Caller, args: Args) -> Raw:
    every = args.get_bool("all", False)
    ids = caller.facade.queued_ids() if every else args.get_list("job_ids")
    if ids:
        await caller.facade.svc.owner.cancel_queued(ids, "removed from the job queue")
    return Raw(pieces=caller.facade.status_pieces())


@method("server.job_queue.pause", ("POST", "/server/job_queue/pause"))
async def pause(caller: Caller, args: Args) -> Raw:
    sched = caller.facade.svc.owner
    if not sched.paused:
        await sched.set_paused(True)
    return Raw(pieces=caller.facade.status_pieces())


@method("server.job_queue.start", ("POST", "/server/job_queue/start"))
async def start(caller: Caller, args: Args) -> Raw:
    sched = caller.facade.svc.owner
    if sched.paused:
        await sched.set_paused(False)
    return Raw(pieces=caller.facade.status_pieces())


@method("server.job_queue.jump", ("POST", "/server/job_queue/jump"))
async def jump(caller: Caller, args: Args) -> Raw:
    job_id = args.get_str("job_id")
    sched = caller.facade.svc.owner
    if job_id not in sched.queue:
        raise RpcError(400, f"Invalid job id: {_printable(job_id)}")
    await sched.jump(job_id)
    return Raw(pieces=caller.facade.status_pieces())
