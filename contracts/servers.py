"""How a client reaches the bus: ``CHORUS_NATS_URL``, one URL per node, comma-separated.

nats-py puts every server the cluster announces into its pool, without credentials, and
keeps those it was given apart from them (it compares addresses with their credentials).
A client whose credentials were in its URLs then reconnects, after losing its node, to an
announced server with none, and is refused (``Authorization Violation``) until it happens
on one of its own. ``servers`` lifts the credentials out into the connection's options, so
every server in the pool gets them.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit


def servers(urls: str) -> tuple[list[str], dict[str, str]]:
    """The node URLs without credentials, and the credentials as ``nats.connect`` options
    (``user`` and ``password``, or ``token``). Every URL that carries credentials must
    carry the same: one client is one user."""
    plain: list[str] = []
    found: set[tuple[str, str | None]] = set()
    for url in (part.strip() for part in urls.split(",")):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.username is not None:
            password = None if parts.password is None else unquote(parts.password)
            found.add((unquote(parts.username), password))
            netloc = parts.netloc.rsplit("@", 1)[1]
            url = urlunsplit(parts._replace(netloc=netloc))
        plain.append(url)
    if len(found) > 1:
        raise ValueError("the NATS URLs carry different credentials; one client is one user")
    if not found:
        return plain, {}
    user, password = found.pop()
    if password is None:
        return plain, {"token": user}
    return plain, {"user": user, "password": password}
