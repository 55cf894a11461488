"""RFC 9457 problem details for every error, each with a stable ``code`` and the request id.

Litestar's ``ProblemDetailsPlugin`` renders them: ``Problem`` is its
``ProblemDetailsException`` with our members (``code``, ``request_id``, ``details``) and
``instance`` filled from the request, and every other handler here answers by building a
``Problem``, so there is one way an error body is written. The plugin's own mapping of
other exceptions is not used: its converters see the exception alone, and ours need the
request (the route's body type names a field's allowed values; failures are logged with
the request id).
"""

from __future__ import annotations

import logging
import sqlite3
import typing
import uuid
from typing import Any

import msgspec
import msgspec.inspect
from chorus.contracts.bounds import MAX_JSON_DEPTH
from chorus.projections.readstore import ReadStoreUnavailable
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsException, ProblemDetailsPlugin
from litestar.types import Message, Scope

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "x-request-id"

#: Status -> (code, title) for errors raised by the framework itself.
_FRAMEWORK_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("body_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
}


class Problem(ProblemDetailsException):
    """An error with a stable code; raised by handlers, rendered as problem details."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            detail=detail, status_code=status, headers=headers,
            type_=f"https://chorus.dev/problems/{code}",
            title=title or code.replace("_", " ").capitalize(),
        )  # fmt: skip
        self.code = code
        self.details = details

    def to_response(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """The plugin's body, with where (``instance``) and which request it was."""
        self.instance = request.url.path
        self.extra = {"code": self.code, "request_id": request_id_of(request.scope)}
        if self.details:
            self.extra["details"] = self.details
        return super().to_response(request)


def problem_details() -> ProblemDetailsPlugin:
    """The plugin for an app: it registers the handler that renders every ``Problem``."""
    return ProblemDetailsPlugin()


def check_cursor(cursor: str | None, decode: Any) -> None:
    """400 ``invalid_cursor`` for a paging cursor this API did not issue."""
    if cursor is not None:
        try:
            decode(cursor)
        except ValueError:
            raise Problem(400, "invalid_cursor", "cursor was not issued by this API") from None


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-Id`` (if sane), else a new one; fixed for the request."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        incoming = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.encode())
        if incoming and len(incoming) <= 128 and all(32 < b < 127 for b in incoming):
            rid = incoming.decode()
        else:
            rid = uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: it sees every response, also errors raised before routing
    (unknown route, wrong method) and by the auth middleware, which a middleware misses."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((REQUEST_ID_HEADER.encode(), request_id_of(scope).encode()))
        message["headers"] = headers


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    title: str,
    detail: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    problem = Problem(status, code, detail, title=title, details=details, headers=headers)
    return problem.to_response(request)


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Field-level details from Litestar/msgspec validation, e.g. unknown or missing fields."""
    fields: list[dict[str, Any]] = []
    extra = exc.extra if isinstance(exc.extra, list) else ([exc.extra] if exc.extra else [])
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            if message == f"'{item.get('key')}'":
                # Litestar's way of saying a required body (or parameter) is absent.
                what = "a JSON body" if item.get("source") == "body" else f"{item.get('key')}"
                message = f"{what} is required"
            field = field_of(message, item.get("key"))
            entry = {"field": field, "message": message, "source": item.get("source")}
            if message.startswith("Invalid enum value") and field and item.get("source") == "body":
                allowed = allowed_values(request, field)
                if allowed:
                    entry["allowed"] = allowed
                    entry["message"] = f"{field} must be one of: {', '.join(map(str, allowed))}"
            fields.append(entry)
    detail = fields[0]["message"] if fields else exc.detail
    return problem_response(
        request, 400, "validation_error", "Invalid request", detail or "invalid request",
        {"fields": fields} if fields else None,
    )  # fmt: skip


def allowed_values(request: Request[Any, Any, Any], field: str) -> list[Any] | None:
    """The values the body's field ``field`` (a dotted path) may take, in declaration
    order, read from the handler's own body type: every bad choice in every body names its
    alternatives the same way, and the list can never disagree with what is validated."""
    try:
        parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
        if parameter is None:
            return None
        info = msgspec.inspect.type_info(parameter.annotation)
    except Exception:  # a body type msgspec cannot describe: no list, the message stays
        return None
    owner: type | None = None
    attribute = ""
    for name in field.split("."):
        info = _concrete(info)
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        found = next((f for f in info.fields if f.encode_name == name), None)
        if found is None:
            return None
        owner, attribute, info = info.cls, found.name, found.type
    if owner is None or not isinstance(_concrete(info), msgspec.inspect.LiteralType):
        return None
    # The declaration itself keeps the order (msgspec's description sorts the values).
    declared = typing.get_type_hints(owner)[attribute]
    while typing.get_origin(declared) is not typing.Literal:
        options = [a for a in typing.get_args(declared) if a is not type(None)]
        if not options:
            return None
        declared = options[0]
    return list(typing.get_args(declared))


def _concrete(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type itself: constraints (``Meta``) unwrapped and ``X | None`` reduced to ``X``."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            options = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(options) != 1:
                return info
            info = options[0]
        else:
            return info


def field_of(message: str, key: object) -> str | None:
    """The dotted path of the offending field.

    Litestar gives the path of the object (``data`` for the body's root) in ``key``; for
    unknown and missing fields msgspec names the field only in the message.
    """
    where = "" if key in (None, "data") else str(key)
    for marker in ("unknown field `", "missing required field `"):
        if marker in message:
            name = message.split(marker, 1)[1].split("`", 1)[0]
            return f"{where}.{name}" if where else name
    return where or ("$" if key == "data" else None)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code, title = _FRAMEWORK_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    if exc.status_code >= 500:
        code, title = "internal_error", "Internal error"
    return problem_response(request, exc.status_code, code, title, exc.detail, None, exc.headers)


def handle_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """The JSON decoder recursed too deep: the body's fault, never a 500."""
    return problem_response(
        request, 400, "nesting_too_deep", "Invalid request",
        f"JSON nested too deeply; the limit is {MAX_JSON_DEPTH}",
        {"max_depth": MAX_JSON_DEPTH},
    )  # fmt: skip


#: A store that cannot be read or written (disk full, file gone, database down): the
#: request's fault is nobody's, and a retry may succeed.
STORE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    StoreOperationalError,
    StoreInterfaceError,
    ReadStoreUnavailable,
)


def handle_store_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning(
        "store unavailable on %s %s (request %s): %s",
        request.method, request.url.path, request_id_of(request.scope), exc,
    )  # fmt: skip
    return problem_response(
        request, 503, "store_unavailable", "Store unavailable",
        "a store could not be read or written (disk full, or the database is down); "
        "retry later",
        headers={"Retry-After": "5"},
    )  # fmt: skip


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, STORE_ERRORS):
        return handle_store_error(request, exc)
    log.exception(
        "unhandled error on %s %s (request %s)",
        request.method, request.url.path, request_id_of(request.scope), exc_info=exc,
        extra={"request_id": request_id_of(request.scope)},
    )  # fmt: skip
    return problem_response(
        request, 500, "internal_error", "Internal error",
        "the gateway failed on this request; the request id identifies it in the logs",
    )  # fmt: skip


#: ``Problem`` itself is the plugin's (``problem_details``); these turn the rest into one.
EXCEPTION_HANDLERS = {
    ValidationException: handle_validation,
    HTTPException: handle_http,
    RecursionError: handle_too_deep,
    sqlite3.OperationalError: handle_store_error,
    StoreOperationalError: handle_store_error,
    StoreInterfaceError: handle_store_error,
    ReadStoreUnavailable: handle_store_error,
    Exception: handle_unexpected,
}

__all__ = [
    "EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "Problem", "add_request_id_header",
    "problem_details",
]  # fmt: skip
