"""
Where each datagram goes: the node's one classifier, and a table.

Datagrams come from the UDP socket (source ``Direct``) and, when UDP to the
beacon is blocked, from the TLS link to the beacon (source
``BeaconStream``).  :func:`pilotproto.wire.datagrams.classify` says what each
is; the table below says who takes it:

==================  =====================================================
``BeaconMessage``   the rendezvous (only from the beacon)
``RelayedPacket``   the sessions, as ``Relayed(sender)`` (only from the beacon)
``StunMessage``     NAT discovery (only over UDP)
``TunnelPacket``    the sessions (only straight from a peer, over UDP)
==================  =====================================================

Anything else, or anything from the wrong source, is counted and dropped:
a forged or malformed packet never reaches a worker and never raises.
"""

from __future__ import annotations

import collections

import attrs

from twisted.logger import Logger
from zope.interface import implementer

from ..common.wiring import provides
from ..interfaces import IDatagramRouter, INatDiscovery, IRendezvous, ISessions
from ..wire import KIND_TUNNEL_DATA, KIND_TUNNEL_INIT, DecodeError
from ..wire.datagrams import BeaconMessage, RelayedPacket, StunMessage, TunnelPacket, classify, relayed_runs
from ..wire.sources import Direct, Relayed


@implementer(IDatagramRouter)
@attrs.define(eq=False)
class DatagramRouter:
    """Sorts datagrams for ``link`` (the rendezvous), ``nat`` (NAT discovery) and ``sessions``."""

    link: object = attrs.field(validator=provides(IRendezvous))
    nat: object = attrs.field(validator=provides(INatDiscovery))
    sessions: object = attrs.field(validator=provides(ISessions))
    counters: collections.Counter = attrs.field(factory=collections.Counter)
    _table: dict = attrs.field(init=False)

    log = Logger()

    def __attrs_post_init__(self):
        self._table = {
            BeaconMessage: self._beacon_message,
            RelayedPacket: self._relayed,
            StunMessage: self._stun,
            TunnelPacket: self._tunnel,
        }

    def datagram_received(self, data: bytes, source) -> None:
        try:
            packet = classify(data)
        except DecodeError:
            self.counters["dropped_malformed"] += 1
            return
        try:
            handled = self._table[type(packet)](packet, source)
        except DecodeError:
            self.counters["dropped_malformed"] += 1
            return
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.failure("node failed to handle a datagram from {src}", src=str(source))
            return
        if not handled:
            self.counters["dropped_unsolicited"] += 1

    def datagrams_received(self, packets, source) -> None:
        """Several datagrams, in order, from one ``source`` (a GRO read, or one
        sender's packets of a read batch).  Tunnel packets straight from a
        peer, the data path, go to the sessions together without a classified
        object each, and so do the beacon's relayed frames, one run per
        relayed sender; anything else is classified one by one."""
        if type(source) is not Direct:
            for data in packets:
                self.datagram_received(data, source)
            return
        if self.link.is_beacon(source):
            self._from_beacon(packets, source)
            return
        run = []
        for data in packets:
            if data and KIND_TUNNEL_INIT <= data[0] <= KIND_TUNNEL_DATA:
                run.append(data)
                continue
            if run:
                self._tunnel_run(run, source)
                run = []
            self.datagram_received(data, source)
        if run:
            self._tunnel_run(run, source)

    def _from_beacon(self, packets, source) -> None:
        for sender, run in relayed_runs(packets):
            if sender is None:
                self.datagram_received(run[0], source)
            else:
                self._tunnel_run(run, Relayed(sender))

    def _tunnel_run(self, packets: list, source) -> None:
        try:
            self.sessions.tunnel_packets_received(packets, source)
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.failure("node failed to handle {n} datagrams from {src}", n=len(packets), src=str(source))

    def _beacon_message(self, packet: BeaconMessage, source) -> bool:
        return self.link.beacon_message_received(packet.message, source)

    def _relayed(self, packet: RelayedPacket, source) -> bool:
        if not self.link.is_beacon(source):
            return False
        self.sessions.tunnel_packet_received(packet.payload, Relayed(packet.sender))
        return True

    def _stun(self, packet: StunMessage, source) -> bool:
        return isinstance(source, Direct) and self.nat.stun_received(packet.data, source.endpoint)

    def _tunnel(self, packet: TunnelPacket, source) -> bool:
        if not isinstance(source, Direct):
            return False
        self.sessions.tunnel_packet_received(packet.data, source)
        return True
