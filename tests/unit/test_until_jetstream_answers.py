"""A process starting beside a cluster still forming waits for it; a request refused as bad
is not asked again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from chorus.engine.adapters.streams import until_jetstream_answers
from nats.js.errors import BadRequestError, ServiceUnavailableError


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", instant)


def failing_then_answering(
    errors: list[Exception],
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "answered"

    return calls, call


def test_peers_offline_while_the_cluster_forms_is_waited_out() -> None:
    # What three nodes started together answer an R3 stream before their routes are up.
    offline = BadRequestError(
        code=400, err_code=10005, description="no suitable peers for placement, peer offline"
    )
    calls, call = failing_then_answering([offline, offline])
    assert asyncio.run(until_jetstream_answers(call, "the streams")) == "answered"
    assert len(calls) == 3


def test_a_cluster_without_a_leader_is_waited_out() -> None:
    unavailable = ServiceUnavailableError(code=503, description="JetStream not available")
    calls, call = failing_then_answering([unavailable])
    assert asyncio.run(until_jetstream_answers(call, "the streams")) == "answered"
    assert len(calls) == 2


def test_any_other_bad_request_is_not_asked_again() -> None:
    bad = BadRequestError(code=400, err_code=10052, description="replicas > 1 not supported")
    calls, call = failing_then_answering([bad])
    with pytest.raises(BadRequestError):
        asyncio.run(until_jetstream_answers(call, "the streams"))
    assert len(calls) == 1


def test_peers_offline_past_the_deadline_is_raised() -> None:
    offline = BadRequestError(code=400, err_code=10005, description="peer offline")
    calls, call = failing_then_answering([offline] * 1000)
    with pytest.raises(BadRequestError):
        asyncio.run(until_jetstream_answers(call, "the streams", timeout=2.0))
    assert 1 < len(calls) < 1000
