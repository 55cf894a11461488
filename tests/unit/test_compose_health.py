"""``compose.yaml``'s health checks: every service has one that asks the process itself
(on the port its own config gives it), and the Chorus services wait for a healthy NATS
cluster and PostgreSQL before they start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from chorus.gateway.health import health, ready

ROOT = Path(__file__).resolve().parents[2]
CHORUS = ("engine", "projector", "gateway")


def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


def probe(service: dict[str, Any]) -> str:
    """The URL (or command) a service's health check asks."""
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def test_every_service_has_a_health_check() -> None:
    """Every one that keeps running: a one-shot (``restart: "no"``) is awaited by its
    exit (``service_completed_successfully``)."""
    for name, service in services().items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service, f"{name} has no health check"
        check = service["healthcheck"]
        assert check["retries"] >= 3 and check["interval"] and check["timeout"], name


def test_nats_nodes_answer_healthz_on_the_monitoring_port_of_nats_conf() -> None:
    monitor = re.search(r"^http:\s*(\S+)$", (ROOT / "nats.conf").read_text(), re.MULTILINE)
    assert monitor is not None
    for name in ("nats-1", "nats-2", "nats-3"):
        assert f"http://{monitor.group(1)}/healthz" in probe(services()[name])


def test_postgres_is_checked_with_pg_isready_for_the_chorus_database() -> None:
    assert probe(services()["postgres"]) == "pg_isready -U chorus -d chorus"


def test_the_gateway_is_checked_on_its_readiness_route() -> None:
    assert ready.paths == {"/ready"} and health.paths == {"/health"}
    assert "http://127.0.0.1:8000/ready" in probe(services()["gateway"])
    assert "8000" in str(services()["gateway"]["ports"])


def test_the_engine_and_projector_are_checked_on_their_metrics_port() -> None:
    for name in ("engine", "projector"):
        service = services()[name]
        port = service["environment"]["CHORUS_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/metrics" in probe(service)


def test_chorus_starts_once_nats_and_postgresql_are_healthy() -> None:
    for name in CHORUS:
        depends = services()[name]["depends_on"]
        assert set(depends) == {"nats-1", "nats-2", "nats-3", "postgres"}, name
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}, name
