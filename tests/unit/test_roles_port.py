"""The engine learns every actor's roles from the key store, through the ``Roles`` port."""

from __future__ import annotations

from pathlib import Path

from chorus.bootstrap import key_store_roles
from chorus.gateway.keys import KeyStore


def test_roles_come_from_active_keys_and_revoked_ones_stop_counting(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("ops-1", "operator")
    store.create("root", "admin")
    store.create("agent-1", "agent")
    store.create("aud", "auditor")
    revoked = store.create("ops-2", "operator")
    store.revoke(revoked.split("_")[1])
    roles = key_store_roles(tmp_path / "keys.db", ttl=0)
    assert roles.roles_of("ops-1") == {"operator"}
    assert roles.roles_of("root") == {"admin"}
    assert roles.roles_of("agent-1") == {"agent"}
    assert roles.roles_of("aud") == {"auditor"}
    assert roles.roles_of("ops-2") == frozenset()  # revoked: no role at all
    assert roles.roles_of("nobody") == {"agent"}  # never held a key: the least writer


def test_an_actor_with_two_keys_holds_both_roles(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("dual", "auditor")
    store.create("dual", "operator")
    assert key_store_roles(tmp_path / "keys.db", ttl=0).roles_of("dual") == {"auditor", "operator"}


def test_a_key_revoked_elsewhere_stops_counting_at_the_next_lookup(tmp_path: Path) -> None:
    """Lookups keep their connection open; a revocation written by another process (its
    own store object) still counts at once, and authentication refuses the key too."""
    engine_side = KeyStore(tmp_path / "keys.db")
    key = engine_side.create("ops-1", "operator")
    assert engine_side.roles_of("ops-1") == frozenset({"operator"})
    assert engine_side.authenticate(key) is not None
    KeyStore(tmp_path / "keys.db").revoke(key.split("_")[1])  # the CLI, elsewhere
    assert engine_side.roles_of("ops-1") == frozenset()
    assert engine_side.authenticate(key) is None
