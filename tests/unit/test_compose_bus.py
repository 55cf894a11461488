"""``compose.yaml``'s bus users: the one-shot ``nats-users`` writes them from the key store
the gateways write, into the volume every NATS node includes them from, and every node
waits for it to finish (tests/integration/test_nats_conf.py runs the files on real nodes)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from chorus import busauth

from tests.unit.test_composition_root import _mounted

ROOT = Path(__file__).resolve().parents[2]
NODES = ("nats-1", "nats-2", "nats-3")
INIT = "nats-users"
NATS_CONF = "/etc/nats/nats.conf"


def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


def option(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == name]


def included() -> list[str]:
    """The container paths of the files nats.conf includes (relative to nats.conf)."""
    names = re.findall(r"^\s*include\s+(\S+)", (ROOT / "nats.conf").read_text(), re.MULTILINE)
    return [str(PurePosixPath(NATS_CONF).parent / name) for name in names]


def test_nats_conf_includes_the_users_and_the_routes_the_init_writes() -> None:
    init = services()[INIT]["command"]
    assert init[:3] == ["chorus", "bus", "users"]
    out = option(init, "--out")[0]
    written = {f"{out}/{busauth.CONFIG_NAME}", f"{out}/{busauth.ROUTES_NAME}"}
    for name in NODES:
        node = services()[name]
        assert f"./nats.conf:{NATS_CONF}:ro" in node["volumes"], name
        where = {_mounted(node, path) for path in included()}
        # Every included file is in the init's output volume, read-only for the node.
        assert where == {_mounted(services()[INIT], path) for path in written}, name
        volume = next(iter(where))
        assert volume is not None
        assert any(str(v).startswith(f"{volume[0]}:") and str(v).endswith(":ro")
                   for v in node["volumes"]), name  # fmt: skip
    assert "nats-auth.conf" not in (ROOT / "nats.conf").read_text()
    assert not (ROOT / "nats-auth.conf").exists()


def test_every_node_starts_after_the_init_has_written_its_users() -> None:
    assert services()[INIT]["restart"] == "no"
    assert "depends_on" not in services()[INIT]  # it needs nothing running
    for name in NODES:
        depends = services()[name]["depends_on"]
        assert depends == {INIT: {"condition": "service_completed_successfully"}}, name


def test_the_init_reads_the_key_store_the_gateways_write() -> None:
    keys = option(services()[INIT]["command"], "--keys")[0]
    gateway = services()["gateway"]
    assert _mounted(services()[INIT], keys) == _mounted(
        gateway, f"{gateway['environment']['CHORUS_DATA_DIR']}/keys.db"
    )


def test_the_init_routes_to_every_node_on_its_cluster_port() -> None:
    def cluster_port(name: str) -> str:
        return str(services()[name]["environment"]["NATS_CLUSTER_LISTEN"].rsplit(":", 1)[1])

    routes = option(services()[INIT]["command"], "--route")
    assert routes == [f"{name}:{cluster_port(name)}" for name in NODES]


def test_the_services_passwords_are_the_ones_the_chorus_services_connect_with() -> None:
    """The init hashes CHORUS_ENGINE_PASSWORD and CHORUS_GATEWAY_PASSWORD; the engines and
    the gateways carry the same in their CHORUS_NATS_URL, as their service users."""
    env = services()[INIT]["environment"]
    assert set(env) == set(busauth.PASSWORD_ENV.values())
    for service, variable in busauth.PASSWORD_ENV.items():
        assert env[variable] == f"${{{variable}:?set {variable}}}"  # no default
        url = services()[service]["environment"]["CHORUS_NATS_URL"]
        for node_url in url.split(","):
            assert re.fullmatch(
                rf"nats://{busauth.SERVICES[service]}:\$\{{{variable}(:\?[^}}]*)?\}}@nats-\d:4222",
                node_url,
            ), node_url
    for name in NODES:  # the nodes hold no secret of their own
        assert "PASSWORD" not in str(services()[name]["environment"])


def test_compose_has_no_default_secret_and_publishes_no_monitoring_port() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    assert ":-" not in compose  # no default secret anywhere
    assert '"4222:4222"' not in compose and "8222:8222" not in compose
