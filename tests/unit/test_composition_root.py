"""One composition root: ``chorus.bootstrap`` builds the parts; nothing else in the runtime
does, the read models are listed once, and compose gives each process what it reads."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import chorus.projections
import yaml
from chorus.bootstrap import PROJECTIONS, bootstrap
from chorus.contracts.workflow_types import WorkflowTypeRegistry
from chorus.engine.domain.authz import StaticRoles
from chorus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: Constructors only the composition root calls in the runtime's own code.
PARTS = {
    "open_recorder", "EngineService", "EngineConfig", "Processor", "CommandWorker",
    "CommandIntake", "ProjectionRunner", "create_app", "connect_services", "KeyStoreRoles",
    "key_store_roles", "Relay", "Sealer", "SessionTimer", "DelegationManager", "Dispatcher",
    "LivenessMonitor", "ParticipantWatch",
}  # fmt: skip


def _called(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            names.add(name)
    return names


def _projection_classes() -> set[type]:
    found = set()
    for module in pkgutil.walk_packages(chorus.projections.__path__, "chorus.projections."):
        for value in vars(importlib.import_module(module.name)).values():
            if (isinstance(value, type) and value.__name__.endswith("Projection")
                    and value.__module__ == module.name and hasattr(value, "ddl")):  # fmt: skip
                found.add(value)
    return found


def test_only_the_composition_root_builds_the_parts_in_the_runtime() -> None:
    builders = {
        str(path.relative_to(ROOT)): sorted(_called(path) & PARTS)
        for path in (ROOT / "runtime").rglob("*.py")
        if "bootstrap" not in path.relative_to(ROOT / "runtime").parts
    }
    assert {path: parts for path, parts in builders.items() if parts} == {}


def test_the_read_models_are_listed_once_and_all_of_them() -> None:
    assert set(PROJECTIONS.values()) == _projection_classes()
    assert {make().name for make in PROJECTIONS.values()} == set(PROJECTIONS)
    # Nobody else keeps a list of them all (a test may pick the ones it is about).
    listed_elsewhere = [
        str(path.relative_to(ROOT))
        for folder in ("runtime", "bench", "tests", "gateway", "engine", "projections")
        for path in (ROOT / folder).rglob("*.py")
        if "bootstrap" not in path.parts
        and all(cls.__name__ in path.read_text() for cls in PROJECTIONS.values())
    ]  # fmt: skip
    assert listed_elsewhere == []


def test_tests_pass_their_own_parts_through_the_same_function(tmp_path: Path) -> None:
    types = WorkflowTypeRegistry([])
    roles = StaticRoles({"ops": {"operator"}})
    clock = object()
    components = bootstrap(
        Settings(data_dir=tmp_path, nats_url="nats://unused", database_url="sqlite:///x"),
        clock=clock,  # type: ignore[arg-type]
        roles=roles,
        workflow_types=types,
    )
    config = components.engine_config()
    assert (config.clock, config.roles, config.workflow_types) == (clock, roles, types)
    assert components.gateway_config(asyncapi=None).workflow_types is types
    assert not (tmp_path / "keys.db").exists()  # given roles: the key store is not opened


def test_without_roles_the_engine_reads_them_from_the_key_store(tmp_path: Path) -> None:
    from chorus.gateway.keys import KeyStore

    KeyStore(tmp_path / "keys.db").create("ops", "operator")
    settings = Settings(data_dir=tmp_path, nats_url="nats://unused")
    roles = bootstrap(settings).engine_config().roles
    assert roles.roles_of("ops") == frozenset({"operator"})
    assert roles.roles_of("stranger") == frozenset({"agent"})


def _mounted(service: dict[str, object], path: str) -> tuple[str, str] | None:
    """(volume, path inside it) of ``path`` in a compose service, if a volume holds it."""
    for entry in service.get("volumes", []):  # type: ignore[attr-defined]
        volume, target = str(entry).split(":")[:2]
        if path.startswith(target.rstrip("/") + "/"):
            return volume, path[len(target.rstrip("/")) + 1 :]
    return None


def test_compose_gives_the_engine_the_key_store_the_gateways_write() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]

    def keys_path(name: str) -> str:
        env = services[name]["environment"]
        return str(env.get("CHORUS_KEYS_PATH") or f"{env['CHORUS_DATA_DIR']}/keys.db")

    gateway = _mounted(services["gateway"], keys_path("gateway"))
    assert gateway is not None
    assert _mounted(services["engine"], keys_path("engine")) == gateway
    audit = services["engine"]["environment"]["CHORUS_AUDIT_KEY_PATH"]
    assert _mounted(services["engine"], audit) == (gateway[0], "audit/signing.key")


def test_the_gateway_signs_bundles_with_the_configured_audit_key(tmp_path: Path) -> None:
    """CHORUS_AUDIT_KEY_PATH names one key for the engine's anchors and the gateway's
    bundles; the gateway used to take ``<keys dir>/audit/signing.key`` whatever it said."""
    key = tmp_path / "elsewhere" / "audit.key"
    settings = Settings(data_dir=tmp_path, nats_url="nats://unused", audit_key_path=key)
    components = bootstrap(settings, roles=StaticRoles({}))
    assert components.gateway_config(asyncapi=None).audit_key_path == str(key)
    assert components.engine_config().audit_key_path == key
