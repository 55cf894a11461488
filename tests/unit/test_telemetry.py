"""Tracing is off unless an OTLP endpoint is configured."""

from __future__ import annotations

import pytest
from chorus.telemetry import setup_tracing
from opentelemetry.sdk.trace import TracerProvider


def test_tracing_is_off_without_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert setup_tracing("chorus-test") is None


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_otlp_endpoint_turns_tracing_on(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    provider = setup_tracing("chorus-test")
    try:
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "chorus-test"
    finally:
        provider.shutdown()
