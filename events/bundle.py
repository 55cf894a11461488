"""Audit bundles: a signed, self-contained extract of the log that verifies offline.

A bundle is one NDJSON file. Line 1 is ``{"manifest": {...}, "signature": "<base64>"}``:
the Ed25519 signature covers the manifest's exact bytes. Every further line is one event
in its *stored* form (``position``, ``aggregate_id``, ``version``, ``topic`` and the
stored body, byte for byte), so a verifier recomputes each event's hash exactly as the
store did, without the store. The manifest holds the count, the positions, the newest
seal of the log when exported, and the Merkle root (RFC 6962 tree, sha256) over the
event lines: a flipped byte anywhere fails the signature, the root or a line's decoding.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import Notification, StoredEvent
from msgspec import Struct

from events.codec import GENESIS_HASH, recompute_hash, stored_body

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


def load_signing_key(path: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """The deployment's signing key (PEM, PKCS#8), created on first use with mode 0600."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no signing key at {path} (run: chorus audit keygen)")
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:  # O_EXCL: two processes creating it at once keep the first one's key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


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


def verify_bundle(data: bytes, public_key: Ed25519PublicKey) -> Verified:
    """Check signature, Merkle root, every event's hash and every chain link the bundle
    holds; raises ``BundleInvalid`` naming the first failure."""
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
    chains: dict[str, tuple[int, str]] = {}
    previous = 0
    for number, line in enumerate(lines, start=2):
        _check_event(number, line, chains, previous)
        previous = _event_decoder.decode(line).position
    return Verified(manifest=manifest, events=len(lines), aggregates=len(chains))


def _check_event(number: int, line: bytes, chains: dict[str, tuple[int, str]], after: int) -> None:
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
    if event.position <= after:
        raise BundleInvalid(f"{where}: positions are not increasing")
    if recomputed != body.hash:
        raise BundleInvalid(f"{where}: the event does not match its hash")
    known = chains.get(event.aggregate_id)
    if event.version == 1 and body.prev_hash not in (GENESIS_HASH, ""):
        raise BundleInvalid(f"{where}: a first event must chain to the genesis hash")
    if known is not None and event.version == known[0] + 1 and body.prev_hash != known[1]:
        raise BundleInvalid(f"{where}: prev_hash is not the previous event's hash")
    if known is not None and event.version <= known[0]:
        raise BundleInvalid(f"{where}: versions of the aggregate are not increasing")
    chains[event.aggregate_id] = (event.version, body.hash)


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
