"""``WS /api/v1/agents/feed``: live status updates of every agent, and health checks.

Served from the gateway's shared subscription to ``chorus.evt.>``: live from the moment
the socket is accepted (the socket joins it before the handshake completes, so nothing
recorded after the connection opened is missed), or everything after ``?since=<position>``
first (from an ordered consumer of the socket's own). Each agent event becomes one message naming the agent::

    {"type": "agent_status", "agent_id": "agent-7", "status": "offline",
     "event": "AgentWentOffline", "position": 812, "version": 4,
     "occurred_at": "...", "data": {...}}

Without ``since`` (and unless ``?snapshot=false``), the feed starts with one snapshot of
every registered agent's current status (from the read model), then the live updates::

    {"type": "agent_snapshot", "agents": [{"agent_id", "status", "capabilities",
     "last_seen", "version"}, ...]}

``status`` is what the event made the agent (``online``, ``offline``, ``retired``); for an
event that does not change it (capabilities, verdicts) it is the agent's status in the
read model, where ``busy`` shows.

Becoming busy or idle happens through sessions and workflow phases, so the feed also
follows the session and workflow events that assign or release work (``ASSIGNING``): for
each, once the agents read model has applied it, every agent with a task in that session
or workflow whose status changed gets a message (``event`` names the session or workflow
event, ``data`` carries ``{"aggregate", "aggregate_id"}``). Statuses are read from the
read model once it has applied the event (waiting at most ``READ_MODEL_WAIT``), so an
update is never older than its event, but a busy spell shorter than the read model's lag
behind the feed may be coalesced away.

Fan-out. Live sockets share one upstream subscription (``chorus.gateway.fanout``), and the
read-model lookups an event needs (the agent's name and status, the agents of a session
or workflow) run once per event for all sockets (``Lookups``), not once per socket: each
socket only filters the shared answers by what it watches and what it last sent. Each
status message is encoded once for every socket that sends it (``Lookups.encoded``), and
a batch of them goes out in one write where the server gives the socket a frame writer
(``chorus.gateway.fanout``); events that concern no agent (most of the log) are passed
over by the channel itself while the socket keeps up, without waking the socket's task
(``AgentFeed.deliver``). A socket too slow to keep up is told so (``{"type": "error",
"code": "too_slow", "position": <last sent>}``) and closed with code 4429: reconnect with
``?since=`` that position to resume.

Client messages (JSON objects; the text ``ping`` is answered ``pong``):

- ``{"type": "subscribe_agent", "agent_id": "agent-7"}`` narrows the feed to the agents
  named so far (acknowledged ``{"type": "subscribed", "agents": [...]}``);
  ``{"type": "subscribe_all"}`` widens it again.
- ``{"type": "trigger_health_check", "timeout": 2}`` sends a NATS request to
  ``chorus.agent.<id>.ping`` of every online (or busy) agent at once and answers
  ``{"type": "health_check", "answered": [...], "missing": [...], "timeout": 2.0}``;
  an agent that does not reply within ``timeout`` seconds (default 2, at most 30) is missing.

Anything else gets ``{"type": "error", "code": ..., "message": ...}``; the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, NamedTuple

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts.agents import agent_uuid
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.feed import EventRecord
from chorus.contracts.subjects import EVT_PREFIX, agent_ping_subject, is_token
from chorus.gateway.auth import can_read
from chorus.gateway.fanout import Channel, Frame, Listener, frame_writer, text_frame
from chorus.gateway.feeds import pump_and_listen
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import agents as read_model
from chorus.projections.sessions import SEES_ALL_RESULTS
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromQuery, QueryParameter
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy

DEFAULT_PING_TIMEOUT = 2.0
#: How long the pump waits for the agents read model to apply an event before it reads
#: the status anyway: short, so a lagging projector slows the feed but never stalls it.
READ_MODEL_WAIT = 0.2
MAX_PING_TIMEOUT = 30.0
#: Session and workflow events that can make an agent busy or idle.
ASSIGNING = frozenset({
    "SessionOpened", "ResultSubmitted", "ParticipantReplaced", "SessionFinalised",
    "SessionTimedOut", "SessionCancelled", "PhaseStarted", "PhaseCompleted", "PhaseFailed",
    "WorkflowFailed", "WorkflowCancelled",
})  # fmt: skip

_record = msgspec.json.Decoder(EventRecord)


class AgentStatus(msgspec.Struct, kw_only=True):
    type: str = "agent_status"
    agent_id: str
    status: str | None
    event: str
    position: int
    version: int
    occurred_at: str
    data: dict[str, Any]


_encoder = msgspec.json.Encoder()


def agent_event(record: EventRecord, name: str, status: str | None, sees: bool) -> AgentStatus:
    """The message of an agent's own event (``sees``: with a verdict's output hash)."""
    return AgentStatus(
        agent_id=name, status=status, event=record.type, position=record.position,
        version=record.version, occurred_at=read_model.stamp(record.occurred_at),
        data=read_model.shown_data(record, with_output_hash=sees),
    )  # fmt: skip


def assignment(record: EventRecord, name: str, status: str) -> AgentStatus:
    """The message of a session or workflow event that changed an agent's status."""
    return AgentStatus(
        agent_id=name, status=status, event=record.type, position=record.position,
        version=record.version, occurred_at=read_model.stamp(record.occurred_at),
        data={"aggregate": record.aggregate, "aggregate_id": record.aggregate_id},
    )  # fmt: skip


class Encoded(NamedTuple):
    """A message as text (for ``send_text``) and as a whole WebSocket frame."""

    text: str
    wire: bytes


CLOSE_TOO_SLOW = 4429
#: How many events' lookups (and encoded messages) are remembered for sockets that are a
#: little behind.
LOOKUPS_KEPT = 4096


def about_agents(frame: Frame) -> bool:
    """Whether the feed may show anything for this event: an agent's own, or one that
    assigns or releases work."""
    aggregate, event_type = frame.kind
    return aggregate == "agent" or event_type in ASSIGNING


def _statuses_of_assigned(conn: Any, aggregate_id: str) -> list[tuple[str, str]]:
    """(agent, status) of every agent with a task in this session or workflow: in one
    trip to a worker thread, not one per agent."""
    found = []
    for name in read_model.agents_of(conn, aggregate_id):
        view = read_model.get_agent(conn, name)
        if view is not None:
            found.append((name, str(view.status)))
    return found


class Lookups:
    """The read-model lookups of the agents feed, shared by every socket of a gateway:
    each event's answer is computed once (by the first socket that needs it, the others
    awaiting the same task) and remembered for ``LOOKUPS_KEPT`` events."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.names: dict[str, str] = {}  # aggregate uuid -> agent name (never changes)
        self._answers: OrderedDict[tuple[str, int], asyncio.Task[Any]] = OrderedDict()
        self._encoded: OrderedDict[tuple[Any, ...], Encoded] = OrderedDict()

    def encoded(
        self, key: tuple[Any, ...], message: Callable[..., AgentStatus], *args: Any
    ) -> Encoded:
        """``message(*args)`` as text and as a WebSocket frame, encoded once for every
        socket that sends the same message (``key`` names it: event position, agent,
        status, variant)."""
        frame = self._encoded.get(key)
        if frame is None:
            data = _encoder.encode(message(*args))
            frame = self._encoded[key] = Encoded(data.decode(), text_frame(data))
            while len(self._encoded) > LOOKUPS_KEPT:
                self._encoded.popitem(last=False)
        return frame

    async def _once(self, key: tuple[str, int], make: Callable[[], Awaitable[Any]]) -> Any:
        task = self._answers.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._answers[key] = asyncio.ensure_future(make())
            while len(self._answers) > LOOKUPS_KEPT:
                self._answers.popitem(last=False)
        return await asyncio.shield(task)

    async def status(self, record: EventRecord, name: str) -> str | None:
        """The agent's status in the read model once it has applied ``record`` (waiting
        at most ``READ_MODEL_WAIT``), or None if the agent is not there."""

        async def read() -> str | None:
            await self.services.wait_for_projection(
                read_model.NAME, record.position, READ_MODEL_WAIT
            )
            view = await self.services.read(read_model.get_agent, name)
            return None if view is None else str(view.status)

        return await self._once(("status", record.position), read)  # type: ignore[no-any-return]

    async def assigned(self, record: EventRecord) -> list[tuple[str, str]]:
        """(agent, status) of every agent with a task in the record's session or workflow,
        read once the read model has applied it."""

        async def read() -> list[tuple[str, str]]:
            await self.services.wait_for_projection(
                read_model.NAME, record.position, READ_MODEL_WAIT
            )
            return await self.services.read(_statuses_of_assigned, record.aggregate_id)  # type: ignore[no-any-return]

        return await self._once(("assigned", record.position), read)  # type: ignore[no-any-return]

    async def name_of(self, record: EventRecord) -> str | None:
        """The agent's name: registration carries it; later events only the aggregate id,
        looked up in the read model, else in the store (the read model may lag the feed)."""
        uuid = record.aggregate_id
        if (registered := read_model.registered_name(record)) is not None:
            self.names[uuid] = registered
        if uuid not in self.names:
            name = await self.services.read(read_model.agent_name, uuid)
            if name is None:
                first = await self.services.read_history("agent", uuid, limit=1)
                if first:
                    name = read_model.registered_name(first[0])
            if name is None:
                return None
            self.names[uuid] = name
        return self.names[uuid]


class AgentFeed:
    """One WebSocket: the agent event pump and the client's messages, side by side."""

    def __init__(self, socket: WebSocket[Any, Any, Any], services: Services, since: int) -> None:
        self.socket = socket
        self.services = services
        self.lookups: Lookups = services.feeds.shared("agents-feed", lambda: Lookups(services))
        self.last = since
        self.watch: set[str] | None = None  # None: every agent
        self.sent: dict[str, str | None] = {}  # agent -> the status last sent
        self.checks: set[asyncio.Task[None]] = set()
        self.writer = frame_writer(socket.scope)
        #: Status messages of the batch being handled, sent together.
        self.outbox: list[Encoded] = []
        self._send_lock = asyncio.Lock()

    async def send(self, message: Any) -> None:
        text = message if isinstance(message, str) else _encoder.encode(message).decode()
        async with self._send_lock:
            await self.socket.send_text(text)

    async def flush(self) -> None:
        """Send the outbox: in one write through the socket's frame writer if it has one."""
        messages, self.outbox = self.outbox, []
        if not messages:
            return
        async with self._send_lock:
            if self.writer is None:
                for message in messages:
                    await self.socket.send_text(message.text)
                return
            if not await self.writer.drain():
                raise WebSocketDisconnect(detail="the socket closed", code=1006)
            self.writer.write(b"".join(message.wire for message in messages))

    def deliver(self, frames: Sequence[Frame]) -> bool:
        """``Listener.direct``: pass over, in the channel's task, frames that concern no
        agent; any other leaves the whole batch to ``pump``."""
        if any(frame.position > self.last and about_agents(frame) for frame in frames):
            return False
        self.last = max(self.last, frames[-1].position)
        return True

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    # Agent events ---------------------------------------------------------------------------

    async def pump(self, listener: Listener) -> None:
        listener.direct = self.deliver
        while True:
            batch = await listener.next_batch()
            if batch is None:
                await self.send({
                    "type": "error", "code": "too_slow", "position": self.last,
                    "message": "this socket fell too far behind the feed; reconnect with "
                    "?since=<position> to resume",
                })  # fmt: skip
                await self.socket.close(code=CLOSE_TOO_SLOW, reason="too_slow")
                return
            for frame in batch:
                if frame.position <= self.last:
                    continue
                self.last = frame.position
                await self.on_frame(frame)
            await self.flush()

    async def on_frame(self, frame: Frame) -> None:
        if not about_agents(frame):
            return  # skipped before decoding: most of the log is not about agents
        record = frame.record
        if record is None:
            return
        if record.aggregate != "agent":
            await self.assignment_changed(record)
            return
        name = await self.lookups.name_of(record)
        if name is None or (self.watch is not None and name not in self.watch):
            return
        status = read_model.status_of_event(record)  # the status rule, written once
        if status is None or status == read_model.ONLINE:  # online may in fact be busy
            seen = await self.lookups.status(record, name)
            if seen is not None and (status is None or seen == "busy"):
                # The read model may be ahead of a replayed event: it only tells what
                # the event itself does not (busy, or the status it left unchanged).
                status = seen
        self.sent[name] = status
        sees = self._sees_output_hash(name)
        key = ("agent", record.position, name, status, sees)
        self.outbox.append(self.lookups.encoded(key, agent_event, record, name, status, sees))

    def _sees_output_hash(self, name: str) -> bool:
        """A verdict's ``output_hash`` is another agent's answer in short: an agent sees it
        only for itself (it could copy it into a session still open); operators, admins
        and auditors see it."""
        principal = self.socket.scope.get("user")
        role = getattr(principal, "role", "")
        return role in SEES_ALL_RESULTS or getattr(principal, "actor", None) == name

    async def assignment_changed(self, record: EventRecord) -> None:
        """A session or phase event: tell the agents whose status it changed."""
        for name, status in await self.lookups.assigned(record):
            if self.watch is not None and name not in self.watch:
                continue
            if self.sent.get(name) == status:
                continue
            self.sent[name] = status
            key = ("assigned", record.position, name, status)
            self.outbox.append(self.lookups.encoded(key, assignment, record, name, status))

    # Client messages --------------------------------------------------------------------------

    async def listen(self) -> None:
        while True:
            text = await self.socket.receive_text()
            if text.strip().lower() == "ping":
                await self.send("pong")
                continue
            try:
                message = json.loads(text)
            except ValueError:
                await self.error("invalid_json", "messages are JSON objects with a `type`")
                continue
            if not isinstance(message, dict):
                await self.error("invalid_message", "messages are JSON objects with a `type`")
                continue
            await self.handle(message)

    async def handle(self, message: dict[str, Any]) -> None:
        match message.get("type"):
            case "subscribe_agent":
                agent_id = message.get("agent_id")
                if not isinstance(agent_id, str) or not await self.exists(agent_id):
                    await self.error("agent_not_found", f"agent {agent_id!r} is not registered")
                    return
                self.watch = {*(self.watch or ()), agent_id}
                await self.send({"type": "subscribed", "agents": sorted(self.watch)})
            case "subscribe_all":
                self.watch = None
                await self.send({"type": "subscribed", "agents": "*"})
            case "trigger_health_check":
                timeout = message.get("timeout", DEFAULT_PING_TIMEOUT)
                if (
                    isinstance(timeout, bool)
                    or not isinstance(timeout, int | float)
                    or not 0 < timeout <= MAX_PING_TIMEOUT
                ):
                    await self.error(
                        "invalid_message",
                        f"timeout must be a number of seconds in (0, {MAX_PING_TIMEOUT:g}]",
                    )
                    return
                task = asyncio.create_task(self.health_check(float(timeout)))
                self.checks.add(task)
                task.add_done_callback(self.checks.discard)
            case kind:
                await self.error(
                    "unknown_message_type",
                    f"unknown message type {kind!r}; known: subscribe_agent, subscribe_all, "
                    "trigger_health_check (or the text ping)",
                )

    async def exists(self, agent_id: str) -> bool:
        if not is_token(agent_id):
            return False
        if await self.services.read(read_model.get_agent, agent_id) is not None:
            return True
        return bool(await self.services.read_history("agent", str(agent_uuid(agent_id)), limit=1))

    async def health_check(self, timeout: float) -> None:
        """Ping every online agent at once; who answers within ``timeout`` is alive."""
        agents: list[str] = await self.services.read(read_model.reachable_agents)
        answers = await asyncio.gather(*(self.ping(agent, timeout) for agent in agents))
        await self.send(
            {
                "type": "health_check",
                "answered": [a for a, ok in zip(agents, answers, strict=True) if ok],
                "missing": [a for a, ok in zip(agents, answers, strict=True) if not ok],
                "timeout": timeout,
            }
        )

    async def ping(self, agent_id: str, timeout: float) -> bool:
        try:
            await self.services.nc.request(agent_ping_subject(agent_id), b"", timeout=timeout)
        except (NatsTimeout, NoRespondersError):
            raise_if_cancelling()
            return False
        except Exception:  # a closing connection, say: the agent did not answer either way
            raise_if_cancelling()
            return False
        return True

    async def snapshot(self) -> None:
        """Every agent's current status, as the read model has it, in one message before
        the live updates: a new dashboard starts from the whole fleet."""
        agents: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.services.read(read_model.list_agents, limit=500, cursor=cursor)
            for view in page.items:
                self.sent[view.agent_id] = view.status
                agents.append({"agent_id": view.agent_id, "status": view.status,
                               "capabilities": view.capabilities, "last_seen": view.last_seen,
                               "version": view.version})  # fmt: skip
            cursor = page.next_cursor
            if cursor is None:
                break
        await self.send({"type": "agent_snapshot", "agents": agents})

    async def serve(self, listener: Listener, snapshot: bool = False) -> None:
        if snapshot:
            await self.snapshot()
        await pump_and_listen(self.pump(listener), self.listen(), also=lambda: list(self.checks))


@websocket("/api/v1/agents/feed", guards=[can_read])
async def agent_feed(
    socket: WebSocket[Any, Any, Any],
    services: ServicesDep,
    since: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
    snapshot: FromQuery[bool] = True,
) -> None:
    # Subscribed before the handshake completes: "live from now" has no gap. Live sockets
    # share the gateway's channel; a replay from a position has a consumer of its own.
    listener = Listener()
    subject = f"{EVT_PREFIX}.>"
    replay = (
        None
        if since is None
        else Channel(
            services.nc, subject, DeliverPolicy.ALL, head=services.history.head, private=True
        )
    )
    try:
        if replay is None:
            await services.feeds.join(subject, listener)
        else:
            replay.listeners.add(listener)
            await asyncio.shield(replay.ready)
        await socket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            await AgentFeed(socket, services, since or 0).serve(
                listener, snapshot=snapshot and since is None
            )
    finally:
        if replay is None:
            services.feeds.leave(subject, listener)
        else:
            await replay.close()
