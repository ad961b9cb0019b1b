"""Building JSON responses and reading JSON bodies (size-capped before parsing)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from quart import Response, request

from printfarmd.api import contract
from printfarmd.api.context import services
from printfarmd.api.validate import parse_json_object

T = TypeVar("T")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


async def read_json() -> dict[str, Any]:
    """The request body as a JSON object. The app's MAX_CONTENT_LENGTH caps its size
    (413) before anything is parsed."""
    raw = await request.get_data(cache=False, as_text=False)
    return parse_json_object(raw if isinstance(raw, bytes) else raw.encode())


async def body_of(shape: type[T]) -> T:
    """The request body parsed as ``shape`` (``api/shapes.py``), with the configured
    limits: 400/422 naming the first wrong field, nothing else."""
    limits = contract.Limits(services().config.scheduler.max_priority)
    return contract.parse(shape, await read_json(), limits)
