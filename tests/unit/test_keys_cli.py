"""``chorus keys create`` prints the key (stdout) and the agent's bus credentials (stderr),
and writes the embedded server's users: the key is a NATS user, revoked keys are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chorus.cli import main


def test_create_prints_the_key_alone_on_stdout_and_bus_credentials_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--actor", "agent-7", "--role", "agent",
                 "--data-dir", str(tmp_path), "--init"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("chk_") and "\n" not in key
    key_id = key.split("_")[1]
    assert f"user      {key_id}" in err
    assert 'inbox_prefix="_INBOX_agent-7"' in err
    assert "chorus.cmd.agent-7.>" in err
    assert key not in err  # the secret is shown once, on stdout
    config = (tmp_path / "nats" / "users.conf").read_text()
    assert key not in config  # only its bcrypt hash
    users = json.loads(config.removeprefix("authorization: "))["users"]
    mine = next(u for u in users if u["user"] == key_id)
    assert mine["password"].startswith("$2")
    assert mine["permissions"]["publish"]["allow"] == ["chorus.cmd.agent-7.>"]
    assert "_INBOX.>" not in json.dumps(mine)
    assert oct((tmp_path / "nats" / "users.conf").stat().st_mode & 0o777) == "0o600"

    assert main(["keys", "revoke", key_id, "--data-dir", str(tmp_path)]) == 0
    config = (tmp_path / "nats" / "users.conf").read_text()
    assert key_id not in config


@pytest.mark.parametrize("actor", ["System", "SYSTEM", "engine", "a:b", "x@y"])
def test_keys_for_reserved_or_odd_actor_names_are_refused(
    tmp_path: Path, actor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["keys", "create", "--actor", actor, "--role", "agent",
                 "--data-dir", str(tmp_path), "--init"])  # fmt: skip
    assert code == 2
    assert "actor" in capsys.readouterr().err
