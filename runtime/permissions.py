"""Data files readable by their owner only: events, read models, keys, secrets, logs.

``chorus`` sets the umask 077 before it creates anything, so every file that it or a child
process (engine, projector, gateway, nats-server) creates is 0600 and every directory
0700. ``chorus up`` also tightens a data directory made by an older version or by hand.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    os.umask(PRIVATE_UMASK)


def tighten(root: Path) -> None:
    """Take every group and other permission off ``root`` and everything under it."""
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # a file a running process just removed
            continue
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & PRIVATE_UMASK:
            path.chmod(stat.S_IMODE(mode) & ~PRIVATE_UMASK)
