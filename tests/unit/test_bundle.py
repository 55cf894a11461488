"""Audit bundles: export, offline verification, and rejection of any altered byte."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import ApplicationRecorder

from events.bundle import (
    BundleInvalid,
    leaf_hash,
    load_signing_key,
    merkle_root,
    parse_public_key,
    public_key_text,
    verify_bundle,
)
from events.ledger import seal_all
from projections.audit import AuditLog
from runtime.cli import main

from .conftest import FakeClock
from .test_tamper import write_history


@pytest.fixture
def audit(recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path) -> AuditLog:
    write_history(recorder, clock)
    seal_all(recorder)
    return AuditLog(recorder, tmp_path / "audit" / "signing.key")


def session_ids(recorder: ApplicationRecorder) -> list[uuid.UUID]:
    return [
        n.originator_id
        for n in recorder.select_notifications(1, 100)
        if n.topic == "session.SessionOpened"
    ]  # type: ignore[misc]


def test_a_session_bundle_verifies_offline_with_the_public_key(
    audit: AuditLog, recorder: ApplicationRecorder
) -> None:
    sid = session_ids(recorder)[0]
    data = audit.export(aggregate="session", aggregate_id=sid)
    verified = verify_bundle(data, parse_public_key(audit.public_key()))
    assert verified.events == 4  # opened, two results, finalised
    assert verified.manifest.selection == {"session": str(sid)}
    assert verified.manifest.log_seal is not None
    lines = data.decode().splitlines()
    assert [json.loads(line)["version"] for line in lines[1:]] == [1, 2, 3, 4]
    assert json.loads(lines[1])["stored"]["type"] == "SessionOpened"


def test_a_time_range_bundle_holds_the_domain_events_of_that_range(
    audit: AuditLog, clock: FakeClock
) -> None:
    start = clock.now.replace(hour=11)
    data = audit.export(since=start, until=clock.now.replace(hour=13))
    verified = verify_bundle(data, parse_public_key(audit.public_key()))
    assert verified.events == 8  # three opens, three results, one finalised, one cancel
    assert verified.aggregates == 3
    empty = audit.export(since=start, until=start)
    assert verify_bundle(empty, parse_public_key(audit.public_key())).events == 0


def test_every_flipped_byte_is_rejected(audit: AuditLog, recorder: ApplicationRecorder) -> None:
    data = audit.export(aggregate="session", aggregate_id=session_ids(recorder)[1])
    key = parse_public_key(audit.public_key())
    verify_bundle(data, key)
    for index in range(len(data)):
        flipped = bytearray(data)
        flipped[index] ^= 0x01
        with pytest.raises(BundleInvalid):
            verify_bundle(bytes(flipped), key)


def test_a_dropped_or_reordered_line_is_rejected(
    audit: AuditLog, recorder: ApplicationRecorder
) -> None:
    data = audit.export(aggregate="session", aggregate_id=session_ids(recorder)[0])
    key = parse_public_key(audit.public_key())
    header, *events = data.splitlines(keepends=True)
    for altered in (events[:-1], [events[1], events[0], *events[2:]]):
        with pytest.raises(BundleInvalid):
            verify_bundle(b"".join([header, *altered]), key)


def test_another_key_does_not_verify(audit: AuditLog, recorder: ApplicationRecorder) -> None:
    data = audit.export(aggregate="session", aggregate_id=session_ids(recorder)[0])
    other = parse_public_key(public_key_text(Ed25519PrivateKey.generate()))
    with pytest.raises(BundleInvalid, match="signature"):
        verify_bundle(data, other)


def test_the_signing_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "k" / "signing.key"
    first = public_key_text(load_signing_key(path))
    assert public_key_text(load_signing_key(path)) == first
    assert path.stat().st_mode & 0o077 == 0


def test_the_merkle_root_follows_rfc_6962() -> None:
    def reference(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return items[0]
        k = 1
        while k * 2 < len(items):
            k *= 2
        return hashlib.sha256(b"\x01" + reference(items[:k]) + reference(items[k:])).digest()

    for n in range(1, 12):
        leaves = [leaf_hash(str(i).encode()) for i in range(n)]
        assert merkle_root(leaves) == reference(leaves).hex()
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_bad_public_keys_are_refused() -> None:
    for text in ("not base64!", "AAAA", ""):
        with pytest.raises(ValueError, match=r"key|base64"):
            parse_public_key(text)


def test_the_cli_exports_and_verifies_a_bundle(
    audit: AuditLog,
    recorder: ApplicationRecorder,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    assert main(["audit", "keygen", "--data-dir", str(data_dir)]) == 0
    public = capsys.readouterr().out.strip()
    assert main(["audit", "keygen", "--data-dir", str(data_dir)]) == 2  # never replaced
    capsys.readouterr()
    out = tmp_path / "bundle.ndjson"
    sid = str(session_ids(recorder)[2])
    common = ["--data-dir", str(data_dir), "--database-url", database_url]
    assert main(["audit", "export", "--session", sid, "--out", str(out), *common]) == 0
    assert f"public key: {public}" in capsys.readouterr().out
    assert main(["audit", "verify-bundle", str(out), "--public-key", public]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 2
    flipped = bytearray(out.read_bytes())
    flipped[len(flipped) // 2] ^= 0x20
    out.write_bytes(bytes(flipped))
    assert main(["audit", "verify-bundle", str(out), "--public-key", public]) == 1
    assert "INVALID" in capsys.readouterr().out
    assert main(["audit", "export", "--since", "2030-01-01T00:00:00Z", "--out", str(out),
                 *common]) == 2  # fmt: skip
    assert "--until" in capsys.readouterr().err
