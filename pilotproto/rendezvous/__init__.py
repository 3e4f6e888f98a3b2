"""The rendezvous with the beacon: registration, the UDP/TLS link, signed requests."""
