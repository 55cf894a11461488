"""``chorus cluster``'s layout as written down, before anything runs: where its read
models go, what each node's config says, and how a client carries its credentials to
every node."""

from __future__ import annotations

import pytest
from chorus.cluster import node_config, shared_read_store_url
from chorus.contracts.servers import servers
from chorus.settings import Settings


def test_the_read_models_share_the_events_postgresql_database_in_a_schema_of_their_own() -> None:
    events = "postgresql://chorus:pw@db:5432/chorus"
    assert shared_read_store_url(Settings(database_url=events)) == f"{events}?schema=read"
    in_schema = Settings(database_url=f"{events}?schema=run_1&sslmode=disable")
    assert shared_read_store_url(in_schema) == f"{events}?sslmode=disable&schema=run_1_read"


def test_with_the_events_in_sqlite_the_read_models_stay_in_the_data_directory() -> None:
    assert shared_read_store_url(Settings(database_url="sqlite:///tmp/events.db")) is None
    assert shared_read_store_url(Settings()) is None


def test_a_node_config_names_the_node_its_monitoring_port_and_every_route() -> None:
    config = node_config("nats-2", 6002, [6001, 6002, 6003], 8002)
    assert 'server_name: "nats-2"' in config
    assert 'http: "127.0.0.1:8002"' in config
    assert 'listen: "127.0.0.1:6002"' in config
    for port in (6001, 6002, 6003):
        assert f"nats-route://127.0.0.1:{port}" in config
    assert "include" not in config and "authorization" not in config  # an open bus


def test_a_secured_node_includes_the_users_and_its_routes_authenticate() -> None:
    config = node_config("nats-1", 6001, [6001, 6002], 8001, route_secret="s3cret")
    assert 'include "../users.conf"' in config
    assert 'authorization { user: "route", password: "s3cret" }' in config
    assert '"nats-route://route:s3cret@127.0.0.1:6002"' in config


def test_credentials_leave_the_node_urls_for_the_connection_options() -> None:
    """So the servers a cluster announces (never with credentials) get them too."""
    urls = "nats://chorus-engine:p%2Fw@127.0.0.1:4001,nats://chorus-engine:p%2Fw@127.0.0.1:4002"
    assert servers(urls) == (
        ["nats://127.0.0.1:4001", "nats://127.0.0.1:4002"],
        {"user": "chorus-engine", "password": "p/w"},
    )
    assert servers("nats://tok@h:1") == (["nats://h:1"], {"token": "tok"})
    assert servers("nats://h:1, nats://h:2") == (["nats://h:1", "nats://h:2"], {})


def test_one_client_is_one_user() -> None:
    with pytest.raises(ValueError, match="different credentials"):
        servers("nats://a:x@h:1,nats://b:y@h:2")
