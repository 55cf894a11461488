"""The Litestar gateway: REST and WebSocket over the bus (commands) and read models (queries).

It never writes the event store: commands go to the engine over NATS, queries read the
projections, history reads the store read-only, feeds come from the EVENTS stream.
"""
