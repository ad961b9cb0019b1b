"""Issue 17: the REST contract. The document served at ``/api/openapi.json`` and the
handlers agree field by field: every documented request field is accepted, every
undocumented one refused, every field of a response is documented."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio

from printfarmd.api import contract
from printfarmd.api.shapes import REQUESTS
from printfarmd.errors import BadRequest
from tests.conftest import LiveFarm

SHAPES = sorted(REQUESTS.items())


@pytest.mark.parametrize(("name", "shape"), SHAPES)
def test_each_request_shape_parses_its_own_example_and_refuses_strangers(
    name: str, shape: type[Any]
) -> None:
    fields = contract.fields_of(shape)
    schema = contract.request_schema(shape)
    assert list(schema["properties"]) == [f.name for f in fields]
    assert schema.get("required", []) == [f.name for f in fields if f.required]
    assert schema["additionalProperties"] is False
    contract.parse(shape, contract.example_body(shape))
    with pytest.raises(BadRequest, match=r"^bogus: unknown field"):
        contract.parse(shape, {**contract.example_body(shape), "bogus": 1})
    for f in fields:
        if f.required:
            body = contract.example_body(shape)
            del body[f.name]
            with pytest.raises(BadRequest, match=f"^{f.name}: required"):
                contract.parse(shape, body)


def test_a_shape_field_without_its_spec_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="Bare: every field of a request shape needs"):

        @contract.shape
        class Bare(contract.Shape, frozen=True, kw_only=True):
            named: str = contract.field(contract.Text(10), default="")
            plain: int = 0

    @contract.shape
    class Declared(contract.Shape, frozen=True, kw_only=True):
        later: int = contract.field(contract.Integer(0, 9), default=0)
        first: str = contract.field(contract.Text(10), required=True)

    # Required after optional is fine (keyword-only), and the specs stay with their names.
    assert [(f.name, f.required) for f in contract.fields_of(Declared)] == [
        ("later", False),
        ("first", True),
    ]
    assert contract.parse(Declared, {"first": "x"}) == Declared(first="x", later=0)


# ---------------------------------------------------------------- against the live API


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def undocumented(doc: dict[str, Any], schema: dict[str, Any], value: Any, at: str) -> list[str]:
    """Every key of ``value`` that ``schema`` does not declare (recursively)."""
    schema = _resolve(doc, schema)
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None:
            if isinstance(extra, dict):  # a map: every value has this schema
                for k, v in value.items():
                    out += undocumented(doc, extra, v, f"{at}.{k}")
            elif "object" not in _types(schema):
                out.append(f"{at}: an object where the document has {schema}")
            return out
        for k, v in value.items():
            if k not in props:
                out.append(f"{at}.{k}")
            else:
                out += undocumented(doc, props[k], v, f"{at}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += undocumented(doc, schema["items"], v, f"{at}[{i}]")
    return out


def _body_shape(doc: dict[str, Any], op: dict[str, Any]) -> str | None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    ref = content["schema"].get("$ref", "")
    return ref.rsplit("/", 1)[1] if ref else None


async def test_every_documented_request_field_is_accepted_and_no_other(farm: LiveFarm) -> None:
    c = farm.client
    doc = (await c.get("/api/openapi.json")).json()
    job = (await c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})).json()["jobs"][0]
    values = {"job_id": job["id"], "printer_id": "p1"}
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            shape_name = _body_shape(doc, op)
            if shape_name is None:
                continue
            shape = REQUESTS[shape_name]
            url = path.format(**values)
            schema = doc["components"]["schemas"][shape_name]
            example = contract.example_body(shape)
            base = {k: example[k] for k in schema.get("required", [])}
            # An undocumented field is refused, naming it.
            r = await c.request(method, url, json={**base, "undocumented_field": 1})
            assert r.status_code == 400, (method, path, r.text)
            assert r.json()["error"]["message"].startswith("undocumented_field: unknown field")
            # Every documented field is accepted: whatever else may go wrong (a job in
            # the wrong state, a printer that is busy), it is not that field.
            for prop in schema["properties"]:
                r = await c.request(method, url, json={**base, prop: example[prop]})
                if r.status_code in (400, 422):
                    message = r.json()["error"]["message"]
                    assert not message.startswith(f"{prop}:"), (method, path, prop, message)
                checked += 1
    assert checked >= 15


async def test_the_old_undocumented_aliases_are_refused(farm: LiveFarm) -> None:
    c = farm.client
    job = (await c.post("/api/jobs", json={"filename": "benchy_pla.gcode"})).json()["jobs"][0]
    r = await c.post(f"/api/jobs/{job['id']}/release", json={"printer_id": "p1"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "printer_id: unknown field (allowed: printerId)"
    r = await c.post("/api/orchestrator/reprioritize", json={"job_id": job["id"], "priority": 1})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("job_id: unknown field (allowed: jobId")


async def test_every_response_field_is_documented(farm: LiveFarm) -> None:
    c = farm.client
    doc = (await c.get("/api/openapi.json")).json()
    created = await c.post(
        "/api/jobs",
        json={"filename": "benchy_pla.gcode", "copies": 2, "material": "pla", "sku": "S-1"},
    )
    first = created.json()["jobs"][0]
    assert (await c.post(f"/api/jobs/{first['id']}/release", json={"printerId": "p1"})).is_success
    # Let it print and finish, so that history and stats hold an attempt.
    with trio.fail_after(30):
        while (await c.get("/api/history")).json()["total"] == 0:  # noqa: ASYNC110 - over HTTP
            await trio.sleep(0.05)
    calls: list[tuple[str, str, str]] = [
        ("GET", "/api/health", "/api/health"),
        ("GET", "/api/jobs", "/api/jobs"),
        ("GET", f"/api/jobs/{first['id']}", "/api/jobs/{job_id}"),
        ("GET", "/api/printers", "/api/printers"),
        ("GET", "/api/printers/p1", "/api/printers/{printer_id}"),
        ("GET", "/api/orchestrator/status", "/api/orchestrator/status"),
        ("GET", "/api/orchestrator/config", "/api/orchestrator/config"),
        ("GET", "/api/notifications", "/api/notifications"),
        ("GET", "/api/history", "/api/history"),
        ("GET", "/api/stats", "/api/stats"),
        ("GET", "/api/events/history", "/api/events/history"),
        ("GET", "/api/files", "/api/files"),
        ("GET", "/api/photos", "/api/photos"),
    ]
    problems: list[str] = []
    for method, url, path in calls:
        r = await c.request(method, url)
        assert r.status_code == 200, (url, r.text)
        schema = doc["paths"][path][method.lower()]["responses"]["200"]["content"][
            "application/json"
        ]["schema"]
        problems += undocumented(doc, schema, r.json(), f"{method} {url}")
    job_list = doc["paths"]["/api/jobs"]["post"]["responses"]["201"]["content"]
    problems += undocumented(doc, job_list["application/json"]["schema"], created.json(), "POST")
    assert not problems, sorted({re.sub(r"\[\d+\]", "[]", p) for p in problems})
