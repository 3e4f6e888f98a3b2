"""
The node's one datagram classifier: what a datagram on the node's socket is.

Everything a node receives arrives on one UDP socket (and, when UDP to the
beacon is blocked, as frames on the TLS link to the beacon).  The first byte
says what a datagram is (see :mod:`pilotproto.wire`); :func:`classify`
decodes as much as its owner needs and returns one typed value, so the node
dispatches on the type through a table, and no layer looks at first bytes.

Pure: no I/O.  Anything it cannot place raises :class:`DecodeError`.

The relayed data path does not classify one datagram at a time: the beacon
forwards a node's burst as one GSO run, the node's socket reads it as one
GRO run, and :func:`relayed_runs` splits such a run of 0xD1 frames into one
list of tunnel packets per relayed sender, for the sessions to take at once.
"""

from __future__ import annotations

import attrs

from . import KIND_TUNNEL_DATA, KIND_TUNNEL_INIT, is_stun
from . import beacon as msgs
from . import relay
from .codec import DecodeError


@attrs.frozen
class BeaconMessage:
    """A control message from the beacon (answers, challenges, pushed mail)."""

    message: object


@attrs.frozen
class RelayedPacket:
    """A tunnel packet the beacon relayed from the node at ``sender``."""

    sender: bytes
    payload: bytes


@attrs.frozen
class StunMessage:
    """A STUN datagram (an answer to NAT discovery), left encoded for its owner."""

    data: bytes


@attrs.frozen
class TunnelPacket:
    """A tunnel packet straight from a peer, left encoded for the tunnel layer."""

    data: bytes


Datagram = BeaconMessage | RelayedPacket | StunMessage | TunnelPacket


def classify(data: bytes) -> Datagram:
    """The typed value ``data`` is; DecodeError if it is none of ours."""
    if not data:
        raise DecodeError("empty datagram")
    first = data[0]
    if first == msgs.KIND:
        return BeaconMessage(msgs.decode(data))
    if first == relay.KIND_FROM_BEACON:
        frame = relay.decode_from_beacon(data)
        return RelayedPacket(frame.sender, frame.payload)
    if is_stun(data):
        return StunMessage(bytes(data))
    if KIND_TUNNEL_INIT <= first <= KIND_TUNNEL_DATA:
        return TunnelPacket(bytes(data))
    raise DecodeError(f"unknown datagram kind 0x{first:02x}")


def relayed_runs(datagrams) -> list[tuple[bytes | None, list]]:
    """The beacon's ``datagrams`` (in order), grouped for the node: each run of
    well-formed 0xD1 frames from one relayed sender becomes ``(sender,
    [tunnel packet, ...])``; anything else (a beacon message, a malformed
    frame) is ``(None, [datagram])``, to :func:`classify` alone."""
    runs: list = []
    payloads: list | None = None
    run_sender = None
    for data in datagrams:
        if data[:1] == _FROM_BEACON_KIND:
            try:
                sender, payload = relay.split_from_beacon(data)
            except DecodeError:
                sender = None
            if sender is not None:
                if payloads is None or sender != run_sender:
                    payloads, run_sender = [], sender
                    runs.append((sender, payloads))
                payloads.append(payload)
                continue
        runs.append((None, [data]))
        payloads = None
    return runs


_FROM_BEACON_KIND = bytes([relay.KIND_FROM_BEACON])
