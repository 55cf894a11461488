"""Audit bundles: export, offline verification, and rejection of any altered byte."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from chorus.audit.bundle import (
    BundleInvalid,
    build_bundle,
    create_signing_key,
    leaf_hash,
    load_signing_key,
    merkle_root,
    parse_public_key,
    public_key_text,
    verify_bundle,
)
from chorus.audit.ledger import seal_all
from chorus.cli import main
from chorus.projections.audit import AuditLog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import ApplicationRecorder, Notification

from .conftest import FakeClock
from .test_tamper import write_history


@pytest.fixture
def audit(recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path) -> AuditLog:
    write_history(recorder, clock)
    seal_all(recorder)
    create_signing_key(tmp_path / "audit" / "signing.key")
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
    with pytest.raises(FileNotFoundError, match="keygen"):
        load_signing_key(path)
    assert not path.exists()  # loading never creates it
    key, created = create_signing_key(path)
    assert created
    again, created = create_signing_key(path)
    assert not created
    assert public_key_text(again) == public_key_text(key) == public_key_text(load_signing_key(path))
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temporary left


def test_concurrent_key_creation_keeps_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "signing.key"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: create_signing_key(path), range(16)))
    assert sum(created for _, created in results) == 1
    assert len({public_key_text(key) for key, _ in results}) == 1


def test_the_cli_refuses_to_export_without_a_key(
    recorder: ApplicationRecorder,
    clock: FakeClock,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_history(recorder, clock)
    sid = str(session_ids(recorder)[0])
    common = ["--data-dir", str(tmp_path / "data"), "--database-url", database_url]
    out = tmp_path / "bundle.ndjson"
    assert main(["audit", "export", "--session", sid, "--out", str(out), *common]) == 2
    assert "keygen" in capsys.readouterr().err
    assert not (tmp_path / "data" / "audit" / "signing.key").exists()
    assert not out.exists()


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


# Completeness against the signed selection ---------------------------------------------------


def signed(audit: AuditLog, notifications: list[Notification], selection: dict[str, str]) -> bytes:
    """A bundle the key holder signed over exactly these events (an exporter that lies)."""
    return build_bundle(notifications, audit.signing_key(), selection)


def of_session(recorder: ApplicationRecorder, sid: uuid.UUID) -> list[Notification]:
    return [n for n in recorder.select_notifications(1, 100) if n.originator_id == sid]


def test_a_session_bundle_missing_a_middle_or_first_event_is_rejected(
    audit: AuditLog, recorder: ApplicationRecorder
) -> None:
    sid = session_ids(recorder)[0]
    events = of_session(recorder, sid)
    key = parse_public_key(audit.public_key())
    selection = {"session": str(sid)}
    verify_bundle(signed(audit, events, selection), key)
    for partial in (events[:1] + events[2:], events[1:]):
        with pytest.raises(BundleInvalid, match="missing"):
            verify_bundle(signed(audit, partial, selection), key)
    with pytest.raises(BundleInvalid, match="no events"):
        verify_bundle(signed(audit, [], selection), key)


def test_a_session_bundle_with_another_aggregates_events_is_rejected(
    audit: AuditLog, recorder: ApplicationRecorder
) -> None:
    first, second = session_ids(recorder)[:2]
    events = sorted(of_session(recorder, first) + of_session(recorder, second)[:1],
                    key=lambda n: n.id)  # fmt: skip
    with pytest.raises(BundleInvalid, match="not an event of the selected session"):
        verify_bundle(
            signed(audit, events, {"session": str(first)}), parse_public_key(audit.public_key())
        )


def test_a_time_range_bundle_with_a_version_gap_or_an_event_outside_is_rejected(
    audit: AuditLog, recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    sid = session_ids(recorder)[0]
    events = of_session(recorder, sid)
    key = parse_public_key(audit.public_key())
    selection = {"since": clock.now.replace(hour=11).isoformat(),
                 "until": clock.now.replace(hour=13).isoformat()}  # fmt: skip
    verify_bundle(signed(audit, events[1:], selection), key)  # may start mid-history
    with pytest.raises(BundleInvalid, match="missing"):
        verify_bundle(signed(audit, events[:1] + events[2:], selection), key)
    narrow = {"since": clock.now.replace(hour=12, second=30).isoformat(),
              "until": clock.now.replace(hour=14).isoformat()}  # fmt: skip
    with pytest.raises(BundleInvalid, match="outside the selected time range"):
        verify_bundle(signed(audit, events, narrow), key)
    with pytest.raises(BundleInvalid, match="selection is not understood"):
        verify_bundle(signed(audit, events, {"agent": "x"}), key)


def test_a_bundle_event_whose_topic_names_another_type_is_rejected(
    audit: AuditLog, recorder: ApplicationRecorder
) -> None:
    sid = session_ids(recorder)[0]
    events = of_session(recorder, sid)
    n = events[1]
    events[1] = Notification(id=n.id, originator_id=n.originator_id,
                             originator_version=n.originator_version,
                             topic="session.SessionCancelled", state=n.state)  # fmt: skip
    with pytest.raises(BundleInvalid, match="topic"):
        verify_bundle(
            signed(audit, events, {"session": str(sid)}), parse_public_key(audit.public_key())
        )
