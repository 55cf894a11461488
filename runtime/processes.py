"""Entry points of the split processes: engine, relay, projector, gateway.

Each asks the composition root (``chorus.bootstrap``) for its parts and runs them until
signalled; nothing is wired here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from chorus import heap
from chorus.bootstrap import bootstrap
from chorus.projections.projector import run_together
from chorus.settings import Settings
from chorus.telemetry import serve_metrics, setup_tracing

log = logging.getLogger("chorus")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _step_back(settings: Settings) -> None:
    """Lower this process's CPU priority by ``background_nice`` (before any thread starts,
    so its threads inherit it). The relay and the projector follow the log; a reply
    waits for the engine alone, so when the cores are all busy the engine goes first."""
    if settings.background_nice:
        os.nice(settings.background_nice)


def run_engine(settings: Settings, *, relay_only: bool = False) -> None:
    """``chorus engine``, or with ``relay_only`` ``chorus relay`` (the relay and the sealer
    alone, beside an engine that does not run them: ``CHORUS_ENGINE_RELAY=false``)."""
    if relay_only:
        _step_back(settings)
    else:
        serve_metrics(settings.metrics_port, settings.host)

    async def main() -> int:
        components = bootstrap(settings, tracer_provider=setup_tracing("chorus-engine"))
        service = components.relay() if relay_only else components.engine()
        await service.start()
        heap.settle()
        signalled = asyncio.create_task(_until_signalled())
        failed = asyncio.create_task(service.wait_failed())
        try:
            await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            failed.cancel()
            await service.stop()
        if failed.done() and not failed.cancelled():
            # A dead worker, relay or timer must not hide in a live process: exit, so the
            # supervisor (chorus up, compose, systemd) restarts us.
            task = failed.result()
            log.error("engine task %s ended: %r; exiting", task.get_name(), task.exception())
            return 1
        return 0

    if code := asyncio.run(main()):
        raise SystemExit(code)


def run_projector(settings: Settings) -> None:
    _step_back(settings)
    serve_metrics(settings.metrics_port, settings.host)

    async def main() -> None:
        tracing = setup_tracing("chorus-projector")
        runners = bootstrap(settings, tracer_provider=tracing).projection_runners()
        heap.settle()
        tasks = [asyncio.create_task(run_together(runners))]
        try:
            await _until_signalled()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())


def run_gateway(settings: Settings) -> None:
    import uvicorn
    from chorus.gateway.server import server_options

    s = settings.resolved()
    app = bootstrap(s, tracer_provider=setup_tracing("chorus-gateway")).gateway_app()
    heap.settle()
    uvicorn.run(
        app,
        host=s.host,
        port=s.port,
        log_level=s.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (JSON lines)
        access_log=False,
        ws_ping_interval=20,
        timeout_graceful_shutdown=5,
        server_header=False,  # no banner naming the server and its version
        **server_options(s.request_read_timeout, s.max_connections),
    )
