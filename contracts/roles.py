"""Roles and reserved names: the vocabulary the gateway, the engine and the bus share.

A credential (an API key, and the NATS user made from it) carries one role. The engine
authorizes every command by the roles of its actor (engine/domain/authz.py), the gateway guards
routes by them, and the bus permissions of a NATS user follow from them.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Role = Literal["agent", "operator", "auditor", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

#: Roles that may issue commands at all (auditors only read).
WRITERS = frozenset({"agent", "operator", "admin"})
#: Roles that may act on anyone's aggregate where a rule allows staff.
STAFF = frozenset({"operator", "admin"})

#: Actors of Chorus itself. Compared case-insensitively: ``System`` must not pass for the
#: engine in an audit trail.
RESERVED_NAMES = frozenset({"system", "engine", "gateway", "projector"})

#: Agent names (and key actors): a letter or digit, then letters, digits, ``-`` and ``_``.
#: No ``:``, ``@`` or ``.``, so a name is one plain subject token and one NATS user name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_reserved(name: str) -> bool:
    return name.casefold() in RESERVED_NAMES


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an agent or key actor, or None if it can."""
    if not NAME_RE.match(name):
        return "a name is 1-64 letters, digits, '-' or '_', starting with a letter or digit"
    if is_reserved(name):
        return f"the name {name!r} is reserved"
    return None
