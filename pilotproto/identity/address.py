"""
Permanent addresses.

An address is 48 bits taken from a BLAKE2b hash of the node's Ed25519 public
key, so it never changes while the key does not, whatever the node's IP,
NAT or beacon.  Its text form is ``N:XXXX.XXXX.XXXX``: the network number
(always 0 for now) in decimal, then the 48 bits as three groups of four
upper-case hex digits.  Parsing accepts either case.

48 bits are short enough to read aloud and long enough that an accidental
collision is unlikely; a deliberate one buys nothing, because the beacon binds
an address to the first key that registers it and every tunnel handshake
proves the full key.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from ..errors import InvalidArgument

ADDRESS_BITS = 48
_PERSON = b"pilot-address-v1"
_TEXT = re.compile(r"^(\d{1,5}):([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})$")


@attrs.frozen(order=True)
class Address:
    network: int
    node: int

    @classmethod
    def from_public_key(cls, public_key: bytes, network: int = 0) -> "Address":
        digest = hashlib.blake2b(public_key, digest_size=ADDRESS_BITS // 8, person=_PERSON[:16]).digest()
        return cls(network, int.from_bytes(digest, "big"))

    @classmethod
    def parse(cls, text: str) -> "Address":
        m = _TEXT.match(text.strip())
        if not m:
            raise InvalidArgument(
                f"not a pilot address: {text!r}",
                hint="An address looks like 0:A91F.0000.7C2E",
            )
        network = int(m.group(1))
        if network > 0xFFFF:
            raise InvalidArgument(f"network number out of range in {text!r}")
        return cls(network, int("".join(m.group(2, 3, 4)), 16))

    @staticmethod
    def looks_like(text: str) -> bool:
        return bool(_TEXT.match(text.strip()))

    def to_bytes(self) -> bytes:
        return self.network.to_bytes(2, "big") + self.node.to_bytes(6, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Address":
        if len(raw) != 8:
            raise InvalidArgument("an address is 8 bytes on the wire")
        return cls(int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big"))

    def __str__(self) -> str:
        h = f"{self.node:012X}"
        return f"{self.network}:{h[0:4]}.{h[4:8]}.{h[8:12]}"
