"""Schemathesis against ``/schema/openapi.json`` of a real ``chorus up``, with bounded
examples: no 5xx, and every answer (status, content type, body) is one the document
states.

Schema-valid requests may still break a rule no schema can state (an unknown workflow
type, a cursor this API never issued, "participants or size", "at_version or as_of"): those
must be 400 problem details whose message names the rule, never a complaint about the
request's shape (which would mean the document is wrong). That is the one check replaced.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from .conftest import ChorusUp, free_port

pytestmark = pytest.mark.e2e

#: Examples per operation: bounded (and derandomized) so CI stays quick and repeatable.
EXAMPLES = int(os.environ.get("CHORUS_SCHEMATHESIS_EXAMPLES", "10"))

#: Operations left out: they start the program or reach the URL their body names (an MCP
#: server), so fuzzing them would run random programs. Their contract is tested with real
#: servers in the MCP tests.
CALLS_OUT = {
    "/api/v1/mcp-servers": ("POST",),
    "/api/v1/mcp-servers/{name}": ("PATCH",),
}

#: How msgspec and the gateway phrase a request of the wrong shape.
SHAPE_ERROR = re.compile(
    r"^(Expected `|Object missing required field|Object contains unknown field|"
    r"Invalid enum value|missing required field)"
)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChorusUp]:
    root: Path = tmp_path_factory.mktemp("conformance")
    chorus = ChorusUp(root / "data", free_port(), root)
    try:
        chorus.start()
        yield chorus
    finally:
        chorus.stop()


def valid_requests_fail_only_on_rules(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid request answered 400 must be about a rule, not about its shape."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return
    detail = str(response.json().get("detail", ""))
    if SHAPE_ERROR.match(detail):
        raise AssertionError(f"a schema-valid request was refused for its shape: {detail}")


def invalid_requests_are_refused(ctx: Any, response: Any, case: Any) -> None:
    """A schema-violating request gets a 4xx (any: 413 for a body over the limit too).
    Undocumented query parameters are ignored, as HTTP APIs do, so a request whose only
    fault is one is not refused."""
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive or 400 <= response.status_code < 500:
        return
    documented = {parameter.name for parameter in case.operation.query}
    if set(case.query or {}) - documented:
        return
    raise AssertionError(f"a schema-violating request was answered {response.status_code}")


def test_every_answer_is_documented_and_none_is_a_server_error(up: ChorusUp) -> None:
    api = schemathesis.openapi.from_url(f"{up.base_url}/schema/openapi.json")
    headers = {"Authorization": f"Bearer {up.admin_key}"}
    failures: list[str] = []
    for result, mode in itertools.product(api.get_all_operations(), list(GenerationMode)):
        operation = result.ok()
        if operation.method.upper() in CALLS_OUT.get(operation.path, ()):
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)  # fmt: skip
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            case.validate_response(
                response,
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                additional_checks=[valid_requests_fail_only_on_rules, invalid_requests_are_refused],
            )

        try:
            check()
        except Unsatisfiable:
            continue  # e.g. no invalid request exists for a route without parameters
        except (Exception, BaseExceptionGroup) as error:
            failures.append(f"{operation.label} ({mode.value} data): {error}")
    assert not failures, "\n\n".join(failures)
