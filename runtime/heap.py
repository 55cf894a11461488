"""How a long-running Chorus process sets CPython's cyclic garbage collector.

Why: the collector stops the whole process while it scans, and with the default settings it
scans a lot that can never be garbage. Measured with ``gc.callbacks`` in each process of
``python -m bench.e2e --rate 1000`` (CPU time of each collection): the engine ran 5-8 full
collections in 20 s of 20-110 ms each, the projector and the relay 4-12 of 25-40 ms, and a
command that arrives during one waits for all of it (the open loop's p99 was about 100 ms).
Two things made those scans long:

- Everything alive once start-up is done (imported modules, classes, the composition
  root's parts: 45,000-60,000 objects in each process) stays alive and was scanned again in
  every full collection. ``gc.freeze()`` moves it out of the collector's sight for good.
- With a young generation of 700 allocations (the default), records that live for a few
  milliseconds (a batch's events, the log tail's window, requests in flight) survived two
  young collections, reached the old generation, and each quarter of growth there set off
  another full scan. A young generation of ``YOUNG`` allocations lets them die young.

With both, the same bench ran one full collection per process (the one below) and 2-9
young ones, about a quarter of the collector's CPU before. Reference counting still frees
almost everything at once; the collector is only for cycles, and it still runs.
"""

from __future__ import annotations

import gc

#: Allocations between young collections (CPython's default: 700).
YOUNG = 20_000
#: Young collections per middle one, middle ones per full one (defaults: 10 and 10).
MIDDLE = 20
OLD = 10


def settle() -> None:
    """Call once a process has started (its parts built, before it takes load): collect
    what start-up left behind, freeze what survives, and set the thresholds above."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
