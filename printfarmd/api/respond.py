"""Building JSON responses and reading JSON bodies (size-capped before parsing)."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response, request

from printfarmd.api.validate import parse_json_object


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


async def read_json() -> dict[str, Any]:
    """The request body as a JSON object. The app's MAX_CONTENT_LENGTH caps its size
    (413) before anything is parsed."""
    raw = await request.get_data(cache=False, as_text=False)
    return parse_json_object(raw if isinstance(raw, bytes) else raw.encode())
