"""Long-term node identity (Ed25519) and the permanent address derived from it."""

from .address import Address
from .keys import (
    IdentityMissing,
    Identity,
    check_not_orphaned,
    fingerprint,
    load_or_create,
    orphaned_state,
    verify_signature,
    x25519_from_ed25519_public,
)

__all__ = [
    "Address",
    "Identity",
    "IdentityMissing",
    "check_not_orphaned",
    "fingerprint",
    "load_or_create",
    "orphaned_state",
    "verify_signature",
    "x25519_from_ed25519_public",
]
