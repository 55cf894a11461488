"""The authorization matrix, generated from the gateway's route table.

Every route of ``create_app(...).routes`` must have a rule in ``RULES`` (the roles that may
call it, or ``PUBLIC``): a new route without one fails ``test_every_route_has_a_rule``.
Then every route is called by every role, with an API key and with a JWT made from it,
and without a credential: a role outside the rule gets 403 ``forbidden``, a role inside it
never gets 401 or 403 ``forbidden``, and no credential gets 401 (except on public routes).
``OBJECT_RULES`` covers who may act on whose resource (own / another's) for every role.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from chorus.gateway.app import create_app
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.state import GatewayConfig
from litestar.routes import ASGIRoute, WebSocketRoute
from websockets.exceptions import InvalidStatus

from tests.integration.test_gateway_support import UNKNOWN_SESSION, open_session

ROLES = ("agent", "operator", "auditor", "admin")
ALL = frozenset(ROLES)
WRITERS = frozenset({"agent", "operator", "admin"})
AUDITORS = frozenset({"auditor", "admin"})
ADMIN = frozenset({"admin"})
MANAGERS = frozenset({"operator", "admin"})
PUBLIC = None

S, W, A = "/api/v1/sessions", "/api/v1/workflows", "/api/v1/agents"
M = "/api/v1/mcp-servers"
SID, WID, AID = "{session_id:uuid}", "{workflow_id:uuid}", "{agent_id:str}"

#: (method, path template) -> roles allowed (WS: a WebSocket route; ASGI: a mounted app,
#: called with POST). Keep in step with the guards: this table is what the README's role
#: column promises.
RULES: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", S): ALL,
    ("POST", S): WRITERS,
    ("GET", f"{S}/{SID}"): ALL,
    ("GET", f"{S}/{SID}/events"): AUDITORS,
    ("POST", f"{S}/{SID}/results"): WRITERS,
    ("POST", f"{S}/{SID}/cancel"): WRITERS,
    ("WS", f"{S}/{SID}/feed"): ALL,
    ("GET", W): ALL,
    ("POST", W): WRITERS,
    ("GET", f"{W}/{WID}"): ALL,
    ("GET", f"{W}/{WID}/events"): AUDITORS,
    ("POST", f"{W}/{WID}/cancel"): WRITERS,
    ("WS", f"{W}/{WID}/feed"): ALL,
    ("POST", "/execute-workflow"): WRITERS,
    ("GET", "/workflow-status/{workflow_id:uuid}"): ALL,
    ("GET", "/api/v1/workflow-types"): ALL,
    ("POST", "/api/v1/workflow-types"): ADMIN,
    ("GET", "/workflow-types"): ALL,
    ("GET", A): ALL,
    ("POST", A): WRITERS,
    ("GET", f"{A}/{AID}"): ALL,
    ("GET", f"{A}/{AID}/events"): AUDITORS,
    ("GET", f"{A}/{AID}/metrics"): ALL,
    ("GET", "/api/v1/verdicts/recent"): ALL,
    ("GET", f"{A}/{AID}/tasks"): ALL,  # an agent key: its own tasks only (object rule)
    ("PUT", f"{A}/{AID}/capabilities"): WRITERS,
    ("POST", f"{A}/{AID}/retire"): WRITERS,
    ("POST", f"{A}/{AID}/heartbeat"): WRITERS,
    ("POST", f"{A}/{AID}/verify-completion"): WRITERS,
    ("WS", f"{A}/feed"): ALL,
    ("GET", "/api/v1/events"): AUDITORS,
    ("GET", "/api/v1/audit/export"): AUDITORS,
    ("GET", "/api/v1/audit/public-key"): AUDITORS,
    ("GET", "/api/v1/audit/verify"): AUDITORS,
    ("POST", "/api/v1/auth/token"): ALL,
    ("GET", "/api/v1/tools"): ALL,
    # The MCP endpoint: any role may connect; each tool checks the caller's role itself.
    ("ASGI", "/mcp"): ALL,
    ("GET", M): ALL,
    ("POST", M): MANAGERS,
    ("GET", f"{M}/{{name:str}}"): ALL,
    ("PATCH", f"{M}/{{name:str}}"): MANAGERS,
    ("DELETE", f"{M}/{{name:str}}"): MANAGERS,
    ("POST", f"{M}/{{name:str}}/discover"): MANAGERS,
    ("GET", f"{M}/{{name:str}}/health"): ALL,
    ("POST", f"{M}/{{name:str}}/tools/{{tool:str}}/call"): WRITERS,
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/schema"): PUBLIC,
    ("GET", "/schema/swagger"): PUBLIC,
    ("GET", "/schema/redoc"): PUBLIC,
    ("GET", "/schema/openapi.json"): PUBLIC,
    ("GET", "/schema/oauth2-redirect.html"): PUBLIC,
    ("GET", "/schema/{path:str}"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/asyncapi"): PUBLIC,
    ("GET", "/asyncapi.json"): PUBLIC,
    ("GET", "/static/{file_path:path}"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/metrics"): ALL,
    ("GET", "/"): PUBLIC,
    ("GET", "/console"): PUBLIC,
    ("GET", "/api/v1/console/me"): ALL,
    ("WS", "/api/v1/events/feed"): ALL,  # notices for all; whole events for auditors
}

#: Query parameters that narrow a route's roles (time travel reads the record).
VARIANTS: list[tuple[str, str, dict[str, str], frozenset[str]]] = [
    ("GET", f"{S}/{SID}", {"at_version": "1"}, AUDITORS),
    ("GET", f"{S}/{SID}", {"as_of": "2030-01-01T00:00:00Z"}, AUDITORS),
    ("GET", f"{W}/{WID}", {"at_version": "1"}, AUDITORS),
    ("GET", f"{A}/{AID}", {"at_version": "1"}, AUDITORS),
]


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(GatewayConfig(nats_url="nats://unused", database_url="sqlite:///unused",
                                   read_store_url="sqlite:///unused",
                                   keys_path=str(tmp_path / "matrix-keys.db")))  # fmt: skip
    found = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            found.add(("WS", route.path))
        elif isinstance(route, ASGIRoute):  # a mounted app (MCP): it has no methods of its own
            found.add(("ASGI", route.path))
        else:
            found |= {(m, route.path) for m in route.methods if m not in ("OPTIONS", "HEAD")}
    return found


def test_every_route_has_a_rule(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    missing = sorted(routes - set(RULES))
    stale = sorted(set(RULES) - routes)
    assert not missing, (
        f"routes without an authorization rule: {missing}; add each to RULES in {__file__}"
    )
    assert not stale, f"rules for routes that no longer exist: {stale}"


def concrete(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        return UNKNOWN_SESSION if match.group(2) == "uuid" else "nobody"

    return re.sub(r"\{(\w+):(\w+)\}", value, template)


@pytest.fixture
def gateway_edge() -> EdgeConfig:
    # Calls without a credential are the point here, not something to throttle.
    return EdgeConfig(rate_limits={"auth_failures": "10000/minute", "public": "10000/minute"})


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


async def call(
    http: httpx.AsyncClient, gateway: Any, method: str, path: str, params: dict[str, str],
    headers: dict[str, str],
) -> tuple[int, str | None]:  # fmt: skip
    """Status and problem code (a WebSocket's handshake status: 101 when accepted)."""
    if method == "WS":
        try:
            async with websockets.connect(f"{gateway.ws_url}{path}", additional_headers=headers):
                return 101, None
        except InvalidStatus as refused:
            return refused.response.status_code, None
    if method == "ASGI":
        method = "POST"
    body = {} if method in ("POST", "PUT", "PATCH") else None
    response = await http.request(method, path, params=params, json=body, headers=headers)
    code = None
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        code = response.json().get("code")
    return response.status_code, code


async def test_every_route_by_every_role_with_a_key_and_a_token(http, gateway):
    credentials: dict[tuple[str, str], dict[str, str]] = {}
    for role in ROLES:
        key = gateway.key(f"matrix-{role}", role)
        token = (await http.post("/api/v1/auth/token", headers=key)).json()["access_token"]
        credentials[role, "key"] = key
        credentials[role, "jwt"] = {"Authorization": f"Bearer {token}"}
    cases = [(m, p, {}, roles) for (m, p), roles in RULES.items()] + VARIANTS
    checked = 0
    failures = []
    for method, template, params, roles in cases:
        path = concrete(template)
        status, _ = await call(http, gateway, method, path, params, {})
        anonymous_ok = status != 401 if roles is PUBLIC else status in (401, 403)
        if not anonymous_ok:
            failures.append((method, template, params, "no credential", status))
        if roles is PUBLIC:
            continue
        for (role, kind), headers in credentials.items():
            status, code = await call(http, gateway, method, path, params, headers)
            checked += 1
            if role in roles:
                ok = status != 401 and not (status == 403 and code in ("forbidden", None))
            else:
                ok = status == 403 and code in ("forbidden", None)  # None: a WebSocket's 403
            if not ok:
                failures.append((method, template, params, f"{role} {kind}", status, code))
    assert not failures, "\n".join(map(str, failures))
    assert checked >= 8 * 35


# Own and another's resources ----------------------------------------------------------------

#: action -> roles of *another* actor (not the owner) that may do it. The owner may always.
#: Reads are open to every role on anyone's resource; writes follow the engine's rules.
OBJECT_RULES: dict[str, frozenset[str]] = {
    "submit_result": frozenset(),  # participants only
    "cancel_session": frozenset(),  # coordinator or opener only
    "cancel_workflow": frozenset(),  # the starter only
    "agent_capabilities": frozenset({"operator", "admin"}),  # the agent, its owner, operators
    "agent_heartbeat": frozenset({"operator", "admin"}),
    "read_session": ALL,
    "read_workflow": ALL,
    "read_agent": ALL,
}


async def object_action(
    http: httpx.AsyncClient, action: str, ids: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    match action:
        case "submit_result":
            return await http.post(f"{S}/{ids['session']}/results", json={"result": {"n": 1}},
                                   headers=headers)  # fmt: skip
        case "cancel_session":
            return await http.post(f"{S}/{ids['cancellable']}/cancel", json={"reason": "x"},
                                   headers=headers)  # fmt: skip
        case "cancel_workflow":
            return await http.post(f"{W}/{ids['workflow']}/cancel", json={"reason": "x"},
                                   headers=headers)  # fmt: skip
        case "agent_capabilities":
            return await http.put(f"{A}/{ids['agent']}/capabilities",
                                  json={"capabilities": ["go"]}, headers=headers)  # fmt: skip
        case "agent_heartbeat":
            return await http.post(f"{A}/{ids['agent']}/heartbeat", headers=headers)
        case "read_session":
            return await http.get(f"{S}/{ids['session']}", headers=headers)
        case "read_workflow":
            return await http.get(f"{W}/{ids['workflow']}", headers=headers)
        case "read_agent":
            return await http.get(f"{A}/{ids['agent']}", headers=headers)
    raise AssertionError(action)


async def test_own_and_anothers_resources_for_every_role(http, gateway):
    owner = gateway.key("owner-agent")  # opens, starts and registers itself
    ids = {
        "session": await open_session(http, owner, ["owner-agent"]),
        "cancellable": await open_session(http, owner, ["owner-agent"]),
    }
    started = await http.post(W, json={"requirements": "x", "workflow_type": "quick"},
                              headers=owner)  # fmt: skip
    assert started.status_code == 202, started.text
    ids["workflow"] = started.json()["workflow_id"]
    registered = await http.post(A, json={"name": "owner-agent", "type": "worker",
                                          "capabilities": ["py"]}, headers=owner)  # fmt: skip
    assert registered.status_code == 201, registered.text
    ids["agent"] = "owner-agent"

    failures = []
    for action, others in OBJECT_RULES.items():
        for role in ROLES:
            stranger = gateway.key(f"stranger-{role}", role)
            response = await object_action(http, action, ids, stranger)
            ok = response.status_code < 400 if role in others else response.status_code == 403
            if not ok:
                failures.append((action, role, response.status_code, response.text[:200]))
        # The owner last: cancelling ends what the strangers were tried against.
        response = await object_action(http, action, ids, owner)
        if response.status_code >= 400:
            failures.append((action, "owner", response.status_code, response.text[:200]))
    assert not failures, "\n".join(map(str, failures))
