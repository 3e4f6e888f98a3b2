"""
How the rendezvous package's parts are wired to each other.

:class:`~pilotproto.rendezvous.link.BeaconLink` makes the parts (the
registration machine, the transport chooser, the TLS link, the signed
requests) and is the object most of them report to, as magic-wormhole's
boss is.  Each part checks what it is given against one of these
interfaces, so a swapped argument fails when the link is built.  The node
never sees them: it talks to the link through :mod:`pilotproto.interfaces`.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBeaconChannel(Interface):
    """Where the parts put datagrams for the beacon."""

    def send_to_beacon(data):
        """Send ``data`` by the transport in use (UDP, or the TLS link when it is up)."""

    def send_by_udp(data):
        """Send ``data`` by UDP whatever the transport in use (asking whether UDP works)."""


class IRegistrationWatcher(Interface):
    """Told when the registration machine has (re)registered."""

    def beacon_registered(observed):
        """The beacon accepted our registration; ``observed`` is where it saw us."""


class IRegistration(Interface):
    """The registration machine, as the transport chooser sees it."""

    hello_unanswered_since = Attribute(
        "When the first Hello that no Challenge has answered was sent (clock seconds), or None."
    )

    def transport_changed():
        """The node now reaches the beacon another way: prove we are there."""


class ITLSLink(Interface):
    """The TCP/TLS link to the beacon, as the transport chooser sees it."""

    last_error = Attribute("The latest failure as ``{'code', 'message'}``; None once connected.")

    def start():
        """Keep a verified connection up (reconnecting)."""

    def stop():
        """Close the connection and stop reconnecting; a Deferred firing once closed."""


class ITLSLinkListener(Interface):
    """Told what comes up the TLS link."""

    def tls_link_up():
        """A verified connection is ready."""

    def tls_datagram_received(data):
        """One datagram (a beacon message or a relay frame) arrived over the link."""
