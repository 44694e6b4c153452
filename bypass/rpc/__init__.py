"""Platform-neutral RPC between an agent (C, in the program) and its shadow (Python).

protocol.py  constants of the wire protocol (docs/protocol.md is the prose)
framing.py   length-prefixed msgpack frames
auth.py      shared-secret HMAC challenge-response
neutral.py   local <-> neutral values (from neutral.toml); neutral_c.py generates the C side
server.py    the shadow server: connections, per-process state, dispatch
client.py    a small Python client (tests, tools)
c/           the agent's C runtime pieces: msgpack codec, RPC client
"""
