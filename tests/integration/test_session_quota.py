"""The session quota holds on the bus too, where no gateway stands between an agent and
the engine: an agent key opens at most ``session_quota`` open sessions naming other agents.

The attack (security review): the gateway refused the 21st such session over HTTP, but the
same key opened as many as it liked with ``chorus.cmd.<id>.session.open``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from chorus.bootstrap import EngineService
from nats.aio.client import Client as NATS

from tests.integration.test_bus import send

QUOTA = 3


@pytest.fixture
def engine_options() -> dict[str, Any]:
    return {"session_quota": QUOTA}


def opening(participants: list[str]) -> dict[str, Any]:
    return {"session_id": str(uuid.uuid4()), "task": {"description": "d"},
            "participants": participants}  # fmt: skip


async def test_an_agent_opens_at_most_the_quota_of_sessions_naming_others_on_the_bus(
    engine: EngineService, nc: NATS
) -> None:
    opened = [opening(["agent-2"]) for _ in range(QUOTA)]
    for body in opened:
        assert (await send(nc, "agent-1", "open", body))["status"] == "accepted"
    refused = await send(nc, "agent-1", "open", opening(["agent-2", "agent-3"]))
    assert refused["status"] == "rejected"
    assert refused["error"]["code"] == "session_quota_exceeded"
    assert refused["error"]["details"] == {"open": QUOTA, "quota": QUOTA}

    # Sessions naming only the opener itself, and other openers, are not bound.
    assert (await send(nc, "agent-1", "open", opening(["agent-1"])))["status"] == "accepted"
    assert (await send(nc, "agent-9", "open", opening(["agent-2"])))["status"] == "accepted"

    # Closing one frees a place.
    first = opened[0]["session_id"]
    cancel = {"session_id": first, "reason": "done"}
    assert (await send(nc, "agent-1", "cancel", cancel))["status"] == "accepted"
    again = await send(nc, "agent-1", "open", opening(["agent-2"]))
    assert again["status"] == "accepted", again


async def test_the_count_survives_a_restart_of_the_engine(engine: EngineService, nc: NATS) -> None:
    for _ in range(QUOTA):
        assert (await send(nc, "agent-1", "open", opening(["agent-2"])))["status"] == "accepted"
    await engine.stop()
    await engine.start()
    refused = await send(nc, "agent-1", "open", opening(["agent-2"]))
    assert refused["error"]["code"] == "session_quota_exceeded"


def test_staff_and_an_unset_quota_are_not_bound() -> None:
    from chorus.contracts.sessions import OpenSession, Task
    from chorus.engine.domain.authz import StaticRoles
    from chorus.engine.domain.context import EngineContext
    from chorus.engine.domain.session import check_quota

    cmd = OpenSession(session_id=str(uuid.uuid4()), task=Task(description="d"),
                      participants=["agent-2"])  # fmt: skip
    roles = StaticRoles({"ops-1": {"operator"}})
    bound = EngineContext(roles=roles, session_quota=1, sessions_held=lambda actor: 5)
    check_quota(cmd, "ops-1", bound)  # staff run fleets
    check_quota(cmd, "agent-1", EngineContext(roles=roles, sessions_held=lambda actor: 5))
    with pytest.raises(Exception, match="already holds 5 open sessions"):
        check_quota(cmd, "agent-1", bound)
