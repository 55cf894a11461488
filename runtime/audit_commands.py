"""``chorus audit ...``: verify the store, seal it, export and verify bundles, what-if.

Every command here only reads the event store (``seal`` only adds seals); none publishes
to NATS or changes an aggregate. Exit codes: 0 fine, 1 the record does not verify,
2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from chorus.audit.bundle import (
    BundleInvalid,
    create_signing_key,
    describe,
    load_signing_key,
    parse_public_key,
    public_key_text,
    verify_bundle,
)
from chorus.audit.ledger import Checkpoint, UnsoundRow, read_signed_anchor, seal_all
from chorus.audit.verify import MAX_UNSEALED_AGE
from chorus.contracts.sessions import Criteria
from chorus.engine.domain.criteria import evaluate
from chorus.engine.domain.session import SessionState
from chorus.events.codec import decode_record
from chorus.events.session import SessionFinalised, Verdict
from chorus.projections.audit import AuditLog
from chorus.settings import Settings
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.persistence import ApplicationRecorder

_json = msgspec.json.Encoder(order="sorted")


class Failure(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any, common: Any) -> None:
    audit = sub.add_parser("audit", help="verify, seal, export and replay the record")
    cmds = audit.add_subparsers(dest="audit_command", required=True)
    verify = cmds.add_parser("verify", help="check every event, chain and seal; exit 1 if broken")
    common(verify)
    verify.add_argument(
        "--expect-seal", type=_checkpoint, action="append", default=[], metavar="POS:HASH",
        help="a checkpoint taken earlier (verify's output, a bundle's log_seal): fail unless "
        "the store's seal at POS has this running hash (repeatable)",
    )  # fmt: skip
    verify.add_argument(
        "--anchor", type=Path,
        help="anchor file the engine appends seals to; checks its last line "
        "(default <data-dir>/audit/seal-anchor when it exists)",
    )  # fmt: skip
    verify.add_argument(
        "--anchor-public-key", metavar="KEY",
        help="the public key the anchor must be signed with (base64, or a file with it; "
        "default: that of the data dir's signing key when it exists)",
    )  # fmt: skip
    verify.add_argument(
        "--max-unsealed-age", type=float, default=MAX_UNSEALED_AGE, metavar="SECONDS",
        help="fail when rows stay unsealed longer than this (default %(default)s)",
    )  # fmt: skip
    seal = cmds.add_parser("seal", help="extend the seal ledger to the head (the engine does it)")
    common(seal)
    keygen = cmds.add_parser("keygen", help="create the signing key and print its public key")
    keygen.add_argument("--data-dir", type=Path)
    pub = cmds.add_parser("public-key", help="print the public key bundles are signed with")
    pub.add_argument("--data-dir", type=Path)
    export = cmds.add_parser("export", help="write a signed bundle of events")
    common(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", type=UUID)
    which.add_argument("--workflow", type=UUID)
    which.add_argument(
        "--since", type=_time, help="RFC 3339; with --until: events in [since, until)"
    )
    export.add_argument("--until", type=_time)
    export.add_argument("--out", type=Path, required=True)
    check = cmds.add_parser("verify-bundle", help="verify a bundle offline (no store needed)")
    check.add_argument("file", type=Path)
    check.add_argument("--public-key", required=True, help="base64 public key, or a file with it")
    what_if = cmds.add_parser("what-if", help="re-judge a finished session under other criteria")
    common(what_if)
    what_if.add_argument("--session", type=UUID, required=True)
    what_if.add_argument("--criteria", required=True, help='JSON, e.g. {"require": "any"}')


def _checkpoint(text: str) -> Checkpoint:
    try:
        return Checkpoint.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset (e.g. Z): {text!r}")
    return value


def _existing_recorder(settings: Settings) -> ApplicationRecorder:
    """Open the store, refusing to create an empty SQLite file where none was."""
    url = str(settings.resolved().database_url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.exists():
            raise Failure(f"no event store at {path}")
    from chorus.bootstrap import bootstrap  # not for every ``chorus`` command's parser

    return bootstrap(settings).recorder()


def key_path(settings: Settings) -> Path:
    return Path(str(settings.resolved().audit_key_path))


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run(args, settings)
    except Failure as failure:
        print(f"chorus: {failure}", file=sys.stderr)
        return failure.code


def _run(args: argparse.Namespace, settings: Settings) -> int:
    match args.audit_command:
        case "verify":
            anchors = _anchor(args.anchor, settings, _anchor_key(args.anchor_public_key, settings))
            expected = [*args.expect_seal, *anchors]
            return _verify(_existing_recorder(settings), expected, args.max_unsealed_age)
        case "seal":
            try:
                print(f"sealed {seal_all(_existing_recorder(settings))} events")
            except UnsoundRow as unsound:
                raise Failure(
                    f"sealing stopped at {unsound} (run chorus audit verify)", 1
                ) from None
        case "keygen":
            path = key_path(settings)
            key, created = create_signing_key(path)
            if not created:
                raise Failure(f"a signing key already exists at {path}; keeping it")
            print(public_key_text(key))
        case "public-key":
            try:
                print(public_key_text(load_signing_key(key_path(settings))))
            except (OSError, ValueError) as error:
                raise Failure(str(error)) from None
        case "export":
            _export(args, settings)
        case "verify-bundle":
            return _verify_bundle(args.file, args.public_key)
        case "what-if":
            result = what_if(_existing_recorder(settings), args.session, args.criteria)
            print(_json.encode(result).decode())
    return 0


def _anchor_key(given: str | None, settings: Settings) -> Ed25519PublicKey | None:
    """The key anchors must be signed with: given, else the deployment's own (if any)."""
    if given is not None:
        return _public_key(given)
    try:
        return load_signing_key(key_path(settings)).public_key()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise Failure(f"cannot read the signing key: {error}") from None


def _anchor(
    given: Path | None, settings: Settings, public_key: Ed25519PublicKey | None
) -> list[Checkpoint]:
    """The anchor file's last checkpoint: read before the store, so it is never newer.
    With a known public key its signature must verify: an unsigned or wrongly signed line
    is a rewritten anchor (exit 1), since the sealer signs every line it writes."""
    path = given or Path(str(settings.resolved().seal_anchor_path))
    if given is None and not path.exists():
        return []
    try:
        anchor = read_signed_anchor(path)
    except (OSError, ValueError) as error:
        raise Failure(f"cannot read the seal anchor {path}: {error}") from None
    if anchor is None:
        return []
    if public_key is not None and not anchor.signed_by(public_key):
        what = (
            "is not signed" if anchor.signature is None else "has a signature that does not verify"
        )
        raise Failure(
            f"BROKEN: the seal anchor {path} ({anchor.checkpoint}) {what} with the "
            "deployment's key: the anchor file was rewritten", 1,
        )  # fmt: skip
    return [anchor.checkpoint]


def _verify(
    recorder: ApplicationRecorder, expected: list[Checkpoint], max_unsealed_age: float
) -> int:
    report = AuditLog(recorder).verify(expected, max_unsealed_age)
    if report.ok:
        print(
            f"OK: {report.events} events verified, sealed through position "
            f"{report.sealed_through} (running hash {report.head_running_hash}), "
            f"{report.unsealed} not sealed yet"
        )
        if report.head_running_hash is not None:
            print(f"checkpoint: {report.sealed_through}:{report.head_running_hash}")
        for anchor in report.anchors:
            print(f"matches anchor {anchor}")
        return 0
    first = report.problems[0]
    print(
        f"BROKEN at position {first.position}: {first.kind}: {first.message} "
        f"(aggregate {first.aggregate or '?'} {first.aggregate_id or '?'} "
        f"version {first.version if first.version is not None else '?'})"
    )
    for problem in report.problems[1:]:
        print(f"  also position {problem.position}: {problem.kind}: {problem.message}")
    return 1


def _export(args: argparse.Namespace, settings: Settings) -> None:
    log = AuditLog(_existing_recorder(settings), key_path(settings))
    try:
        log.signing_key()
    except (OSError, ValueError) as error:
        raise Failure(f"cannot sign the bundle: {error}") from None
    if args.session or args.workflow:
        aggregate = "session" if args.session else "workflow"
        data = log.export(aggregate=aggregate, aggregate_id=args.session or args.workflow)
    else:
        if args.until is None:
            raise Failure("--since needs --until")
        data = log.export(since=args.since, until=args.until)
    args.out.write_bytes(data)
    events = data.count(b"\n") - 1
    print(f"wrote {events} events to {args.out}")
    print(f"public key: {log.public_key()}")


def _public_key(text: str) -> Ed25519PublicKey:
    """A public key given on the command line: base64, PEM, or a file holding either."""
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        return parse_public_key(text)
    except ValueError as error:
        raise Failure(f"bad public key: {error}") from None


def _verify_bundle(path: Path, key_text: str) -> int:
    key = _public_key(key_text)
    try:
        verified = verify_bundle(path.read_bytes(), key)
    except BundleInvalid as error:
        print(f"INVALID: {error}")
        return 1
    except OSError as error:
        raise Failure(str(error)) from None
    print(_json.encode(describe(verified)).decode())
    return 0


def what_if(recorder: ApplicationRecorder, session_id: UUID, criteria_json: str) -> dict[str, Any]:
    """The verdict a closed session would have had under ``criteria``, from its recorded
    results (the engine's own fold and evaluator); nothing is written."""
    try:
        criteria = msgspec.json.decode(criteria_json, type=Criteria)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise Failure(f"invalid criteria: {error}") from None
    state = SessionState(id=session_id)
    recorded: Verdict | None = None
    for stored in recorder.select_events(session_id):
        record = decode_record(stored)
        if record.aggregate != "session":
            break
        event = record.event
        state.apply(event)
        if isinstance(event, SessionFinalised):
            recorded = event.verdict
    if not state.exists:
        raise Failure(f"session {session_id} does not exist")
    if not state.is_closed:
        raise Failure(f"session {session_id} is still {state.status}; wait until it closes")
    assert state.task is not None
    verdict = evaluate(criteria, state.results.values())
    # A session that timed out or was cancelled has no recorded verdict: its status is not
    # an outcome the criteria decided, so there is nothing to compare the new verdict with.
    changes = recorded.outcome != verdict.outcome if recorded is not None else None
    return {
        "session_id": str(session_id),
        "status": state.status,
        "results": len(state.results),
        "recorded": {"criteria": state.task.criteria, "verdict": recorded},
        "what_if": {"criteria": criteria, "verdict": verdict},
        "outcome_changes": changes,
    }
