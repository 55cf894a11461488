"""Domain event types, their stored form, schema versions and upcasters.

Shared by the engine (which writes events) and the projections (which read them).
"""
