"""
The beacon's STUN server: one Binding request in, at most one answer out.

:class:`BeaconServer` hands every STUN-looking datagram to
:meth:`StunResponder.answer` and sends the :class:`StunAnswer` it gets
back from the socket the answer names.  Nothing here does I/O, and
``docs/stun.md`` lists what is supported; in short:

- RFC 8489 Binding: XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS) of the source.
- RFC 5780 (with an alternate address *and* port): OTHER-ADDRESS,
  RESPONSE-ORIGIN, CHANGE-REQUEST answered from the socket it names,
  RESPONSE-PORT (the answer goes to the requester's own address at that
  port) and PADDING (the answer is padded too).  Without alternates,
  CHANGE-REQUEST gets 420 (§6.1); RESPONSE-PORT and PADDING are still
  honoured, since neither needs a second address.
- RFC 3489 requests (no magic cookie) are answered as RFC 8489 §12.2
  allows: MAPPED-ADDRESS, with the cookie field copied back, plus the 3489
  attributes SOURCE-ADDRESS and CHANGED-ADDRESS; nothing a 3489 client
  would refuse (it fails on any unknown type below 0x8000).
- Amplification: no request is authenticated, so no answer is larger than
  ``amplification_limit`` (3) times the request.  Attributes are left out
  in a fixed order of importance until the answer fits; an answer whose
  required part does not fit is not sent.  Answers go only to the
  requester's own address (RESPONSE-PORT changes the port, never the host;
  RESPONSE-ADDRESS, which would change the host, gets 420).
"""

from __future__ import annotations

import collections
from typing import Sequence

import attrs

from ..wire import Endpoint
from ..wire import stun
from .tls import StreamEndpoint

#: the comprehension-required request attributes the beacon acts on
#: (RFC 5780 §7.2, §7.5, §7.6); anything else below 0x8000 gets a 420
HONOURED = frozenset({stun.ChangeRequest.TYPE, stun.ResponsePort.TYPE, stun.Padding.TYPE})
#: carried and not checked: the beacon issues no STUN credentials, and like
#: public STUN servers answers a request that has some anyway
UNCHECKED = frozenset({stun.USERNAME, stun.MESSAGE_INTEGRITY, stun.MESSAGE_INTEGRITY_SHA256})
UNDERSTOOD = HONOURED | UNCHECKED
#: what an RFC 3489 request may carry: its own CHANGE-REQUEST (RFC 5780 took
#: it over unchanged), USERNAME and MESSAGE-INTEGRITY (not checked).  Its
#: RESPONSE-ADDRESS would send the answer to any host: 420.
UNDERSTOOD_RFC3489 = frozenset({stun.ChangeRequest.TYPE, stun.USERNAME, stun.MESSAGE_INTEGRITY})

#: RFC 5780 §6.1: PADDING "equal to the MTU on the outgoing interface"; the
#: beacon does not know it and assumes Ethernet's
PADDING_MTU = 1500

UNKNOWN_ATTRIBUTE = "Unknown Attribute"
BAD_REQUEST = "Bad Request"

# Stands for FINGERPRINT (a Message flag, not an attribute) among the
# optional parts of an answer.
_FINGERPRINT = object()
_FINGERPRINT_SIZE = 8
# The origin when CHANGE-REQUEST asks for an endpoint the beacon does not have.
_REFUSED = object()


@attrs.frozen
class StunAnswer:
    """A datagram to send: ``origin`` is the beacon socket it must leave
    from, or None for the one the request arrived on."""

    data: bytes
    destination: Endpoint
    origin: Endpoint | None = None


def _optional_endpoint(instance, attribute, value) -> None:
    if value is not None and not isinstance(value, Endpoint):
        raise TypeError(f"{attribute.name} must be an Endpoint or None, not {value!r}")


@attrs.frozen
class StunResponder:
    """
    Answers STUN for one beacon.  ``primary_address`` and ``other_address``
    are its A1:P1 and A2:P2 (RFC 5780 needs both, differing in address and
    port); ``counters`` is the beacon's, where every outcome is counted.
    """

    counters: collections.Counter = attrs.field(validator=attrs.validators.instance_of(collections.Counter))
    primary_address: Endpoint | None = attrs.field(default=None, validator=_optional_endpoint)
    other_address: Endpoint | None = attrs.field(default=None, validator=_optional_endpoint)
    software: str | None = None
    amplification_limit: int = attrs.field(default=3, validator=attrs.validators.ge(1))

    def alternate(self, local: Endpoint | None, change_ip: bool, change_port: bool) -> Endpoint | None:
        """The beacon endpoint that differs from ``local`` in IP and/or port, if there is one."""
        if local is None or self.primary_address is None or self.other_address is None:
            return None
        hosts = (self.primary_address.host, self.other_address.host)
        ports = (self.primary_address.port, self.other_address.port)
        if hosts[0] == hosts[1] or ports[0] == ports[1] or local.host not in hosts or local.port not in ports:
            return None
        host = hosts[1 - hosts.index(local.host)] if change_ip else local.host
        port = ports[1 - ports.index(local.port)] if change_port else local.port
        return Endpoint(host, port)

    def answer(self, data: bytes, source: Endpoint, local: Endpoint | None) -> StunAnswer | None:
        """
        The answer to one datagram that arrived from ``source`` on the socket
        at ``local`` (None when that socket is bound to a wildcard), or None.
        A malformed datagram raises :class:`~pilotproto.wire.stun.StunDecodeError`.
        """
        if isinstance(source, StreamEndpoint):
            # STUN reports UDP mappings (and RFC 5780 §7.5 keeps RESPONSE-PORT
            # to UDP): over a TLS stream its answer would be a lie.
            self.counters["stun_dropped_not_udp"] += 1
            return None
        request = stun.decode(data, rfc3489=True)
        if request.message_class is not stun.StunClass.REQUEST or request.method != stun.BINDING:
            # Indications (keepalives) and responses are never answered.
            self.counters["dropped_stun_not_binding_request"] += 1
            return None
        self.counters["stun_requests"] += 1
        if request.rfc3489:
            self.counters["stun_rfc3489_requests"] += 1
            return self._answer_rfc3489(request, len(data), source, local)
        return self._answer(request, len(data), source, local)

    # -- RFC 8489 / RFC 5780 ----------------------------------------------------

    def _answer(self, request, size, source, local):
        response_port = request.find(stun.ResponsePort)
        destination = source
        if response_port is not None:
            if response_port.port == 0:
                return self._error(request, size, source, 400, "Bad Request: RESPONSE-PORT 0")
            # §7.5: to the source address at that port, every answer to the
            # request; the host is never the requester's to choose.
            destination = Endpoint(source.host, response_port.port)
            self.counters["stun_response_port"] += 1
        unknown = stun.unknown_comprehension_required(request, UNDERSTOOD)
        if unknown:
            self.counters["stun_unknown_attributes"] += 1
            return self._error(request, size, destination, 420, UNKNOWN_ATTRIBUTE, unknown)
        padding = request.find(stun.Padding)
        if padding is not None and response_port is not None:
            # §6.1: a padded answer to another port is a 400, whatever the rest.
            return self._error(request, size, destination, 400, "Bad Request: PADDING with RESPONSE-PORT")
        origin = self._origin(request, local)
        if origin is _REFUSED:
            return self._error(request, size, destination, 420, UNKNOWN_ATTRIBUTE, [stun.ChangeRequest.TYPE])
        if padding is not None:
            self.counters["stun_padding"] += 1
        # OTHER-ADDRESS is relative to where the request arrived, not where
        # the answer leaves; it comes first because NAT discovery (ours,
        # coturn's RFC 5780 mode) starts only when it is there.
        other = self.alternate(local, True, True)
        optional = [
            stun.OtherAddress(other) if other is not None else None,
            stun.MappedAddress(source),
            stun.ResponseOrigin(origin) if origin is not None else None,
            _FINGERPRINT,
            stun.Software(self.software) if self.software is not None else None,
        ]
        required = [stun.XorMappedAddress(source)]
        data = self._fit(request, stun.StunClass.SUCCESS, size, required, optional, padded=padding is not None)
        return self._send(data, destination, origin)

    def _origin(self, request, local):
        """Where the answer leaves from: ``local``, or the socket CHANGE-REQUEST names."""
        change = request.find(stun.ChangeRequest)
        if change is None or not (change.change_ip or change.change_port):
            return local
        origin = self.alternate(local, change.change_ip, change.change_port)
        if origin is None:
            # RFC 5780 §6.1: no alternate address and port, so CHANGE-REQUEST
            # is an attribute we cannot honour.
            self.counters["stun_change_refused"] += 1
            return _REFUSED
        self.counters["stun_change_requests"] += 1
        return origin

    def _error(self, request, size, destination, code, reason, unknown: Sequence[int] = ()):
        self.counters[f"stun_error_{code}"] += 1
        required: list = [stun.ErrorCode(code, reason)]
        if unknown:
            if request.rfc3489 and len(unknown) % 2:
                # RFC 3489 §11.2.9: an odd list repeats one type rather than pad.
                unknown = [*unknown, unknown[-1]]
            required.append(stun.UnknownAttributes(unknown))
        optional = []
        if not request.rfc3489:
            optional = [_FINGERPRINT, stun.Software(self.software) if self.software is not None else None]
        data = self._fit(request, stun.StunClass.ERROR, size, required, optional, padded=False)
        return self._send(data, destination, None)

    # -- RFC 3489 ---------------------------------------------------------------

    def _answer_rfc3489(self, request, size, source, local):
        # RFC 8489 §12.2: MAPPED-ADDRESS instead of XOR-MAPPED-ADDRESS, the
        # cookie field copied back.  Only the types RFC 3489 defines: its
        # clients fail on any other below 0x8000, and ignore the rest, so
        # SOFTWARE and FINGERPRINT would be bytes for nothing.
        unknown = stun.unknown_comprehension_required(request, UNDERSTOOD_RFC3489)
        if unknown:
            self.counters["stun_unknown_attributes"] += 1
            return self._error(request, size, source, 420, UNKNOWN_ATTRIBUTE, unknown)
        origin = self._origin(request, local)
        if origin is _REFUSED:
            return self._error(request, size, source, 420, UNKNOWN_ATTRIBUTE, [stun.ChangeRequest.TYPE])
        other = self.alternate(local, True, True)
        optional = [
            stun.ChangedAddress(other) if other is not None else None,
            stun.SourceAddress(origin) if origin is not None else None,
        ]
        data = self._fit(request, stun.StunClass.SUCCESS, size, [stun.MappedAddress(source)], optional, padded=False)
        return self._send(data, source, origin)

    # -- size ---------------------------------------------------------------------

    def _fit(self, request, message_class, size, required, optional, *, padded) -> bytes | None:
        """
        The answer: ``required`` attributes, then each of ``optional`` (most
        important first; None for an absent one) that still fits within the
        amplification limit (``size`` is the request's), then PADDING as long
        as fits (up to :data:`PADDING_MTU`) when ``padded``.  None if
        ``required`` alone does not fit.
        """
        budget = self.amplification_limit * size
        used = stun.HEADER_LENGTH + sum(stun.attribute_size(a) for a in required) + (4 if padded else 0)
        if used > budget:
            self.counters["stun_dropped_amplification"] += 1
            return None
        chosen, fingerprint = [], False
        for item in optional:
            if item is None:
                continue
            cost = _FINGERPRINT_SIZE if item is _FINGERPRINT else stun.attribute_size(item)
            if used + cost > budget:
                self.counters["stun_trimmed"] += 1
                continue
            used += cost
            if item is _FINGERPRINT:
                fingerprint = True
            else:
                chosen.append(item)
        attributes = list(required)
        if padded:
            # PADDING's value is sized last, so that it, not an address, gives way.
            attributes.append(stun.Padding(min(PADDING_MTU, (budget - used) // 4 * 4)))
        message = stun.Message(
            message_class,
            request.transaction_id,
            attributes + chosen,
            request.method,
            fingerprint,
            request.cookie,
        )
        return message.encode()

    def _send(self, data, destination, origin):
        if data is None:
            return None
        return StunAnswer(data, destination, origin)

