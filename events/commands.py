"""The dedup record: one tiny aggregate per (actor, command id).

Saved in the same transaction as the events a command caused. Its id is derived from the
actor and the command id, so a repeat collides on version 1 in the store's own optimistic
concurrency check, even when two engine workers race.
"""

from __future__ import annotations

import uuid

from msgspec import Struct

COMMAND_NAMESPACE = uuid.UUID("5f0c2f0e-4a53-4d2c-9d0b-6c686f727573")


class CommandAccepted(Struct, kw_only=True, frozen=True):
    command_id: str
    actor: str
    aggregate: str
    aggregate_id: str
    version: int
    #: sha256 of the command's name and payload: a reused id with another command is an
    #: error, not a duplicate. Empty in records written before it existed.
    fingerprint: str = ""


def command_record_id(actor: str, command_id: str) -> uuid.UUID:
    """Aggregate id of the dedup record: command ids are scoped per actor."""
    return uuid.uuid5(COMMAND_NAMESPACE, f"{actor}\x00{command_id}")
