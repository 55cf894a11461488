"""Wire contracts shared with agents: subjects, command envelopes, replies, feed records.

Everything here is plain msgspec Structs and string helpers, so an agent written in any
language can speak the protocol from the JSON Schema that `chorus schema` writes.
"""
