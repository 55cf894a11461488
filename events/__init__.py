"""Domain event types, their stored form, schema versions and upcasters.

Shared by the engine (which writes events) and the projections (which read them).
"""

# Importing any event module installs the decoder behind ``EventRecord.event``.
from chorus.events import codec as codec
