"""`chorus schema` publishes the bus contracts an agent needs, from the enforced Structs."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from chorus.cli import main
from chorus.schema import asyncapi, json_schemas


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
