"""The OpenAPI document says every status and error body the gateway can answer.

Litestar documents each route's success and a generic 400; the rest (our problem details
on every error, the public routes without credentials, query parameters whose format the
handler checks itself) is added here, once, to the generated document, so that it is the
contract clients and schemathesis test against. Request bodies are described by msgspec's
own JSON Schema of the very types that decode them (Litestar's drops the patterns of list
items and does not say that unknown fields are refused).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
from chorus.gateway.errors import PROBLEM_JSON
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.types import Message, Scope

METHODS = ("get", "put", "post", "delete", "patch")

#: Every error status, with when it happens. All come as ``application/problem+json``.
ERRORS: dict[int, str] = {
    400: "Invalid request (see `code`: `validation_error`, `invalid_parameter`, "
    "`nesting_too_deep`, ...)",
    401: "No credential, or not a valid one",
    403: "The credential's role, or a domain rule, forbids it",
    404: "No such resource (or route)",
    405: "Method not allowed on this route",
    409: "Conflicts with the current state (closed, already done, taken)",
    413: "Body over the limit (`body_too_large`, `command_too_large`)",
    415: "Unsupported media type",
    422: "An Idempotency-Key reused for another request",
    429: "Too many requests",
    500: "A bug; the `request_id` finds it in the gateway log",
    503: "Unavailable: engine, store, or read model behind; retry (see `Retry-After`)",
}
PUBLIC_ERRORS = (404, 405, 500, 503)
#: Routes that call out to MCP servers: their failure is a 502.
UPSTREAM_PATHS = ("/api/v1/mcp-servers",)
UPSTREAM_FAILED = "An MCP server failed or could not be reached (`mcp_server_unavailable`)"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details with a stable `code` and the request id",
    "required": ["type", "title", "status", "detail", "code", "instance", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "details": {"type": "object"},
    },
}
PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}

#: Query parameters the handlers parse themselves, and their format.
PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "as_of": {"type": "string", "format": "date-time"},
    "since": {"type": "string", "format": "date-time"},
    "until": {"type": "string", "format": "date-time"},
    "timeframe": {"type": "string", "enum": ["1h", "24h", "7d", "all"]},
    "priority": {"type": "string", "enum": ["low", "normal", "high", "critical"]},
}


def document(app: Litestar, public_paths: list[str]) -> None:
    """Complete the app's OpenAPI document in place (it is built once and cached)."""
    schema = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    schema.setdefault("components", {}).setdefault("schemas", {})["ProblemDetails"] = PROBLEM_SCHEMA
    allowed = {r.path: ", ".join(sorted(r.methods)) for r in app.routes if r.methods}

    async def allow_every_method(message: Message, scope: Scope) -> None:
        """Litestar's automatic OPTIONS answer lists only the methods of the first handler
        group registered on a path; say every method the path has."""
        if message["type"] == "http.response.start" and scope.get("method") == "OPTIONS":
            methods = allowed.get(scope.get("path_template", ""))
            if methods:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message["headers"] = [*headers, (b"allow", methods.encode())]

    app.before_send.append(allow_every_method)
    bodies = _request_bodies(app, schema["components"]["schemas"])
    bounds = _parameter_bounds(app)
    for path, item in schema.get("paths", {}).items():
        # The same patterns the auth middleware matches (regular expressions).
        public = any(re.match(p, path) for p in public_paths)
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            _document_errors(operation, path, public)
            if (path, method) in CONTENT:
                content, only = CONTENT[(path, method)]
                ok = operation["responses"]["200"]
                ok["content"] = {**({} if only else ok.get("content", {})), **content}
            if (path, method) in EXTRA_SUCCESS:
                status, description = EXTRA_SUCCESS[(path, method)]
                first = next(v for k, v in operation["responses"].items() if k.startswith("2"))
                operation["responses"][status] = {**first, "description": description}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query":
                    continue
                if parameter["name"] in PARAMETER_SCHEMAS:
                    parameter["schema"] = dict(PARAMETER_SCHEMAS[parameter["name"]])
                else:
                    parameter["schema"] = _not_null(parameter["schema"])
                parameter["schema"].update(bounds.get((path, method, parameter["name"]), {}))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and (path, method) in bodies:
                body["schema"] = bodies[(path, method)]


_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _parameter_bounds(app: Litestar) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Bounds of every query parameter, from the handlers' own declarations (Litestar's
    document leaves out a bound of 0, so ``ge=0`` would read as unbounded)."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for route, handler in _handlers(app):
        for name, field in handler.parsed_fn_signature.parameters.items():
            declared = field.kwarg_definition
            limits = {
                key: getattr(declared, attr)
                for attr, key in _BOUNDS.items()
                if getattr(declared, attr, None) is not None
            }
            if limits:
                for method in handler.http_methods:
                    found[(_openapi_path(route.path), method.lower(), name)] = limits
    return found


def _handlers(app: Litestar) -> Iterator[tuple[Any, Any]]:
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            yield route, handler


def _openapi_path(path: str) -> str:
    """``/x/{id:uuid}`` (Litestar's route path) -> ``/x/{id}`` (OpenAPI's)."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is never null: ``oneOf [X, null]`` plus bounds beside it (where
    Litestar puts them, and where they bind nothing) becomes X with its bounds."""
    options = schema.get("oneOf")
    if not options or not any(o.get("type") == "null" for o in options):
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1:
        return schema
    return {**kept[0], **{k: v for k, v in schema.items() if k != "oneOf"}}


#: Fields a handler requires although their type allows leaving them out (it checks them
#: together, so that one answer names every missing field).
REQUIRED: dict[str, list[str]] = {
    "VerifyCompletionBody": ["task_id", "completion_time", "output_hash"],
}


def _request_bodies(app: Litestar, components: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(OpenAPI path, method) -> schema of the body its handler decodes; their component
    schemas are added to ``components``."""
    found: list[tuple[tuple[str, str], Any]] = []
    for route, handler in _handlers(app):
        data = handler.parsed_fn_signature.parameters.get("data")
        if data is not None:
            for method in handler.http_methods:
                found.append(((_openapi_path(route.path), method.lower()), data.annotation))
    generated, extra = msgspec.json.schema_components(
        [annotation for _, annotation in found], ref_template="#/components/schemas/{name}"
    )
    schemas = list(generated)
    for name, component in extra.items():
        short = name.rsplit(".", 1)[-1]
        if short in REQUIRED:
            component["required"] = sorted({*component.get("required", []), *REQUIRED[short]})
            for field in REQUIRED[short]:  # required means present and not null
                options = component["properties"][field].pop("anyOf", None)
                if options:
                    component["properties"][field].update(
                        next(o for o in options if o.get("type") != "null")
                    )
        components[name] = component
    for index, schema in enumerate(schemas):
        # A body its handler requires fields of is required itself (``X | None`` -> ``X``).
        refs = [s.get("$ref", "") for s in schema.get("anyOf", [])]
        if any(ref.rsplit(".", 1)[-1].rsplit("/", 1)[-1] in REQUIRED for ref in refs):
            schemas[index] = {"$ref": next(ref for ref in refs if ref)}
    return {key: schema for (key, _), schema in zip(found, schemas, strict=True)}


NDJSON = {"schema": {"type": "string", "description": "one JSON document per line"}}
#: Other bodies a success may have: (path, method) -> {media type: body} (``only``: the
#: documented one is replaced).
CONTENT: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {
    ("/api/v1/audit/export", "get"): ({"application/x-ndjson": NDJSON}, True),
    ("/api/v1/events", "get"): ({"application/x-ndjson": NDJSON}, False),
    ("/metrics", "get"): (
        {"text/plain": {"schema": {"type": "string", "description": "Prometheus text format"}}},
        True,
    ),
}

#: Successes besides the one Litestar documents: (path, method) -> (status, description).
EXTRA_SUCCESS: dict[tuple[str, str], tuple[str, str]] = {
    ("/api/v1/agents", "post"): ("200", "Registered again by its owner: nothing changed"),
}


def _document_errors(operation: dict[str, Any], path: str, public: bool) -> None:
    responses = operation.setdefault("responses", {})
    if public:
        operation["security"] = []
    for status, description in ERRORS.items():
        if public and status not in PUBLIC_ERRORS:
            continue
        content = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
        if path.startswith(UPSTREAM_PATHS) and status == 500:
            responses["502"] = {"description": UPSTREAM_FAILED, "content": content}
        if path == "/ready" and status == 503:
            # Not ready is an answer, not an error: the same body as ready.
            content = responses["200"]["content"]
        responses[str(status)] = {"description": description, "content": content}
