"""The engine's I/O: the bus worker, the relay, liveness KV, streams, the sealer."""
