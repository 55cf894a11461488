"""Pure decisions: aggregates' decide/fold, criteria, evidence, routing.

No NATS, no store: import-linter forbids it, so every rule here is testable without I/O."""
