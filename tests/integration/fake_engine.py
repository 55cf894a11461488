"""A scripted engine for tests of the agent side: it records commands and answers as told.

A FastStream subscriber on ``chorus.cmd.>``, so it runs on ``TestNatsBroker`` in memory or
on a real nats-server alike. The engine's own rules are tested with the engine.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from faststream.nats.annotations import NatsMessage

AGENT = "coder-7"
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # the agent's clock: leases are set from it
WAIT = 20  # seconds: a bound on waiting for something that must happen, never a timing check


@dataclass
class ReceivedCommand:
    aggregate: str
    command: str
    command_id: str
    payload: dict[str, Any]


@dataclass
class FakeEngine:
    """Records commands; rejects those named in ``reject`` with the given code."""

    commands: list[ReceivedCommand] = field(default_factory=list)
    beats: int = 0
    reject: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_command(self, msg: NatsMessage) -> bytes | None:
        _, _, actor, aggregate, command = msg.raw_message.subject.split(".")
        assert actor == AGENT
        async with self.changed:
            self.changed.notify_all()
            if command == "heartbeat":
                self.beats += 1
                return None
            body = json.loads(msg.body)
            self.commands.append(
                ReceivedCommand(aggregate, command, body["command_id"], body["payload"])
            )
        reply: dict[str, Any] = {"command_id": body["command_id"], "status": "accepted"}
        if command in self.reject:
            reply = {**reply, "status": "rejected",
                     "error": {"code": self.reject[command], "message": "no"}}  # fmt: skip
        return json.dumps(reply).encode()

    def named(self, *commands: str) -> list[ReceivedCommand]:
        return [c for c in self.commands if c.command in commands]

    async def until(self, predicate: Callable[[], object]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), WAIT)


def phase_task(
    attempt: int = 1, lease: timedelta = timedelta(minutes=10), **extra: Any
) -> dict[str, Any]:
    workflow_id = extra.pop("workflow_id", str(uuid.uuid4()))
    return {
        "kind": "phase", "task_id": f"{workflow_id}/implement", "attempt": attempt,
        "lease_expires_at": (NOW + lease).isoformat(), "priority": "normal",
        "workflow_id": workflow_id, "workflow_type": "quick", "phase": "implement",
        "description": "quick/implement: add two numbers", "requirements": "add two numbers",
        "inputs": {"design": {"api": "add(a, b)"}}, **extra,
    }  # fmt: skip


def session_task(session_id: str | None = None) -> dict[str, Any]:
    sid = session_id or str(uuid.uuid4())
    return {
        "kind": "session", "task_id": sid, "attempt": 1, "session_id": sid,
        "lease_expires_at": (NOW + timedelta(minutes=10)).isoformat(),
        "deadline": (NOW + timedelta(minutes=10)).isoformat(),
        "description": "review PR 7", "criteria": {"require": "majority"},
    }  # fmt: skip
