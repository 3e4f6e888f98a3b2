"""
The interfaces the node's workers are wired through.

:class:`~pilotproto.node.service.PilotNode` is a boss, as magic-wormhole's
``Boss``: it makes the workers (the UDP socket, the rendezvous with the
beacon, NAT discovery, sessions, trust, virtual ports, the inbox) and hands
each the collaborators it needs as objects that provide one of these
interfaces.  Every collaborator attribute is checked with
:func:`attr.validators.provides` (or :func:`check_provides`), so a swapped or
missing argument fails at wiring time, loudly, instead of silently at the
first packet.

Ground layer: imports nothing of pilotproto but the errors.  Upper layers
depend on these names, never on each other's classes.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


# -- moving bytes -----------------------------------------------------------------


class IDatagramSender(Interface):
    """The node's one UDP socket, as the layers that send through it see it."""

    def send(data, destination, ttl=None):
        """Send ``data`` to ``destination`` (an :class:`~pilotproto.wire.Endpoint`).

        ``ttl`` sets the IP TTL for this datagram only (priming probes).
        A failed send is counted and dropped: every sender retries.  The
        node's socket may hold the datagram until the end of the reactor
        turn, to send it with others to the same destination in one syscall."""

    def send_many(packets, destination):
        """Send several datagrams (in order) to one ``destination``: the data path's bursts,
        which the socket sends in as few syscalls as the kernel allows (GSO)."""

    def flush():
        """Send now whatever ``send``/``send_many`` hold for the end of this reactor turn."""


class IRelay(Interface):
    """The beacon's relay, as sessions use it."""

    def send_relay(destination, payload):
        """Send one tunnel packet to the node whose 6-byte address is ``destination``."""

    def send_relay_many(destination, payloads):
        """Send several tunnel packets (one burst, in order) to ``destination``: they leave together (GSO, one TLS write)."""

    def relay_kind():
        """How relayed packets leave this node now: ``"relay"`` (UDP) or ``"relay-tcp"`` (TLS)."""


class IDatagramRouter(Interface):
    """The node's one datagram classifier: raw bytes in, to the worker they are for."""

    def datagram_received(data, source):
        """Classify ``data`` (bytes) from ``source`` (a :mod:`pilotproto.wire.sources`
        value: ``Direct`` from the UDP socket, ``BeaconStream`` from the TLS link)
        and hand it on; anything it cannot place is counted and dropped."""


# -- the beacon ---------------------------------------------------------------------


class IPeerDirectory(Interface):
    """Finds other nodes (through the beacon)."""

    def lookup(target):
        """A Deferred firing with a dict (hostname, address, public_key, endpoints, public)
        for the node ``target`` names; fails with NotFound if it is not visible to us."""


class ISignedRequests(Interface):
    """Signed requests to the beacon, retried until answered."""

    def ask(request):
        """Send ``request`` (unsigned, any request id) until the beacon answers;
        a Deferred firing with the answer, or failing with the beacon's error
        as a PilotError (Unavailable when it never answers)."""

    def send(what, request, on_ok, on_error=None, on_give_up=None):
        """Send ``request`` until the beacon says Ok.  ``what`` names it: sending
        the same ``what`` again replaces the copy in flight."""

    def post(request):
        """Sign and send ``request`` once; the beacon sends no answer (a MailAck)."""

    def in_flight(what):
        """Is a request named ``what`` still unanswered?"""

    def cancel(what):
        """Stop sending the request named ``what``."""

    def cancel_matching(prefix):
        """Stop sending every request whose name starts with the tuple ``prefix``."""

    def message_received(msg):
        """A message from the beacon: True if it answered one of our requests."""

    def stop():
        """Stop every request; those waiting on a Deferred fail with Unavailable."""


class IBeaconMail(Interface):
    """The worker that reads what the beacon pushes (trust requests, answers, revocations)."""

    def message_received(msg):
        """Handle one decoded beacon message; True if it was meant for this worker."""

    def registered():
        """The node (re)registered: upload what the beacon may have forgotten."""


class IRendezvous(Interface):
    """The link to the beacon, as the node's datagram router sees it."""

    def is_beacon(source):
        """Did a datagram from ``source`` come from our beacon (its UDP endpoint or its TLS link)?"""

    def beacon_message_received(msg, source):
        """A decoded beacon message from ``source``; True if it was ours."""


class INatDiscovery(Interface):
    """NAT behaviour discovery (STUN against the beacon)."""

    def stun_received(data, source):
        """A STUN datagram from the UDP endpoint ``source``; True if it answered a probe."""


class IBeaconObserver(Interface):
    """Told what the rendezvous learns about the network (NAT discovery listens)."""

    def beacon_resolved(endpoint):
        """The beacon's UDP endpoint is known (its name resolved)."""

    def public_endpoint_seen(endpoint):
        """The beacon reported the endpoint our datagrams arrive from (None over TLS)."""


# -- trust ------------------------------------------------------------------------


class ITrustPolicy(Interface):
    """Answers the tunnel responder's question: do we trust this key?"""

    def is_trusted(public_key):
        """True if this node trusts the Ed25519 ``public_key``."""

    def hostname_of(public_key):
        """The name this node trusts ``public_key`` under, or None (a session a peer
        opened is then labelled by that name before any lookup)."""


class ITrustListener(Interface):
    """Told when trust in a peer begins or ends (the session layer)."""

    def trust_established(public_key):
        """Trust in ``public_key`` is (again) mutual: forget an old revocation."""

    def trust_revoked(public_key):
        """We stopped trusting ``public_key``: its sessions end now."""


# -- sessions ------------------------------------------------------------------------


class ILocalCandidates(Interface):
    """Where peers may reach this node directly."""

    def local_candidates():
        """``(nat_type, public endpoints, LAN endpoints)`` to offer a peer."""


class IStreamAcceptor(Interface):
    """Takes streams and datagrams that peers open to this node's virtual ports."""

    def stream_opened(peer, stream, port):
        """A peer (its session record) opened ``stream`` to ``port``; False refuses it."""

    def datagram_received(peer, port, data):
        """An unreliable datagram for ``port`` arrived from ``peer``."""


class ISessions(Interface):
    """Encrypted sessions with trusted peers."""

    def tunnel_packet_received(data, source):
        """A tunnel packet from ``source`` (``Direct`` from a peer, ``Relayed`` through the beacon)."""

    def tunnel_packets_received(packets, source):
        """Several tunnel packets, in order, from one source: a ``Direct`` peer (a GRO read) or a ``Relayed`` sender (its frames of one beacon burst)."""

    def open_stream(target, port):
        """A Deferred firing with ``(peer record, stream)`` for a new stream to ``target``'s ``port``."""

    def ping(target, count, interval, timeout, payload):
        """A Deferred firing with a ping summary dict."""

    def describe():
        """A list of dicts, one per peer (path, endpoint, RTT, bytes)."""

    def stop():
        """Close every session (telling peers) and stop every timer."""


# -- messages and events (the node's workers) -------------------------------------------


class IMailPeers(Interface):
    """The peers messages and events go to, as the mail workers see them (the boss adapts trust and ports)."""

    def trusted_peers():
        """A list of dicts (``hostname``, ``address``) of the peers this node trusts, now."""

    def lookup(target):
        """A Deferred firing with the directory's dict for ``target`` (NotFound if it is not visible)."""

    def dial(target, port, factory):
        """A Deferred firing with ``factory``'s protocol on a new stream to ``target``'s ``port``."""


class IItemCarrier(Interface):
    """Carries one item to a peer's port (one stream: header, body, the receiver's answer)."""

    def deliver(address, port, header, data):
        """A Deferred firing with the receiver's ok answer (a dict), or failing with its error."""


class IOutbox(Interface):
    """The durable per-peer outbox: in order, one in flight per peer, retried with backoff."""

    def enqueue(address, port, id, kind, header, data, replaces=None):
        """Store an item for ``address`` (on disk when this returns) and start delivering; its number."""

    def when_acked(n):
        """A Deferred firing with the receiver's answer once item ``n`` is acked."""

    def peer_seen(address):
        """``address`` reached us: retry what waits for it now."""

    def drop_peer(address):
        """Forget every item queued for ``address`` (trust in it ended)."""


# -- the node as its users see it -------------------------------------------------------


class IPilotNode(Interface):
    """
    A pilot node, in this process (:class:`~pilotproto.node.service.PilotNode`)
    or behind the local daemon's control socket
    (:class:`~pilotproto.control.daemon.DaemonNode`).

    The ``pilot:`` endpoints, the control socket's commands, ``pilotctl`` and
    the SDKs depend on this interface, never on either class.  Every method
    returns a Deferred; failures are PilotError subclasses.
    """

    home = Attribute("The node's home directory.")
    reactor = Attribute("The reactor (and clock) the node runs on.")

    def info():
        """A dict: hostname, address, public key, beacon, registration, endpoints, NAT type, ..."""

    def lookup(target):
        """A dict describing the node ``target`` names (see IPeerDirectory.lookup)."""

    def ping(target, count=4, interval=1.0, timeout=2.0, payload=b""):
        """A ping summary dict."""

    def peers():
        """``{"peers": [...]}``: one entry per session."""

    def handshake(target, reason):
        """Ask ``target`` for trust; a dict describing the request."""

    def pending():
        """``{"pending": [...], "outgoing": [...]}``."""

    def approve(peer):
        """Approve ``peer``'s request; a dict describing the new trust."""

    def reject(peer):
        """Reject ``peer``'s request."""

    def trusted():
        """``{"trusted": [...]}``."""

    def revoke(peer):
        """End trust in ``peer`` (its sessions end at once)."""

    def dial(target, port, factory):
        """Open a stream to ``port`` on ``target``; fires with the connected protocol.

        Fails with a ``twisted.internet.error.ConnectError`` subclass that is
        also a PilotError (see :mod:`pilotproto.node.failures`)."""

    def listen(port, factory):
        """Run ``factory``'s protocols on streams peers open to ``port``; fires
        with an ``IListeningPort``, or fails with ``CannotListenError``."""

    def recv(count=None, timeout=0):
        """``{"messages": [...]}`` from the inbox (port 1001)."""

    # -- agent cards

    def card_set(card):
        """Sign ``card`` (a dict, ``docs/discovery.md``) at a new version, keep it in the home
        (card.json) and publish it at the beacon; a dict describing it (``published``)."""

    def card_show(peer=None):
        """Our own card (``peer`` None), or ``peer``'s, verified; NotFound if none is visible."""

    def card_delete():
        """Forget our card here and at the beacon; ``{"deleted": bool, "published": bool}``."""

    def find(tag=None, capability=None, text=None):
        """``{"cards": [...], "total", "rejected"}``: the cards of nodes we may see that carry
        ``tag`` and ``capability`` and contain ``text``, each verified against its node's key."""

    # -- messages and events

    def send_message(target, data, wait=10):
        """Send ``data`` (bytes) to ``target``'s inbox through the durable outbox; a dict
        (id, peer, address, size, sha256, state: "delivered" or "queued" after ``wait`` s)."""

    def inbox(after=0, count=1000, timeout=0, kind=None):
        """``{"messages": [ITEM...], "last": SEQ}``: stored items after ``after`` (not removed),
        long-polling up to ``timeout`` s for one."""

    def inbox_delete(seqs):
        """``{"deleted": N}``: remove the items with these seqs."""

    def outbox(id=None, wait=0, count=100):
        """``{"messages": [...], "queues": [...]}``: what became of the messages we sent, newest
        first (state ``queued``, ``delivered`` via ``stream`` or ``beacon``, or ``failed``;
        ``sealed``: a copy waits at the beacon); ``id``: that one, waiting up to ``wait`` s."""

    def publish(topic, data):
        """Publish ``data`` (bytes) on ``topic``; ``{"id", "topic", "size", "subscribers"}``."""

    def subscribe(pattern, after, on_event):
        """Call ``on_event(dict)`` for every event matching ``pattern`` (stored ones after seq
        ``after`` first, when it is not None); fires with a handle: ``.last`` (the newest
        stored seq) and ``.close()``."""

    # -- forwards and exposes

    def forward(bind, local_port, target, port):
        """Listen on TCP ``bind:local_port`` (``bind`` None: 127.0.0.1; port 0: any) and bridge each
        connection to a stream to ``target:port``; saved in config.json.  A dict describing it
        (``local_port`` is the real one); fails with ``port_in_use``, ``already_running``, ..."""

    def forwards():
        """``{"forwards": [...]}``: each forward, its ``listening``/``error`` and its counts."""

    def unforward(bind, local_port):
        """Stop the forward on ``bind:local_port`` and unsave it; ``{"removed": {...}}``."""

    def expose(port, host, tcp_port, allow=()):
        """Bridge every stream to virtual ``port`` to TCP ``host:tcp_port`` (``host`` None: 127.0.0.1),
        for trusted peers, or only ``allow`` (names or addresses); saved in config.json.  A dict."""

    def exposes():
        """``{"exposes": [...]}``: each expose, its ``listening``/``error`` and its counts."""

    def unexpose(port):
        """Stop exposing ``port`` and unsave it; ``{"removed": {...}}``."""

    # -- MCP servers

    def mcp_serve(port, argv, cwd, allow=()):
        """Run a new ``argv`` process (no shell, in directory ``cwd``) for every stream to virtual
        ``port``, its stdin/stdout bridged to the stream, for trusted peers or only ``allow``
        (names or addresses); saved in config.json.  A dict describing it."""

    def mcp_servers():
        """``{"servers": [...]}``: each MCP server, its ``listening``/``error`` and its counts."""

    def mcp_unserve(port):
        """Stop serving MCP on ``port`` and unsave it; ``{"removed": {...}}``."""

    def shutdown():
        """Stop the node; fires once it heard the request (not once it stopped)."""
