"""
The lab's one error class.

The lab drives ``ip``, ``nft`` and ``conntrack`` as root; whatever goes
wrong there (not root, a tool missing, a kernel feature missing, a command
refused) surfaces as a :class:`LabError` naming the command and what the
kernel said, so the fix is obvious from the message alone.
"""

from __future__ import annotations

from pilotproto.errors import PilotError


class LabError(PilotError):
    """The network lab could not be built or driven."""

    code = "lab_error"
    hint = "The lab needs root, iproute2 ('ip') and nftables ('nft'); run it as root on Linux."
