"""
pilotproto: a session-layer overlay network for agents.

Every node has a permanent address derived from its Ed25519 key, registers
with a beacon, and reaches other nodes by name through end-to-end encrypted
tunnels once both sides trust each other.
"""

__version__ = "0.1.0"
