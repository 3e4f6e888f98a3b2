"""Twisted plugins for pilotproto: ``twistd pilot`` (and, later, ``pilot:`` endpoints)."""

from twisted.application.service import ServiceMaker

pilot = ServiceMaker(
    "pilot",
    "pilotproto.tap",
    "A pilot overlay node or beacon (twistd pilot node|beacon --help).",
    "pilot",
)
