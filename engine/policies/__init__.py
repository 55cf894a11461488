"""Process managers and timers: they follow the event log and issue commands."""
