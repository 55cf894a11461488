"""The engine's write path alone: decide + dedup + group commit, against the bare store.

    python -m bench.processor [--sessions 300] [--participants 10] [--batch 128]

Feeds the Processor batches of ``submit_result`` commands (no NATS) and, in the same run,
times the eventsourcing recorder inserting the same number of rows in the same batch sizes
with no logic at all. The ratio says how much of the store's own speed the engine keeps.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid

from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import StoredEvent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="chorus-bench-")

    processor = Processor(open_recorder(f"sqlite:///{work}/engine.db"))
    agents = [f"agent-{i}" for i in range(args.participants)]
    sessions = [str(uuid.uuid4()) for _ in range(args.sessions)]
    opens = [
        Command(
            "coordinator",
            HANDLERS[("session", "open")],
            Envelope(
                command_id=uuid.uuid4().hex,
                payload=OpenSession(session_id=s, participants=agents, task=Task(description="b")),
            ),
        )
        for s in sessions
    ]
    for i in range(0, len(opens), args.batch):
        processor.handle_batch(opens[i : i + args.batch])
    submits = [
        Command(
            agent,
            HANDLERS[("session", "submit_result")],
            Envelope(
                command_id=uuid.uuid4().hex,
                payload=SubmitResult(session_id=s, result={"v": 42}, output_hash="sha256:ab"),
            ),
        )
        for s in sessions
        for agent in agents
    ]
    started = time.perf_counter()
    for i in range(0, len(submits), args.batch):
        processor.handle_batch(submits[i : i + args.batch])
    engine_rate = len(submits) / (time.perf_counter() - started)

    # Baseline: the same number of rows (event + dedup record per command), no logic.
    recorder = open_recorder(f"sqlite:///{work}/bare.db")
    body = b'{"type":"ResultSubmitted","data":{"agent_id":"agent-1","result":{"v":42}}}' * 2
    rows = [
        (StoredEvent(uuid.uuid4(), 1, "session.ResultSubmitted", body),
         StoredEvent(uuid.uuid4(), 1, "command.CommandAccepted", body))
        for _ in submits
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        recorder.insert_events([e for pair in rows[i : i + args.batch] for e in pair])
    bare_rate = len(rows) / (time.perf_counter() - started)

    print(
        f"chorus bench.processor  ({len(submits):,} submit_result commands, batches of {args.batch})"
    )
    print(f"  processor (decide, dedup, hash, commit)  {engine_rate:>10,.0f} commands/s")
    print(f"  bare recorder inserts, same rows         {bare_rate:>10,.0f} commands/s (baseline)")
    print(f"  ratio processor / bare store             {engine_rate / bare_rate:>10.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
