"""The beacon: registry, STUN, rendezvous."""
