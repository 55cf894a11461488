"""The cluster's bus model (``nats-auth.conf``, included by ``nats.conf``) on a real
nats-server: the same least rights as ``chorus up``, and no default passwords."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chorus.natsd import NatsServer, start_nats_server

from tests.integration.test_bus_identity import handshake

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "CHORUS_ENGINE_PASSWORD": "engine-secret",
    "CHORUS_GATEWAY_PASSWORD": "gateway-secret",
    "CHORUS_AGENT_1_PASSWORD": "agent-1-secret",
    "NATS_SYS_PASSWORD": "sys-secret",
}


def server_with_cluster_auth(tmp_path: Path) -> NatsServer:
    """A single node with the cluster's users and permissions (nats.conf's include)."""
    shutil.copy(ROOT / "nats-auth.conf", tmp_path / "nats-auth.conf")
    config = tmp_path / "server.conf"
    config.write_text("include ./nats-auth.conf\n")
    return start_nats_server(tmp_path / "data", config=config, monitor=False)


@pytest.fixture
def cluster_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    server = server_with_cluster_auth(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_nats_conf_includes_the_auth_model_and_publishes_no_defaults() -> None:
    assert "include ./nats-auth.conf" in (ROOT / "nats.conf").read_text()
    compose = (ROOT / "compose.yaml").read_text()
    assert ":-" not in compose  # no default secret anywhere
    assert '"4222:4222"' not in compose and "8222:8222" not in compose
    assert "_INBOX.>" not in (ROOT / "nats-auth.conf").read_text().split("One entry per agent")[1]


def test_the_server_does_not_start_without_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="exited early"):
        server_with_cluster_auth(tmp_path)


async def test_an_agent_user_has_only_its_own_subjects(cluster_auth: NatsServer) -> None:
    url = cluster_auth.url
    assert "PONG" in await handshake(url, "agent-1", "agent-1-secret")
    assert "Authorization Violation" in await handshake(url, "agent-1", "agent-1")
    assert "Authorization Violation" in await handshake(url)
    # The same permission checks as the embedded bus, with the cluster's users.
    from tests.integration.test_bus_identity import Client

    client = Client()
    nc = await client.connect_as(url, "agent-1", "agent-1-secret", "agent-1")
    for subject in ("_INBOX.>", "chorus.cmd.>", "chorus.evt.>"):
        await nc.subscribe(subject)
        assert subject.lower() in await client.refused()
    for subject in ("chorus.cmd.agent-2.session.open", "chorus.evt.session.x.SessionFinalised"):
        await nc.publish(subject, b"{}")
        assert subject.lower() in await client.refused()
    await nc.subscribe("_INBOX_agent-1.>")
    await nc.subscribe("chorus.agent.agent-1.ping")
    await nc.publish("chorus.cmd.agent-1.agent.heartbeat", b"")
    await nc.flush()
    assert not client.violation.is_set()
    await nc.close()
