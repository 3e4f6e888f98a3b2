"""
The one collaborator a :class:`~pilotproto.tunnel.TunnelEndpoint` has above
it: the layer that moves its packets and hears what they carry.

The tunnel layer does no I/O and knows nothing of paths or sessions; it
names a peer by its Ed25519 public key and a packet's origin by a typed
source (:mod:`pilotproto.wire.sources`), which it only uses as cookie
binding (``source.key()``) and passes up unchanged.
"""

from __future__ import annotations

from zope.interface import Interface


class ITunnelOwner(Interface):
    """What the tunnels of one node tell, and ask of, the layer above them."""

    def tunnel_send(peer_key, packet):
        """Put one tunnel packet (already sealed or stamped) on the path to ``peer_key``."""

    def tunnel_send_many(peer_key, packets):
        """Put several sealed data packets (one burst, in order) on the path to ``peer_key``."""

    def tunnel_authenticated(peer_key, source, size):
        """A packet of ``size`` bytes from ``source`` proved to come from ``peer_key``
        (a data packet that opened, or an initiation that passed every check).
        The path layer learns roaming endpoints from it."""

    def tunnel_data_many(peer_key, plaintexts, source):
        """Plaintexts (none empty: keepalives are not reported), in order, from
        packets that came from ``source`` (one, or a burst of a GRO read);
        :meth:`tunnel_authenticated` follows once with their total size."""

    def tunnel_up(peer_key):
        """A session with ``peer_key`` can carry data."""

    def tunnel_down(peer_key):
        """The last usable session with ``peer_key`` expired or was torn down."""
