"""The engine learns who is an operator from the key store, through the composition root."""

from __future__ import annotations

from pathlib import Path

from gateway.keys import KeyStore
from runtime.processes import operator_check


def test_operators_and_admins_with_active_keys_count_and_revoked_ones_stop(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("ops-1", "operator")
    store.create("root", "admin")
    store.create("agent-1", "agent")
    auditor_key = store.create("aud", "auditor")
    revoked = store.create("ops-2", "operator")
    store.revoke(revoked.split("_")[1])
    is_operator = operator_check(tmp_path / "keys.db", ttl=0)
    assert is_operator("ops-1")
    assert is_operator("root")
    assert not is_operator("agent-1")
    assert not is_operator("aud")
    assert auditor_key.startswith("chk_")
    assert not is_operator("ops-2")
    assert not is_operator("nobody")
