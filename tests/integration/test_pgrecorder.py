"""The PostgreSQL recorder ``open_recorder`` returns (``ArrayInsertRecorder``: the library's
recorder with a cheaper insert) passes eventsourcing's own recorder test cases: inserts and
selects, optimistic concurrency, contiguous notification ids under concurrent writers,
and no interleaving of two concurrent batches in the notification log.

Runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one); each test
gets its own schema.
"""

from __future__ import annotations

from contextlib import ExitStack

from chorus.store.datastore import close_recorder
from chorus.store.pgrecorder import ArrayInsertRecorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)

from tests.postgres import postgres_schema


class _FreshSchema:
    """Each test opens its recorders on a schema of its own, dropped afterwards."""

    def setUp(self) -> None:
        self._stack = ExitStack()
        self._url = self._stack.enter_context(postgres_schema("rec"))
        self._recorders: list[ApplicationRecorder] = []

    def tearDown(self) -> None:
        for recorder in self._recorders:
            close_recorder(recorder)
        self._stack.close()

    def create_recorder(self) -> ApplicationRecorder:
        recorder = open_recorder(self._url)
        assert isinstance(recorder, ArrayInsertRecorder)
        self._recorders.append(recorder)
        return recorder


class TestArrayInsertRecorder(_FreshSchema, ApplicationRecorderTestCase[ApplicationRecorder]):
    pass


class TestArrayInsertRecorderDoesNotInterleave(
    _FreshSchema, NonInterleavingNotificationIDsBaseCase
):
    pass
