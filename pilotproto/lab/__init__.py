"""
The lab: a virtual internet of network namespaces with real kernel NAT.

See docs/lab.md for the topology, the address plan and how each NAT kind is
built.  The public API is :class:`Lab`, :class:`Site`, :class:`Host`,
:class:`Beacon`, :class:`CGN`, :func:`cleanup_stale` and :class:`LabError`.
"""

from pilotproto.lab.errors import LabError
from pilotproto.lab.lab import CGN, Beacon, Host, Lab, Site, close_all_labs
from pilotproto.lab.netns import check_prerequisites, cleanup_stale
from pilotproto.lab.ruleset import NAT_KINDS

__all__ = [
    "Beacon",
    "CGN",
    "Host",
    "Lab",
    "LabError",
    "NAT_KINDS",
    "Site",
    "check_prerequisites",
    "cleanup_stale",
    "close_all_labs",
]
