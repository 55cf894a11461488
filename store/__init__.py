"""The event store: opening recorders and the SQL we run against them."""
