"""Audit bundles: a signed, self-contained extract of the log that verifies offline.

A bundle is one NDJSON file. Line 1 is ``{"manifest": {...}, "signature": "<base64>"}``:
the Ed25519 signature covers the manifest's exact bytes. Every further line is one event
in its *stored* form (``position``, ``aggregate_id``, ``version``, ``topic`` and the
stored body, byte for byte), so a verifier recomputes each event's hash exactly as the
store did, without the store. The manifest holds the count, the positions, the newest
seal of the log when exported, and the Merkle root (RFC 6962 tree, sha256) over the
event lines: a flipped byte anywhere fails the signature, the root or a line's decoding.

Completeness is checked against the signed selection: a session's or workflow's bundle
must hold only that aggregate's events, versions 1..n with no gap, each chained to the
one before; a time range's bundle only events that occurred in the range, with no version
gap after each aggregate's first event in it. What no bundle can prove on its own is that
nothing came *after* its last event; its ``log_seal`` is a checkpoint to hold the store
to (``chorus audit verify --expect-seal``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from chorus.events.codec import GENESIS_HASH, recompute_hash, stored_body
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import Notification, StoredEvent
from msgspec import Struct

FORMAT = "chorus-audit-bundle/1"


class SealRef(Struct, kw_only=True, frozen=True):
    position: int
    running_hash: str


class Manifest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    format: str
    created_at: datetime
    selection: dict[str, str]
    count: int
    first_position: int | None
    last_position: int | None
    merkle_root: str
    public_key: str
    log_seal: SealRef | None


class _Header(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    manifest: msgspec.Raw
    signature: str


class BundleEvent(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    position: int
    aggregate_id: str
    version: int
    topic: str
    stored: msgspec.Raw


class BundleInvalid(ValueError):
    """The bundle is not what the key holder signed, or its events do not verify."""


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(_Header)
_manifest_decoder = msgspec.json.Decoder(Manifest)
_event_decoder = msgspec.json.Decoder(BundleEvent)


# Merkle tree (RFC 6962 section 2.1) ----------------------------------------------------------


def leaf_hash(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def merkle_root(leaves: Sequence[bytes]) -> str:
    """Root over leaf hashes; the empty tree is sha256 of nothing."""

    def node(items: Sequence[bytes]) -> bytes:
        if len(items) == 1:
            return items[0]
        split = 1 << ((len(items) - 1).bit_length() - 1)  # largest power of 2 below n
        return hashlib.sha256(b"\x01" + node(items[:split]) + node(items[split:])).digest()

    return (node(leaves) if leaves else hashlib.sha256(b"").digest()).hex()


# Keys ---------------------------------------------------------------------------------------


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The deployment's signing key (PEM, PKCS#8); FileNotFoundError if there is none
    (``chorus audit keygen`` and ``chorus up`` create it, nothing else does)."""
    if not path.exists():
        raise FileNotFoundError(f"no signing key at {path} (run: chorus audit keygen)")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def create_signing_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Create the signing key unless one exists; returns the key and whether it is new.

    Written whole to a private temporary file, then linked into place: the link fails if
    the path exists (O_EXCL semantics: of two processes creating it at once the first
    wins and both use its key), and no reader ever sees a half-written key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        os.unlink(temp)
    return load_signing_key(path), created


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as base64 of its 32 raw bytes (what ``--public-key`` takes)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """base64 of the 32 raw bytes, or a PEM public key; raises ValueError otherwise."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    try:
        standard = text.replace("-", "+").replace("_", "/")  # base64url too
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except ValueError as error:
        raise ValueError("the public key is neither base64 nor PEM") from error
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


# Writing ------------------------------------------------------------------------------------


def event_line(n: Notification) -> bytes:
    return _encoder.encode(
        BundleEvent(
            position=n.id,
            aggregate_id=str(UUID(str(n.originator_id))),
            version=n.originator_version,
            topic=n.topic,
            stored=msgspec.Raw(bytes(n.state)),
        )
    )


def build_bundle(
    notifications: Iterable[Notification],
    key: Ed25519PrivateKey,
    selection: dict[str, str],
    log_seal: SealRef | None = None,
) -> bytes:
    """The signed bundle for these events (in position order)."""
    lines = [event_line(n) for n in notifications]
    positions = [_event_decoder.decode(line).position for line in lines[:1] + lines[-1:]]
    manifest = _encoder.encode(
        Manifest(
            format=FORMAT,
            created_at=datetime.now(UTC),
            selection=selection,
            count=len(lines),
            first_position=positions[0] if positions else None,
            last_position=positions[-1] if positions else None,
            merkle_root=merkle_root([leaf_hash(line) for line in lines]),
            public_key=public_key_text(key),
            log_seal=log_seal,
        )
    )
    signature = base64.b64encode(key.sign(manifest)).decode()
    header = _encoder.encode(_Header(manifest=msgspec.Raw(manifest), signature=signature))
    return b"\n".join([header, *lines]) + b"\n"


# Verifying ----------------------------------------------------------------------------------


class Verified(Struct, kw_only=True, frozen=True):
    manifest: Manifest
    events: int
    aggregates: int


class _Selection:
    """What the signed selection says the bundle holds: one aggregate, or a time range."""

    def __init__(self, selection: dict[str, str]) -> None:
        self.aggregate: str | None = None
        self.aggregate_id: str | None = None
        self.since: datetime | None = None
        self.until: datetime | None = None
        try:
            if selection.keys() in ({"session"}, {"workflow"}):
                [(self.aggregate, raw)] = selection.items()
                self.aggregate_id = str(UUID(raw))
            elif selection.keys() <= {"since", "until"}:
                if "since" in selection:
                    self.since = datetime.fromisoformat(selection["since"])
                if "until" in selection:
                    self.until = datetime.fromisoformat(selection["until"])
            else:
                raise ValueError(f"unknown keys {sorted(selection)}")
        except ValueError as error:
            raise BundleInvalid(f"the manifest's selection is not understood: {error}") from None


def verify_bundle(data: bytes, public_key: Ed25519PublicKey) -> Verified:
    """Check signature, Merkle root, every event's hash and chain link, and that the events
    are complete for the signed selection; raises ``BundleInvalid`` naming the first failure."""
    if not data.endswith(b"\n"):
        raise BundleInvalid("the bundle does not end with a newline (truncated?)")
    header_line, *lines = data[:-1].split(b"\n")
    try:
        header = _header_decoder.decode(header_line)
        signature = base64.b64decode(header.signature, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        raise BundleInvalid(f"line 1 is not a bundle header: {error}") from None
    try:
        public_key.verify(signature, bytes(header.manifest))
    except InvalidSignature:
        raise BundleInvalid("the signature does not match the manifest and key") from None
    try:
        manifest = _manifest_decoder.decode(header.manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BundleInvalid(f"the manifest does not decode: {error}") from None
    if manifest.format != FORMAT:
        raise BundleInvalid(f"unknown bundle format {manifest.format!r}")
    if len(lines) != manifest.count:
        raise BundleInvalid(f"{len(lines)} event lines, the manifest says {manifest.count}")
    if merkle_root([leaf_hash(line) for line in lines]) != manifest.merkle_root:
        raise BundleInvalid("the event lines do not match the signed Merkle root")
    selection = _Selection(manifest.selection)
    chains: dict[str, tuple[int, str]] = {}
    previous = None
    for number, line in enumerate(lines, start=2):
        previous = _check_event(number, line, chains, previous, selection)
    if selection.aggregate is not None and not chains:
        raise BundleInvalid(f"the bundle holds no events of the selected {selection.aggregate}")
    return Verified(manifest=manifest, events=len(lines), aggregates=len(chains))


def _check_event(
    number: int,
    line: bytes,
    chains: dict[str, tuple[int, str]],
    after: int | None,
    selection: _Selection,
) -> int:
    """Check one event line; returns its position."""
    try:
        event = _event_decoder.decode(line)
        stored = StoredEvent(
            originator_id=UUID(event.aggregate_id),
            originator_version=event.version,
            topic=event.topic,
            state=bytes(event.stored),
        )
        body = stored_body(stored)
        recomputed = recompute_hash(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        raise BundleInvalid(f"line {number} does not decode: {error}") from None
    where = f"line {number} (position {event.position}, {event.aggregate_id} v{event.version})"
    aggregate = event.topic.split(".", 1)[0]
    if after is not None and event.position <= after:
        raise BundleInvalid(f"{where}: positions are not increasing")
    if event.topic != f"{aggregate}.{body.type}":
        raise BundleInvalid(f"{where}: the topic does not name the event's type {body.type!r}")
    if recomputed != body.hash:
        raise BundleInvalid(f"{where}: the event does not match its hash")
    if selection.aggregate is not None and (
        aggregate != selection.aggregate or event.aggregate_id != selection.aggregate_id
    ):
        raise BundleInvalid(f"{where}: not an event of the selected {selection.aggregate}")
    if (selection.since is not None and body.occurred_at < selection.since) or (
        selection.until is not None and body.occurred_at >= selection.until
    ):
        raise BundleInvalid(f"{where}: occurred outside the selected time range")
    if aggregate == "command":  # a dedup record stands alone
        if event.version != 1 or body.prev_hash != "":
            raise BundleInvalid(f"{where}: a dedup record must stand alone")
        return event.position
    known = chains.get(event.aggregate_id)
    if known is None and (selection.aggregate is not None or event.version == 1):
        known = (0, GENESIS_HASH)  # the aggregate's history must start here
    if known is not None:
        if event.version != known[0] + 1:
            raise BundleInvalid(
                f"{where}: version {event.version} follows version {known[0]} "
                "(events of the aggregate are missing or reordered)"
            )
        if body.prev_hash != known[1]:
            raise BundleInvalid(f"{where}: prev_hash is not the previous event's hash")
    chains[event.aggregate_id] = (event.version, body.hash)
    return event.position


def describe(verified: Verified) -> dict[str, Any]:
    """What a successful verification proves, for printing."""
    m = verified.manifest
    return {
        "ok": True,
        "events": verified.events,
        "aggregates": verified.aggregates,
        "selection": m.selection,
        "positions": [m.first_position, m.last_position],
        "merkle_root": m.merkle_root,
        "created_at": m.created_at.isoformat(),
        "log_seal": msgspec.to_builtins(m.log_seal),
    }
