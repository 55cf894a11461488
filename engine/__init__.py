"""The write side: aggregates, command handlers, the command worker, timers and the relay."""
