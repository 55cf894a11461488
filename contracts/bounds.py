"""Limits every command obeys, checked on the raw bytes before anything decodes them.

Why on the raw bytes: a decoder recurses once per nesting level, so JSON nested 10,000
deep raises ``RecursionError`` inside it (in every process that touches it), and an event
larger than the NATS payload limit can be stored but never published. Checking the bytes
first turns both into an ordinary rejection with a stable code and the limit.

- ``MAX_COMMAND_BYTES``: a command body's size. Its events carry the payload plus a few
  hundred bytes of metadata, so they stay well under the server's 1 MiB payload limit.
- ``MAX_JSON_DEPTH``: arrays and objects nested inside each other, the envelope included.
- Integers must fit in 64 bits (signed): other languages, SQLite and JSONB cannot hold
  more, and a verifier in another language must read back what was hashed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from chorus.contracts.errors import COMMAND_TOO_LARGE, NESTING_TOO_DEEP, NUMBER_OUT_OF_RANGE

MAX_COMMAND_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32
#: Positions and versions in HTTP queries: the largest integer a JSON number holds exactly
#: (JavaScript's ``Number.MAX_SAFE_INTEGER``), far beyond any log.
MAX_POSITION = 2**53 - 1
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")
# An integer literal of 19+ digits: the only ones that can leave the 64-bit range.
_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_INT = re.compile(rb"(?<![0-9.eE+\-])-?[0-9]{19,}(?![0-9.eE])")


@dataclass(frozen=True)
class Violation:
    """Which bound a body broke; ``details`` names the limit (and what was found)."""

    code: str
    message: str
    details: dict[str, Any]


def check_command_bytes(data: bytes, limit: int = MAX_COMMAND_BYTES) -> Violation | None:
    """The size bound, then (on the JSON outside strings) depth and integer range."""
    if len(data) > limit:
        return Violation(
            COMMAND_TOO_LARGE,
            f"the command is {len(data)} bytes; the limit is {limit}",
            {"limit": limit, "size": len(data)},
        )
    return check_json_shape(data)


def check_json_shape(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Violation | None:
    """Depth and integer range of a JSON text, without decoding it (linear, no recursion).

    Not a validator: malformed JSON passes here and is caught by the decoder after.
    """
    deep = data.count(b"[") + data.count(b"{") > max_depth
    long = _DIGITS.search(data) is not None
    if not (deep or long):
        return None  # the common case: two C-speed scans
    bare = _STRING.sub(b'""', data)
    brackets = bare.translate(None, _NOT_BRACKET)
    if len(brackets) > max_depth:
        depth = max(accumulate(1 if b in _OPENERS else -1 for b in brackets))
        if depth > max_depth:
            return Violation(
                NESTING_TOO_DEEP,
                f"JSON nested {depth} levels deep; the limit is {max_depth}",
                {"max_depth": max_depth},
            )
    for match in _LONG_INT.finditer(bare) if long else ():
        if not INT_MIN <= int(match.group()) <= INT_MAX:
            return Violation(
                NUMBER_OUT_OF_RANGE,
                "an integer does not fit in 64 bits (signed)",
                {"min": INT_MIN, "max": INT_MAX},
            )
    return None
