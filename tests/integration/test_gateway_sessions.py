"""Sessions over HTTP against a real gateway, engine, projector, nats-server and SQLite stores."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import ReadStores
from tests.integration.test_gateway_support import (
    SESSIONS,
    UNKNOWN_SESSION,
    assert_problem,
    eventually,
    get_events,
    get_session,
    open_body,
    open_session,
    submit,
    task,
)


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """The gateway's read queries, on each read-store backend."""
    return read_stores.url("read")


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


# Opening ------------------------------------------------------------------------------------


async def test_open_returns_201_with_location_and_is_readable_at_once(http, gateway):
    alice = gateway.key("alice")
    response = await http.post(SESSIONS, json=open_body(["alice", "bob"]), headers=alice)

    assert response.status_code == 201, response.text
    body = response.json()
    session_id = body["session_id"]
    uuid.UUID(session_id)
    assert body["status"] == "open"
    assert body["version"] == 1
    assert response.headers["location"] == f"{SESSIONS}/{session_id}"
    assert "idempotent-replayed" not in response.headers

    # Read-your-writes: no polling, the very next GET sees it.
    view = await get_session(http, alice, session_id)
    assert view["session_id"] == session_id
    assert view["status"] == "open"
    assert view["participants"] == ["alice", "bob"]
    assert view["pending"] == ["alice", "bob"]
    assert view["results"] == {}
    assert view["outcome"] is None
    assert view["version"] == 1
    assert view["task"]["description"] == "count the words"
    location = await http.get(response.headers["location"], headers=alice)
    assert location.json() == view


async def test_opener_is_the_key_actor_and_coordinator_defaults_to_it(http, gateway):
    alice = gateway.key("alice")
    default = await open_session(http, alice, ["bob"])
    chosen = await open_session(http, alice, ["bob"], coordinator_id="carol")

    default_view = await get_session(http, alice, default)
    assert default_view["opened_by"] == "alice"
    assert default_view["coordinator_id"] == "alice"
    chosen_view = await get_session(http, alice, chosen)
    assert chosen_view["opened_by"] == "alice"
    assert chosen_view["coordinator_id"] == "carol"
    (opened,) = await get_events(http, gateway.key("auditor-1", "auditor"), chosen)
    assert opened["actor"] == "alice"
    assert opened["data"]["opened_by"] == "alice"


async def test_body_cannot_choose_the_actor(http, gateway):
    alice = gateway.key("alice")
    for field in ["actor", "opened_by"]:
        response = await http.post(
            SESSIONS, json=open_body(["bob"], **{field: "mallory"}), headers=alice
        )

        body = assert_problem(response, 400, "validation_error")
        assert [f["field"] for f in body["details"]["fields"]] == [field]
    listed = await http.get(SESSIONS, headers=alice)
    assert listed.json()["items"] == []


async def test_client_chosen_session_id_is_used_and_cannot_be_opened_twice(http, gateway):
    alice = gateway.key("alice")
    chosen = str(uuid.uuid4())
    assert await open_session(http, alice, ["bob"], session_id=chosen) == chosen

    again = await http.post(SESSIONS, json=open_body(["carol"], session_id=chosen), headers=alice)

    assert_problem(again, 409, "session_exists")
    assert (await get_session(http, alice, chosen))["participants"] == ["bob"]
    assert len(await get_events(http, gateway.key("auditor-1", "auditor"), chosen)) == 1


async def test_idempotency_key_replays_the_same_session_without_creating_another(http, gateway):
    alice = gateway.key("alice")
    headers = {**alice, "Idempotency-Key": "open-1"}
    first = await http.post(SESSIONS, json=open_body(["bob"]), headers=headers)
    second = await http.post(SESSIONS, json=open_body(["bob"]), headers=headers)

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 201, second.text
    assert second.headers["idempotent-replayed"] == "true"
    session_id = first.json()["session_id"]
    assert second.json()["session_id"] == session_id
    assert second.json()["version"] == first.json()["version"]
    assert second.headers["location"] == first.headers["location"]

    listed = (await http.get(SESSIONS, headers=alice)).json()
    assert [s["session_id"] for s in listed["items"]] == [session_id]
    events = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert [e["type"] for e in events] == ["SessionOpened"]
    assert events[0]["command_id"] == "open-1"


async def test_concurrent_retries_with_one_idempotency_key_open_one_session(http, gateway):
    alice = {**gateway.key("alice"), "Idempotency-Key": "storm"}
    responses = await asyncio.gather(
        *(http.post(SESSIONS, json=open_body(["bob"]), headers=alice) for _ in range(8))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["session_id"] for r in responses}) == 1
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 7
    listed = (await http.get(SESSIONS, headers=alice)).json()
    assert len(listed["items"]) == 1


async def test_idempotency_keys_are_scoped_to_the_actor(http, gateway):
    alice = {**gateway.key("alice"), "Idempotency-Key": "same-key"}
    bob = {**gateway.key("bob"), "Idempotency-Key": "same-key"}
    for_alice = await http.post(SESSIONS, json=open_body(["carol"]), headers=alice)
    for_bob = await http.post(SESSIONS, json=open_body(["carol"]), headers=bob)

    assert for_alice.status_code == for_bob.status_code == 201
    assert "idempotent-replayed" not in for_bob.headers
    assert for_alice.json()["session_id"] != for_bob.json()["session_id"]
    listed = (await http.get(SESSIONS, headers=alice)).json()
    assert len(listed["items"]) == 2


async def test_correlation_id_header_is_recorded_on_the_event(http, gateway):
    alice = {**gateway.key("alice"), "X-Correlation-Id": "trace-42"}
    session_id = await open_session(http, alice, ["bob"])

    (opened,) = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert opened["correlation_id"] == "trace-42"


# Results ------------------------------------------------------------------------------------


async def test_participant_result_is_accepted_and_visible_at_once(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob", "carol"])

    response = await submit(http, bob, session_id, {"words": 7}, output_hash="h1")

    assert response.status_code == 200, response.text
    assert response.json() == {"session_id": session_id, "status": "accepted", "version": 2}
    view = await get_session(http, owner, session_id)
    assert view["status"] == "open"
    assert view["pending"] == ["carol"]
    assert view["version"] == 2
    assert view["results"]["bob"]["result"] == {"words": 7}
    assert view["results"]["bob"]["success"] is True
    assert view["results"]["bob"]["output_hash"] == "h1"


async def test_non_participant_gets_403_problem(http, gateway):
    owner, mallory = gateway.key("owner"), gateway.key("mallory")
    session_id = await open_session(http, owner, ["bob"])

    response = await submit(http, mallory, session_id)

    body = assert_problem(response, 403, "not_a_participant")
    assert "mallory" in body["detail"]
    assert (await get_session(http, owner, session_id))["results"] == {}


async def test_opener_who_is_not_a_participant_cannot_submit(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    assert_problem(await submit(http, owner, session_id), 403, "not_a_participant")


async def test_result_for_unknown_session_gets_404_problem(http, gateway):
    bob = gateway.key("bob")
    assert_problem(await submit(http, bob, UNKNOWN_SESSION), 404, "session_not_found")


async def test_second_result_from_the_same_participant_gets_409_already_submitted(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob", "carol"])
    assert (await submit(http, bob, session_id, {"n": 1})).status_code == 200

    assert_problem(await submit(http, bob, session_id, {"n": 2}), 409, "already_submitted")
    view = await get_session(http, owner, session_id)
    assert view["results"]["bob"]["result"] == {"n": 1}
    assert len(await get_events(http, gateway.key("auditor-1", "auditor"), session_id)) == 2


async def test_result_after_close_gets_409_session_closed(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob", "carol"])
    assert (await http.post(f"{SESSIONS}/{session_id}/cancel", headers=owner)).status_code == 200

    body = assert_problem(await submit(http, bob, session_id), 409, "session_closed")
    assert body["details"] == {"status": "cancelled"}


async def test_retried_result_with_idempotency_key_is_recorded_once(http, gateway):
    owner = gateway.key("owner")
    bob = {**gateway.key("bob"), "Idempotency-Key": "bob-result-1"}
    session_id = await open_session(http, owner, ["bob", "carol"])
    first = await submit(http, bob, session_id, {"n": 1})
    retry = await submit(http, bob, session_id, {"n": 1})

    assert first.status_code == retry.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["version"] == first.json()["version"] == 2
    types = [
        e["type"] for e in await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    ]
    assert types == ["SessionOpened", "ResultSubmitted"]


@pytest.mark.parametrize(
    ("criteria", "submissions", "outcome"),
    [
        pytest.param(
            {"require": "majority"},
            {"p1": {"success": True}, "p2": {"success": True}, "p3": {"success": False}},
            "succeeded",
            id="majority-2-of-3-succeeds",
        ),
        pytest.param(
            {"require": "majority"},
            {"p1": {"success": True}, "p2": {"success": False}, "p3": {"success": False}},
            "failed",
            id="majority-1-of-3-fails",
        ),
        pytest.param(
            {"require": "all"},
            {"p1": {"success": True}, "p2": {"success": True}, "p3": {"success": False}},
            "failed",
            id="all-with-one-failure-fails",
        ),
        pytest.param(
            {"require": "all"},
            {"p1": {"success": True}, "p2": {"success": True}},
            "succeeded",
            id="all-succeed",
        ),
        pytest.param(
            {"require": "any", "min_results": 2},
            {"p1": {"success": True}, "p2": {"success": False}, "p3": {"success": False}},
            "failed",
            id="any-below-min-results-fails",
        ),
        pytest.param(
            {"require": "all", "agree_on": "output_hash"},
            {"p1": {"output_hash": "aaa"}, "p2": {"output_hash": "bbb"}},
            "failed",
            id="agree-on-hash-with-differing-hashes-fails",
        ),
        pytest.param(
            {"require": "all", "agree_on": "output_hash"},
            {"p1": {"output_hash": "aaa"}, "p2": {"output_hash": "aaa"}},
            "succeeded",
            id="agree-on-hash-with-equal-hashes-succeeds",
        ),
    ],
)
async def test_last_result_finalises_the_session_by_its_criteria(
    http, gateway, criteria, submissions, outcome
):
    owner = gateway.key("owner")
    session_id = await open_session(
        http, owner, list(submissions), task=task("judge me", **criteria)
    )
    for agent, fields in submissions.items():
        response = await submit(http, gateway.key(agent), session_id, {"by": agent}, **fields)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"

    # The final submission's 200 comes after the projection caught up: no polling needed.
    view = await get_session(http, owner, session_id)
    assert view["status"] == outcome
    assert view["pending"] == []
    assert view["outcome"]["outcome"] == outcome
    assert view["outcome"]["verdict"]["results"] == len(submissions)
    assert view["outcome"]["reason"]
    types = [
        e["type"] for e in await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    ]
    assert types == ["SessionOpened", *["ResultSubmitted"] * len(submissions), "SessionFinalised"]
    assert view["version"] == len(types)
    if criteria.get("agree_on") == "output_hash":
        assert view["outcome"]["verdict"]["agreed_hash"] == "aaa"


async def test_concurrent_last_results_finalise_the_session_exactly_once(http, gateway):
    owner = gateway.key("owner")
    agents = [f"agent-{i}" for i in range(6)]
    session_id = await open_session(http, owner, agents, task=task(require="all"))

    responses = await asyncio.gather(
        *(submit(http, gateway.key(a), session_id, {"by": a}) for a in agents)
    )

    assert [r.status_code for r in responses] == [200] * len(agents), [r.text for r in responses]
    events = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert [e["type"] for e in events].count("SessionFinalised") == 1
    assert events[-1]["type"] == "SessionFinalised"
    assert sorted(e["data"]["agent_id"] for e in events if e["type"] == "ResultSubmitted") == agents
    view = await get_session(http, owner, session_id)
    assert view["status"] == "succeeded"
    assert view["version"] == len(agents) + 2


# Cancelling ---------------------------------------------------------------------------------


async def test_opener_cancels_an_open_session(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    response = await http.post(
        f"{SESSIONS}/{session_id}/cancel", json={"reason": "no longer needed"}, headers=owner
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"session_id": session_id, "status": "accepted", "version": 2}
    view = await get_session(http, owner, session_id)
    assert view["status"] == "cancelled"
    assert view["outcome"] == {
        "outcome": "cancelled",
        "reason": "no longer needed",
        "cancelled_by": "owner",
    }


async def test_cancel_without_a_body_uses_the_default_reason(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    response = await http.post(f"{SESSIONS}/{session_id}/cancel", headers=owner)

    assert response.status_code == 200, response.text
    view = await get_session(http, owner, session_id)
    assert view["status"] == "cancelled"
    assert view["outcome"]["reason"] == "cancelled"


async def test_coordinator_who_did_not_open_may_cancel(http, gateway):
    owner, coordinator = gateway.key("owner"), gateway.key("coord")
    session_id = await open_session(http, owner, ["bob"], coordinator_id="coord")

    response = await http.post(f"{SESSIONS}/{session_id}/cancel", headers=coordinator)

    assert response.status_code == 200, response.text
    assert (await get_session(http, owner, session_id))["outcome"]["cancelled_by"] == "coord"


async def test_cancel_by_another_agent_gets_403_not_authorized(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    for who in ["bob", "mallory"]:  # a participant, a stranger
        response = await http.post(f"{SESSIONS}/{session_id}/cancel", headers=gateway.key(who))
        assert_problem(response, 403, "not_authorized")

    assert (await get_session(http, owner, session_id))["status"] == "open"
    assert len(await get_events(http, gateway.key("auditor-1", "auditor"), session_id)) == 1


async def test_cancel_of_a_closed_session_gets_409(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    finished = await open_session(http, owner, ["bob"])
    assert (await submit(http, bob, finished)).status_code == 200
    cancelled = await open_session(http, owner, ["bob"])
    assert (await http.post(f"{SESSIONS}/{cancelled}/cancel", headers=owner)).status_code == 200

    for session_id, status in [(finished, "succeeded"), (cancelled, "cancelled")]:
        response = await http.post(f"{SESSIONS}/{session_id}/cancel", headers=owner)
        body = assert_problem(response, 409, "session_closed")
        assert body["details"] == {"status": status}
        assert (await get_session(http, owner, session_id))["status"] == status


async def test_cancel_of_unknown_session_gets_404(http, gateway):
    response = await http.post(f"{SESSIONS}/{UNKNOWN_SESSION}/cancel", headers=gateway.key("a"))
    assert_problem(response, 404, "session_not_found")


# Timeouts -----------------------------------------------------------------------------------


async def test_session_past_its_deadline_times_out_listing_pending_participants(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob", "carol", "dave"], timeout_seconds=1)
    assert (await submit(http, bob, session_id)).status_code == 200

    async def timed_out() -> dict[str, Any] | None:
        view = await get_session(http, owner, session_id)
        return view if view["status"] == "timed_out" else None

    view = await eventually(timed_out, timeout=10, what="the session timing out")
    assert view["outcome"]["outcome"] == "timed_out"
    assert view["outcome"]["pending"] == ["carol", "dave"]
    assert view["pending"] == ["carol", "dave"]
    events = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert events[-1]["type"] == "SessionTimedOut"
    assert events[-1]["actor"] == "system"
    assert_problem(await submit(http, gateway.key("carol"), session_id), 409, "session_closed")
    listed = (await http.get(SESSIONS, params={"status": "timed_out"}, headers=owner)).json()
    assert [s["session_id"] for s in listed["items"]] == [session_id]


# Listing ------------------------------------------------------------------------------------


async def test_list_filters_by_status_and_participant(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    with_bob = await open_session(http, owner, ["bob", "carol"])
    without_bob = await open_session(http, owner, ["carol"])
    succeeded = await open_session(http, owner, ["bob"])
    assert (await submit(http, bob, succeeded)).status_code == 200
    cancelled = await open_session(http, owner, ["dave"])
    assert (await http.post(f"{SESSIONS}/{cancelled}/cancel", headers=owner)).status_code == 200

    async def ids(**params: Any) -> list[str]:
        response = await http.get(SESSIONS, params=params, headers=owner)
        assert response.status_code == 200, response.text
        return [s["session_id"] for s in response.json()["items"]]

    assert await ids() == [cancelled, succeeded, without_bob, with_bob]
    assert await ids(status="open") == [without_bob, with_bob]
    assert await ids(status="succeeded") == [succeeded]
    assert await ids(status="cancelled") == [cancelled]
    assert await ids(status="failed") == []
    assert await ids(participant="bob") == [succeeded, with_bob]
    assert await ids(participant="bob", status="open") == [with_bob]
    assert await ids(participant="nobody") == []


async def test_cursor_pages_cover_every_session_once_newest_first(http, gateway):
    owner = gateway.key("owner")
    opened = [await open_session(http, owner, ["bob"]) for _ in range(7)]

    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(10):
        response = await http.get(SESSIONS, params=params, headers=owner)
        assert response.status_code == 200, response.text
        page = response.json()
        sizes.append(len(page["items"]))
        seen += [s["session_id"] for s in page["items"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": 3, "cursor": page["next_cursor"]}

    assert sizes == [3, 3, 1]
    assert seen == list(reversed(opened))


async def test_cursor_paging_keeps_the_filter(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    open_ids, closed_ids = [], []
    for i in range(6):
        session_id = await open_session(http, owner, ["bob"])
        if i % 2:
            assert (await submit(http, bob, session_id)).status_code == 200
            closed_ids.append(session_id)
        else:
            open_ids.append(session_id)

    first = (await http.get(SESSIONS, params={"status": "open", "limit": 2}, headers=owner)).json()
    second = (
        await http.get(
            SESSIONS,
            params={"status": "open", "limit": 2, "cursor": first["next_cursor"]},
            headers=owner,
        )
    ).json()

    assert [s["session_id"] for s in first["items"] + second["items"]] == open_ids[::-1]
    assert second["next_cursor"] is None


# History ------------------------------------------------------------------------------------


async def test_events_are_oldest_first_with_versions_positions_and_a_hash_chain(http, gateway):
    owner = gateway.key("owner")
    bob = {**gateway.key("bob"), "Idempotency-Key": "bob-1", "X-Correlation-Id": "corr-b"}
    carol = gateway.key("carol")
    session_id = await open_session(http, owner, ["bob", "carol"])
    assert (await submit(http, bob, session_id, success=True)).status_code == 200
    assert (await submit(http, carol, session_id, success=False)).status_code == 200

    events = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)

    assert [e["type"] for e in events] == [
        "SessionOpened", "ResultSubmitted", "ResultSubmitted", "SessionFinalised",
    ]  # fmt: skip
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions))
    assert [e["actor"] for e in events] == ["owner", "bob", "carol", "carol"]
    for event in events:
        assert event["aggregate"] == "session"
        assert event["aggregate_id"] == session_id
        assert event["command_id"]
        assert event["correlation_id"]
        assert isinstance(event["data"], dict)
        assert len(event["hash"]) == 64
    assert events[1]["command_id"] == "bob-1"
    assert events[1]["correlation_id"] == "corr-b"
    assert events[1]["data"]["agent_id"] == "bob"
    # The final result and the verdict come from one command.
    assert events[3]["command_id"] == events[2]["command_id"]
    assert events[0]["prev_hash"] == "0" * 64
    for previous, event in itertools.pairwise(events):
        assert event["prev_hash"] == previous["hash"]
    assert len({e["hash"] for e in events}) == len(events)


async def test_events_page_by_version(http, gateway):
    owner = gateway.key("owner")
    agents = ["p1", "p2", "p3"]
    session_id = await open_session(http, owner, agents)
    for agent in agents:
        assert (await submit(http, gateway.key(agent), session_id)).status_code == 200
    everything = await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    assert len(everything) == 5

    url = f"{SESSIONS}/{session_id}/events"
    auditor = gateway.key("auditor-1", "auditor")
    first = (await http.get(url, params={"limit": 2}, headers=auditor)).json()
    second = (
        await http.get(
            url, params={"limit": 2, "after_version": first["next_after_version"]}, headers=auditor
        )
    ).json()
    rest = (
        await http.get(
            url, params={"limit": 2, "after_version": second["next_after_version"]}, headers=auditor
        )
    ).json()

    assert first["next_after_version"] == 2
    assert second["next_after_version"] == 4
    assert rest["next_after_version"] is None
    assert first["items"] + second["items"] + rest["items"] == everything


async def test_events_of_unknown_session_get_404(http, gateway):
    auditor = gateway.key("auditor-1", "auditor")
    response = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}/events", headers=auditor)
    assert_problem(response, 404, "session_not_found")


async def test_unknown_session_gets_404_problem(http, gateway):
    response = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=gateway.key("a"))
    body = assert_problem(response, 404, "session_not_found")
    assert UNKNOWN_SESSION in body["detail"]
