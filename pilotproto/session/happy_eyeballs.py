"""
Happy eyeballs for direct paths (RFC 8305, as browsers race IPv6 and IPv4).

A peer's candidates come in both families.  IPv6 is preferred: it needs no
NAT, its paths are usually shorter, and behind a stateful firewall it is
punched as easily as a cone NAT.  But a broken IPv6 network must not cost
anything, so the families race: each probe round goes to the IPv6
candidates first and to the IPv4 ones :data:`FAMILY_DELAY` later (RFC 8305
section 5's "connection attempt delay", which suggests 50 ms).  Without an
IPv6 candidate the IPv4 ones go at once.

The first route verified both ways (a PathAck straight from the peer) wins;
an ack from the other family a moment later does not move a path that is
alive (:func:`keeps_current`), so two racing families cannot make the path
flap.  A path that went quiet is replaced as before (roaming).
"""

from __future__ import annotations

#: how long IPv4 probes wait behind IPv6 ones in each round (RFC 8305: 50 ms)
FAMILY_DELAY = 0.05


def is_ipv6(endpoint) -> bool:
    return ":" in endpoint.host


def by_family(candidates) -> tuple[list, list]:
    """``(now, later)``: the IPv6 candidates, then the IPv4 ones; or all at once if there is no IPv6 one.

    Each list is sorted, so that a round probes in a stable order."""
    ordered = sorted(candidates)
    first = [ep for ep in ordered if is_ipv6(ep)]
    later = [ep for ep in ordered if not is_ipv6(ep)]
    if not first:
        return later, []
    return first, later


def keeps_current(current, new, current_seen: float | None, now: float, fresh_for: float) -> bool:
    """Whether a direct path on ``current`` stays although ``new`` (another route) was just verified.

    It stays when ``new`` is of the other family and ``current`` was heard
    from within ``fresh_for`` seconds: the race is over and its winner is
    alive.  Within one family a new route replaces the old as before (the
    peer roamed, or its NAT rebound)."""
    if current is None or new == current or is_ipv6(current) == is_ipv6(new):
        return False
    return current_seen is not None and now - current_seen < fresh_for
