"""`chorus schema` publishes the bus contracts an agent needs, from the enforced Structs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema
import msgspec
from chorus.cli import main
from chorus.contracts.subjects import (
    AGENT_PING,
    DEAD_LETTER,
    EVENT,
    REPLY_INBOX,
    TASK_INBOX,
    command_template,
)
from chorus.contracts.tasks import TaskMessage
from chorus.schema import PUBLIC_COMMANDS, asyncapi, contract_broker, json_schemas


def test_chorus_schema_writes_json_schema_and_asyncapi(tmp_path: Path, capsys: object) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    contracts = json.loads((tmp_path / "contracts.schema.json").read_text())
    spec = json.loads((tmp_path / "asyncapi.json").read_text())
    assert set(contracts["contracts"]) >= {
        "session.open",
        "session.submit_result",
        "session.cancel",
        "Reply",
        "EventRecord",
    }
    assert spec["asyncapi"].startswith("3.")
    assert spec["channels"]["session_submit_result"]["address"] == (
        "chorus.cmd.{actor_id}.session.submit_result"
    )


def test_the_internal_timeout_command_is_not_published() -> None:
    assert not any("timeout" in name for name in json_schemas()["contracts"])
    assert "session_timeout" not in asyncapi()["channels"]


def test_the_open_schema_states_the_limits_the_engine_enforces() -> None:
    schemas = json_schemas()["$defs"]
    open_session = schemas["OpenSession"]["properties"]
    assert open_session["timeout_seconds"]["minimum"] == 1
    assert open_session["timeout_seconds"]["maximum"] == 86_400
    assert open_session["participants"]["maxItems"] == 1000
    assert schemas["OpenSession"]["additionalProperties"] is False
    # And the schema round-trips through msgspec's own JSON.
    assert msgspec.json.decode(msgspec.json.encode(schemas))


ASYNCAPI_3 = Path(__file__).parents[1] / "fixtures" / "asyncapi" / "3.0.0.json"


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    schema = json.loads(ASYNCAPI_3.read_text())
    document = json.loads(json.dumps(asyncapi()))
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(document)]  # fmt: skip
    assert errors == []
    for ref in _refs(document):
        assert _resolve(document, ref) is not None, ref


def test_the_asyncapi_document_is_generated_from_the_contracts_broker() -> None:
    broker, declared = contract_broker()
    document = asyncapi()
    # Every public command is a channel FastStream wrote from a declared publisher, on the
    # subject template contracts.subjects owns, with its actor as a parameter.
    for command, cls in PUBLIC_COMMANDS.items():
        channel = document["channels"][command.replace(".", "_")]
        assert channel["address"] == command_template(*command.split("."))
        assert set(channel["parameters"]) == {"actor_id"}
        operation = document["operations"][command.replace(".", "_")]
        assert operation["action"] == "send"
        assert operation["reply"]["channel"] == {"$ref": "#/channels/reply"}
        [ref] = channel["messages"].values()
        payload = _resolve(document, _resolve(document, ref["$ref"])["payload"]["$ref"])
        assert payload == _resolve(document, "#/components/schemas/Envelope_" + cls.__name__ + "_")
    subjects = {c["address"] for c in document["channels"].values()}
    assert {TASK_INBOX, AGENT_PING, EVENT, DEAD_LETTER, REPLY_INBOX} <= subjects
    assert len(broker.publishers) == len(PUBLIC_COMMANDS) + 1  # and tool.call
    # The payload schemas are msgspec's, the ones the engine decodes with.
    inbox = document["components"]["messages"]["task_inbox:SubscribeMessage"]
    assert inbox["payload"] == {"$ref": "#/components/schemas/TaskMessage"}
    assert declared["TaskMessage"] is TaskMessage
    task = document["components"]["schemas"]["TaskMessage"]
    assert {v["$ref"].rsplit("/", 1)[-1] for v in task["anyOf"]} == {
        "PhaseTask", "SessionTask", "CancelTask"
    }  # fmt: skip
    open_session = document["components"]["schemas"]["OpenSession"]
    exported = json.dumps(json_schemas()["$defs"]["OpenSession"])
    assert open_session == json.loads(exported.replace("#/$defs/", "#/components/schemas/"))
