"""Saving a process manager's state with its position, and starting from it again.

A manager names the attributes that make up its state (``fields``); they are pickled
together with its position into one checkpoint row (store/checkpoints.py) between two
rounds, never in the middle of one, so the pair always belongs together. Rows are written
at most every ``every`` seconds and only when the position moved: a restart reads at most
that much of the log again, and what it re-sends carries the same derived command ids.

Pickle because the state is the manager's own plain objects (dicts, sets, heaps,
dataclasses, msgspec structs) written and read only by this engine's code in its own
database; the row carries a fingerprint of the code that wrote it (the source of the
modules named), so after an upgrade an old row is not trusted: the manager rebuilds from
the start of the log once.

A row is read with ``load_state``, never plain ``pickle.loads``: whoever can write the
database must not be able to run code in the engine through it (a pickle can call any
function it names). The loader resolves only data types: Chorus's own dataclasses, msgspec
structs and enums, and a short list of standard ones (datetime, UUID, collections). A
row naming anything else is unreadable, and the manager rebuilds from the log.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import io
import logging
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from chorus.store.checkpoints import Checkpoint, CheckpointStore
from chorus.store.recorder import select_topics_after
from eventsourcing.persistence import ApplicationRecorder, Notification

log = logging.getLogger(__name__)


#: Standard types a manager's state may hold, besides Chorus's own data types.
SAFE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "list"),
    ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "int"), ("builtins", "str"),
    ("builtins", "float"), ("builtins", "bool"), ("builtins", "bytes"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("uuid", "UUID"), ("collections", "OrderedDict"),
    ("collections", "deque"), ("collections", "defaultdict"), ("collections", "Counter"),
    # How msgspec pickles a keyword-only struct: ``cls(**kwargs)``, ``cls`` resolved here.
    ("msgspec._utils", "rebuild"),
})  # fmt: skip


class _DataOnly(pickle.Unpickler):
    """Resolves only data types (see the module's docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "chorus" or module.startswith("chorus."):
            found = super().find_class(module, name)
            if isinstance(found, type) and (
                dataclasses.is_dataclass(found) or issubclass(found, msgspec.Struct | enum.Enum)
            ):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not a data type of a checkpoint")


def load_state(blob: bytes) -> Any:
    """A checkpoint's state, resolving data types only: a row written to run code is
    refused (``pickle.UnpicklingError``) instead of run."""
    return _DataOnly(io.BytesIO(blob)).load()


def code_version(modules: list[str]) -> str:
    """A fingerprint of the source of these modules (already imported)."""
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        digest.update(name.encode())
        digest.update(inspect.getsource(sys.modules[name]).encode())
    return digest.hexdigest()[:32]


class StateCheckpoint:
    """The checkpoint of one manager (``owner``): ``restore`` once, ``save`` between rounds.

    A save pickles the whole state, which grows with the open work (a dispatcher holding
    a burst of thousands of workflows took 6% of the engine's samples saving every
    second). So the interval stretches with the cost: after a save that took ``d``
    seconds the next waits at least ``d / budget``, keeping saves under ``budget`` of the
    manager's time; a restart then re-reads a little more of the log (every effect is
    idempotent), never less than ``every`` seconds' worth. The engine runs several such
    managers; at 2% each, their saves were 4.6% of the engine's GIL time under
    ``bench.e2e --rate 1000`` (py-spy ``--gil``), so the default is half a percent: a save
    of 20 ms waits 4 s for the next, and a restart re-reads 4 s of the log.
    """

    def __init__(
        self,
        store: CheckpointStore,
        name: str,
        owner: object,
        fields: tuple[str, ...],
        modules: list[str],
        *,
        every: float = 1.0,
        budget: float = 0.005,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.monotonic = monotonic
        self.name = name
        self.owner = owner
        self.fields = fields
        self.version = code_version([*modules, __name__])
        self.every = every
        self.budget = budget
        #: Seconds to wait after the last save: ``every``, or longer when saves are slow.
        self.interval = every
        self.saved_position = -1
        self._saved_at = float("-inf")
        self.restored_from: int | None = None

    def restore(self) -> int:
        """Put the saved state back on the owner; returns the position to go on from
        (0, with the owner untouched, when there is no usable row)."""
        row = self.store.load(self.name)
        if row is None:
            return 0
        if row.version != self.version:
            log.info("%s: checkpoint from other code, re-reading the log", self.name)
            return 0
        try:
            state: dict[str, Any] = load_state(row.state)
            values = [state[field] for field in self.fields]
        except Exception as error:
            log.warning("%s: unreadable checkpoint (%s), re-reading the log", self.name, error)
            return 0
        for field, value in zip(self.fields, values, strict=True):
            setattr(self.owner, field, value)
        self.saved_position = row.position
        self.restored_from = row.position
        return row.position

    def due(self, position: int) -> bool:
        """Whether ``save`` would write now: callers on an event loop ask first, so a round
        with nothing to save costs no hop to a thread."""
        return position != self.saved_position and (
            self.monotonic() - self._saved_at >= self.interval
        )

    def save(self, position: int, prune: Callable[[], None] | None = None) -> bool:
        """Write the owner's state at ``position`` if it moved and the interval passed;
        ``prune`` first drops what the state no longer needs (only when it is written)."""
        if not self.due(position):
            return False
        now = self.monotonic()
        if prune is not None:
            prune()
        state = {field: getattr(self.owner, field) for field in self.fields}
        blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        self.store.save(Checkpoint(self.name, position, self.version, blob))
        self.saved_position = position
        self._saved_at = self.monotonic()
        self.interval = max(self.every, (self._saved_at - now) / self.budget)
        return True


class CheckpointedFold:
    """Some topics of the log folded into state that a checkpoint keeps: restored once,
    then each ``catch_up`` reads only the notifications recorded since and saves the state
    with its position between rounds. A subclass names its topics and the attributes of
    its state, and folds one notification (``fold``)."""

    def __init__(
        self, recorder: ApplicationRecorder, name: str, topics: list[str],
        fields: tuple[str, ...], modules: list[str], *, every: float = 1.0,
    ) -> None:  # fmt: skip
        self.recorder = recorder
        self.topics = topics
        self.position = 0
        self.events_read = 0
        self._lock = threading.Lock()
        self._restored = False
        self.checkpoint = StateCheckpoint(
            CheckpointStore(recorder), name, self, fields, modules, every=every
        )

    def catch_up(self) -> None:
        """Fold what is new (thread-safe: callers on several threads share one fold)."""
        with self._lock:
            if not self._restored:
                self.position = self.checkpoint.restore()
                self._restored = True
            while True:
                batch, position = select_topics_after(self.recorder, self.position, self.topics)
                self.events_read += len(batch)
                for notification in batch:
                    self.fold(notification)
                if position == self.position:
                    self.checkpoint.save(position)
                    return
                self.position = position

    def fold(self, notification: Notification) -> None:
        raise NotImplementedError
