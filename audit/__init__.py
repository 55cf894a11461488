"""The audit record: the seal ledger, store verification and signed export bundles."""
