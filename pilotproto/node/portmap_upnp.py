"""
Asking a UPnP Internet Gateway Device for a UDP port mapping, without
blocking the reactor: SSDP search on the LAN, the device description and
SOAP calls over HTTP (treq).

Only the device that answered the search is ever contacted, and only at the
URLs its own description gives on its own address (see
:mod:`pilotproto.wire.upnp`): a LAN stranger cannot point us elsewhere.
"""

from __future__ import annotations

import random

import treq
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ..errors import Timeout
from ..wire import portmap as pm
from ..wire import upnp
from ..wire.codec import DecodeError
from .portmap_pcp import MappingRefused, on_own_socket

#: how long an SSDP search waits for a gateway to answer
SEARCH_WAIT = 2.0
HTTP_TIMEOUT = 5.0
#: external ports tried when the one we asked for is taken
CONFLICT_RETRIES = 3


class _Search(DatagramProtocol):
    log = Logger()

    def __init__(self, clock, gateway: str | None, wait: float):
        self._clock = clock
        self._gateway = gateway
        self._wait = wait
        self._timer = None
        self.found = defer.Deferred()

    def startProtocol(self):
        for device_type in upnp.DEVICE_TYPES:
            try:
                self.transport.write(upnp.msearch(device_type), upnp.SSDP_GROUP)
            except OSError as e:
                self.found.errback(Timeout(f"cannot send an SSDP search: {e.strerror or e}"))
                return
        self._timer = self._clock.callLater(self._wait, self._give_up)

    def _give_up(self):
        self._timer = None
        if not self.found.called:
            self.found.errback(Timeout(f"no UPnP gateway answered a search within {self._wait:g} s"))

    def datagramReceived(self, data, addr):
        # Only the default gateway may offer itself: another device on the
        # LAN answering the search is not the NAT our packets cross.
        if self.found.called or (self._gateway is not None and addr[0] != self._gateway):
            return
        try:
            location = upnp.ssdp_location(data, addr[0])
        except DecodeError as e:
            self.log.debug("ignoring an SSDP answer from {addr}: {e}", addr=addr[0], e=e)
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.found.callback(location)


class UpnpClient:
    """A UDP mapping through the gateway's WANIPConnection/WANPPPConnection service."""

    protocol = "upnp"

    def __init__(self, reactor, gateway: str | None, client_host: str, *, clock=None, http=None, rng=None):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._gateway = gateway
        self._client_host = client_host
        self._http = http if http is not None else treq
        self._rng = rng if rng is not None else random.Random()
        self._control: upnp.ControlPoint | None = None

    def _search(self) -> defer.Deferred:
        search = _Search(self._clock, self._gateway, SEARCH_WAIT)
        return on_own_socket(self._reactor, search, search.found)

    @defer.inlineCallbacks
    def _fetch(self, method: str, url: str, body: bytes | None = None, headers=None):
        response = yield self._http.request(method, url, data=body, headers=headers, timeout=HTTP_TIMEOUT)
        length = response.length
        if isinstance(length, int) and length > upnp.MAX_DOCUMENT:
            raise DecodeError(f"the gateway sent {length} bytes; a UPnP document is at most {upnp.MAX_DOCUMENT}")
        content = yield self._http.content(response)
        return response.code, content

    @defer.inlineCallbacks
    def _find_control_point(self):
        if self._control is None:
            location = yield self._search()
            _code, description = yield self._fetch("GET", location)
            self._control = upnp.control_point(description, location)
        return self._control

    @defer.inlineCallbacks
    def _call(self, action: str, arguments: dict):
        control = yield self._find_control_point()
        body, headers = upnp.soap_request(control.service_type, action, arguments)
        _code, answer = yield self._fetch("POST", control.url, body, headers)
        return upnp.soap_response(answer)

    @defer.inlineCallbacks
    def request(self, internal_port: int, lifetime: int, suggested_port: int = 0):
        external = yield self._call("GetExternalIPAddress", {})
        if isinstance(external, upnp.SoapFault) or not external.get("NewExternalIPAddress"):
            raise MappingRefused("the UPnP gateway would not say its external address")
        host = external["NewExternalIPAddress"]
        port = suggested_port or internal_port
        lease = lifetime
        for _attempt in range(CONFLICT_RETRIES + 1):
            answer = yield self._call("AddPortMapping", upnp.add_port_mapping(self._client_host, internal_port, port, lease))
            if not isinstance(answer, upnp.SoapFault):
                # A lease of 0 is permanent: the mapper deletes it on stop
                # and "renews" it on the usual schedule all the same.
                return pm.Mapping("upnp", internal_port, port, lease or lifetime, host)
            if answer.code == upnp.ONLY_PERMANENT_LEASES and lease:
                lease = 0
                continue
            if answer.code == upnp.CONFLICT_IN_MAPPING_ENTRY:
                port = self._rng.randrange(20000, 60000)
                continue
            raise MappingRefused(f"upnp: the gateway refused the mapping: {answer.code} {answer.description}")
        raise MappingRefused("upnp: every external port we asked for was taken")

    def release(self, mapping: pm.Mapping) -> defer.Deferred:
        return self._call("DeletePortMapping", upnp.delete_port_mapping(mapping.external_port))
