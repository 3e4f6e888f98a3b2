"""
UPnP Internet Gateway Device messages: SSDP discovery, the device
description, and the SOAP calls that map one UDP port.

Pure: no I/O.  Anything malformed raises :class:`DecodeError`; a SOAP fault
decodes to :class:`SoapFault`, which carries the UPnP error code (718: the
port is taken; 725: only permanent leases).
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape

import attrs

from .codec import DecodeError

SSDP_GROUP = ("239.255.255.250", 1900)
DEVICE_TYPES = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
#: the services that can map ports, best first
SERVICE_TYPES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
CONFLICT_IN_MAPPING_ENTRY = 718
ONLY_PERMANENT_LEASES = 725
#: a device description or SOAP answer larger than this is not a router's
MAX_DOCUMENT = 64 * 1024


@attrs.frozen
class ControlPoint:
    """Where to send SOAP calls, and the service type they name."""

    url: str
    service_type: str


@attrs.frozen
class SoapFault:
    code: int
    description: str


def msearch(device_type: str, mx: int = 1) -> bytes:
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_GROUP[0]}:{SSDP_GROUP[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {device_type}\r\n\r\n"
    ).encode("ascii")


def ssdp_location(data: bytes, responder: str) -> str:
    """The description URL in an SSDP answer from ``responder``.

    The URL must name the responder itself: an answer pointing elsewhere
    would have us send HTTP requests to any address on a stranger's say-so."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as e:  # latin-1 decodes every byte; kept for clarity
        raise DecodeError(str(e)) from None
    lines = text.split("\r\n")
    if not lines or not lines[0].startswith("HTTP/1.1 200"):
        raise DecodeError("not an SSDP search answer")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    location = headers.get("location")
    if not location:
        raise DecodeError("SSDP answer without LOCATION")
    parsed = urllib.parse.urlsplit(location)
    if parsed.scheme != "http" or parsed.hostname != responder:
        raise DecodeError(f"SSDP LOCATION {location!r} does not name the responder {responder}")
    return location


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(document: bytes):
    if len(document) > MAX_DOCUMENT:
        raise DecodeError(f"UPnP document larger than {MAX_DOCUMENT} bytes")
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise DecodeError("UPnP documents have no DTD")
    try:
        return ElementTree.fromstring(document)
    except ElementTree.ParseError as e:
        raise DecodeError(f"malformed UPnP XML: {e}") from None


def control_point(description: bytes, location: str) -> ControlPoint:
    """The best port-mapping service in a device description fetched from ``location``."""
    root = _parse(description)
    base = location
    found = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "URLBase" and element.text:
            base = element.text.strip()
        elif name == "service":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            if fields.get("serviceType") in SERVICE_TYPES and fields.get("controlURL"):
                found.setdefault(fields["serviceType"], fields["controlURL"])
    for service_type in SERVICE_TYPES:
        if service_type in found:
            url = urllib.parse.urljoin(base, found[service_type])
            # The control URL must stay on the device that described itself.
            if urllib.parse.urlsplit(url).hostname != urllib.parse.urlsplit(location).hostname:
                raise DecodeError(f"control URL {url!r} is not on the gateway")
            return ControlPoint(url, service_type)
    raise DecodeError("the device offers no WANIPConnection or WANPPPConnection service")


def soap_request(service_type: str, action: str, arguments: dict) -> tuple[bytes, dict]:
    """The body and headers of one SOAP call."""
    args = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in arguments.items())
    body = (
        '<?xml version="1.0"?>\r\n'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service_type}">{args}</u:{action}></s:Body></s:Envelope>\r\n'
    ).encode("utf-8")
    headers = {
        b"Content-Type": [b'text/xml; charset="utf-8"'],
        b"SOAPAction": [f'"{service_type}#{action}"'.encode("ascii")],
    }
    return body, headers


def soap_response(document: bytes) -> dict | SoapFault:
    """The output arguments of a SOAP answer, or the fault it carries."""
    root = _parse(document)
    values = {}
    fault = None
    for element in root.iter():
        name = _local(element.tag)
        if name == "Fault":
            fault = element
        elif len(element) == 0 and name not in ("Body", "Envelope"):
            values[name] = (element.text or "").strip()
    if fault is not None:
        try:
            code = int(values.get("errorCode", "0"))
        except ValueError:
            code = 0
        return SoapFault(code, values.get("errorDescription", values.get("faultstring", "SOAP fault")))
    return values


def add_port_mapping(internal_host: str, internal_port: int, external_port: int, lease: int) -> dict:
    return {
        "NewRemoteHost": "",
        "NewExternalPort": external_port,
        "NewProtocol": "UDP",
        "NewInternalPort": internal_port,
        "NewInternalClient": internal_host,
        "NewEnabled": 1,
        "NewPortMappingDescription": "pilot",
        "NewLeaseDuration": lease,
    }


def delete_port_mapping(external_port: int) -> dict:
    return {"NewRemoteHost": "", "NewExternalPort": external_port, "NewProtocol": "UDP"}
