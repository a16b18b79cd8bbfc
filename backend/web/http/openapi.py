"""``/openapi.json``: the schema Starlette gathers from the handlers' docstrings, with the
error shape every endpoint may answer with."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.schemas import SchemaGenerator

from backend.web.jsonio import JSON

SCHEMAS = SchemaGenerator({"openapi": "3.0.3",
                           "info": {"title": "ChangeCast API", "version": "0.1.0"}})
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
COMMON_ERRORS = {400: "bad input (malformed JSON, bad where, bad paging)",
                 403: "forbidden, or a cross-origin write",
                 503: "the database is unavailable; retry after Retry-After seconds"}
BODY_ERRORS = {413: "body over 64 KiB", 422: "body does not match the schema"}


async def openapi(request: Request) -> Response:
    """The OpenAPI document, with the error shape every endpoint may answer with."""
    schema = SCHEMAS.get_schema(routes=request.app.routes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            extra = {**COMMON_ERRORS, **(BODY_ERRORS if "requestBody" in operation else {})}
            for status, description in extra.items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
    return JSON(schema)
