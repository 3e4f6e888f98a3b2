"""Long-term node identity (Ed25519) and the permanent address derived from it."""

from .address import Address
from .keys import Identity, load_or_create, verify_signature, x25519_from_ed25519_public

__all__ = ["Address", "Identity", "load_or_create", "verify_signature", "x25519_from_ed25519_public"]
