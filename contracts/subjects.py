"""NATS subject names: the one place that knows how subjects are spelled.

Commands: ``chorus.cmd.<actor_id>.<aggregate>.<command>``. The actor is a subject token
so NATS permissions can pin each agent user to ``chorus.cmd.<its id>.>``.
Events: ``chorus.evt.<aggregate>.<aggregate_id>.<EventType>`` in the EVENTS stream.
Dead letters: ``chorus.dlq.<reason>``.
Health checks: ``chorus.agent.<agent_id>.ping``, a request each agent answers (any body).
Inboxes: ``chorus.task.<agent_id>``, where the engine delivers an agent's tasks
(``chorus.contracts.tasks``); a plain core-NATS subscription receives them.
Partitions: ``chorus.part.<partition>``, engine-only: an engine that took a command of a
partition it does not own passes it on there, to the one engine that does.
"""

from __future__ import annotations

import re

from msgspec import Struct

CMD_PREFIX = "chorus.cmd"
EVT_PREFIX = "chorus.evt"
DLQ_PREFIX = "chorus.dlq"
AGENT_PREFIX = "chorus.agent"
TASK_PREFIX = "chorus.task"
PART_PREFIX = "chorus.part"

#: Every subject as a template with its variable tokens named: the functions below fill
#: them in, and the AsyncAPI document (``chorus.schema``) publishes them as they are.
COMMAND = CMD_PREFIX + ".{actor_id}.{aggregate}.{command}"
EVENT = EVT_PREFIX + ".{aggregate}.{aggregate_id}.{event_type}"
DEAD_LETTER = DLQ_PREFIX + ".{reason}"
AGENT_PING = AGENT_PREFIX + ".{agent_id}.ping"
TASK_INBOX = TASK_PREFIX + ".{agent_id}"
#: Engine-only: the owner of a partition takes its commands here (engine/adapters/partitioned.py).
PARTITION = PART_PREFIX + ".{partition}"
#: Engine-only: an engine says here, after each batch it recorded, that the log has new
#: rows (an empty message: a hint to look, never what to read). A relay in a process of
#: its own (``chorus relay``) reads the store at once instead of at its next poll.
COMMITTED = "chorus.engine.committed"
#: Where a command passed on to a partition's owner keeps the subject it was sent to (its
#: actor, aggregate and command): the owner parses it from there.
COMMAND_SUBJECT_HEADER = "Chorus-Command-Subject"
#: Where an actor's replies arrive (``agent_inbox_prefix``): the bus lets it read no other.
REPLY_INBOX = "_INBOX_{actor_id}.>"

#: Queue group shared by engine workers: each command is handled by exactly one worker.
ENGINE_QUEUE = "chorus-engine"
#: Queue group of a partition's subject: one engine owns a partition, and should two ever
#: believe they do (a handover's race), each command still reaches only one of them.
PARTITION_QUEUE = "chorus-partition"
#: JetStream stream holding every event, fed by the relay.
EVENTS_STREAM = "EVENTS"
#: JetStream stream keeping dead letters for inspection.
DLQ_STREAM = "DLQ"

#: A subject token: no dots, no wildcards, no whitespace.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-:@]{1,128}$")


class CommandSubject(Struct, frozen=True):
    """A parsed command subject."""

    actor: str
    aggregate: str
    command: str


def is_token(value: str) -> bool:
    """True if ``value`` can be used as one subject token (ids, actor names)."""
    return bool(TOKEN_RE.match(value))


def command_subject(actor: str, aggregate: str, command: str) -> str:
    """The subject an actor publishes ``command`` to."""
    if not is_token(actor):
        raise ValueError(f"actor {actor!r} is not a valid subject token")
    return COMMAND.format(actor_id=actor, aggregate=aggregate, command=command)


def command_template(aggregate: str, command: str) -> str:
    """``command``'s subject with the actor left as the ``{actor_id}`` parameter."""
    return COMMAND.format(actor_id="{actor_id}", aggregate=aggregate, command=command)


def parse_command_subject(subject: str) -> CommandSubject | None:
    """Split a command subject, or None if it does not have the expected shape."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "chorus" or parts[1] != "cmd":
        return None
    return CommandSubject(actor=parts[2], aggregate=parts[3], command=parts[4])


#: Tool calls (``chorus.cmd.<actor>.tool.call``) are answered by the gateways in this queue
#: group; the engine leaves them alone (a call may take minutes: never in its command path).
TOOL_QUEUE = "chorus-tools"
TOOL_AGGREGATE = "tool"
#: What the gateways subscribe to (and all their service user may take of ``chorus.cmd``).
TOOL_CALLS = f"{CMD_PREFIX}.*.{TOOL_AGGREGATE}.call"


def is_tool_call(subject: str) -> bool:
    """Whether ``subject`` is a tool call, which the gateways answer, not the engine."""
    parsed = parse_command_subject(subject)
    return parsed is not None and (parsed.aggregate, parsed.command) == (TOOL_AGGREGATE, "call")


def command_wildcard(aggregate: str = "*") -> str:
    """Subscription subject for every actor's commands to ``aggregate``."""
    return f"{CMD_PREFIX}.*.{aggregate}.*"


def event_subject(aggregate: str, aggregate_id: str, event_type: str) -> str:
    return EVENT.format(aggregate=aggregate, aggregate_id=aggregate_id, event_type=event_type)


def event_filter(aggregate: str = "*", aggregate_id: str = "*") -> str:
    """Filter subject for the events of one aggregate instance (or all of a kind)."""
    return event_subject(aggregate, aggregate_id, "*")


def dlq_subject(reason: str) -> str:
    return DEAD_LETTER.format(reason=reason)


def event_message_id(aggregate_id: str, version: int) -> str:
    """JetStream ``Nats-Msg-Id`` of an event: republishing it is absorbed as a duplicate."""
    return f"{aggregate_id}:{version}"


def agent_ping_subject(agent_id: str) -> str:
    """Where an agent answers health-check pings: a NATS request, any reply counts."""
    if not is_token(agent_id):
        raise ValueError(f"agent id {agent_id!r} is not a valid subject token")
    return AGENT_PING.format(agent_id=agent_id)


def task_subject(agent_id: str) -> str:
    """An agent's inbox: every task assigned to it (and every cancel) is delivered here."""
    if not is_token(agent_id):
        raise ValueError(f"agent id {agent_id!r} is not a valid subject token")
    return TASK_INBOX.format(agent_id=agent_id)


def agent_inbox_prefix(actor: str) -> str:
    """An actor's own reply inbox prefix (nats-py ``inbox_prefix``): the bus lets a key
    holder subscribe to its own replies only, never to ``_INBOX.>``."""
    if not is_token(actor):
        raise ValueError(f"actor {actor!r} is not a valid subject token")
    return REPLY_INBOX.format(actor_id=actor).removesuffix(".>")


#: JetStream KV bucket where the engine keeps each agent's last heartbeat time (ISO 8601).
LIVENESS_BUCKET = "chorus_liveness"
#: JetStream KV bucket (in memory) holding the engines' partition table.
PARTITIONS_BUCKET = "chorus_partitions"


def partition_subject(partition: int) -> str:
    """Where the owner of ``partition`` takes the commands other engines pass on."""
    return PARTITION.format(partition=partition)


def liveness_key(agent_id: str) -> str:
    """KV keys allow ``[-/_=.a-zA-Z0-9]``; agent ids may also hold ``:`` and ``@``."""
    return agent_id.replace("=", "=3D").replace(":", "=3A").replace("@", "=40")
