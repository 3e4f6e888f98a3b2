"""
nftables rulesets for a site router, one per NAT kind.

Linux conntrack on its own gives a *port-restricted cone*-like NAT: SNAT
keeps the inside port when it can (so the mapping is mostly
endpoint-independent) and only packets matching a conntrack entry come back
in (address-and-port-dependent filtering).  The other kinds are built on top:

* ``symmetric``: ``snat ... fully-random`` picks a fresh random port for every
  new conntrack, i.e. for every new destination endpoint.
* ``symmetric-sequential``: a fresh port for every new conntrack too, but
  the *next* one: ``snat to PUBLIC : numgen inc mod N map { 0 : BASE, ... }``.
  The kernel itself never allocates sequentially: a plain ``snat to
  PUBLIC:1024-65535`` (or ``masquerade``) keeps the inside port when it is
  free and otherwise starts from a random offset in the range (measured on
  kernel 6.18), and ``numgen inc`` straight into the port lands byte-swapped
  (1024, 1025, ... become ports 4, 260, ...), hence the map.  One counter per
  router, shared by its hosts, as in a real sequential NAT; the sequence
  wraps after ``SEQUENTIAL_PORTS`` new mappings.
* the three cone kinds keep their mappings in nftables maps that the
  packet path itself fills in, right after SNAT has chosen the port
  (a postrouting chain at ``srcnat + 10`` sees the translated packet and
  reads the inside endpoint back from ``ct original``):

  - ``mapping_out`` (inside endpoint -> public endpoint) is consulted before
    conntrack allocates anything, so every flow from one inside endpoint
    gets the same public port even when conntrack alone would pick another
    (strict endpoint-independent mapping, also across conntrack expiry);
  - ``mapping_in`` (public port -> inside endpoint) lets prerouting DNAT an
    unsolicited packet to the inside host, and marks the port taken so a
    second inside host using the same port is moved to another one;
  - the filtering set decides which unsolicited packets get that DNAT:
    none for full cone, ``port . remote address`` pairs the host has sent to
    for restricted cone, ``port . remote address . remote port`` triples for
    port-restricted cone.

  Entries expire after the mapping timeout and are refreshed by every
  outbound packet (RFC 4787 REQ-6), like a real NAT's bindings.

* ``udp-blocked``: UDP is dropped in forward, TCP is NATed by conntrack.
* hairpinning (``hairpin_lan``, cone kinds only, used by carrier-grade NATs
  whose inside holds several home routers): a packet from the inside to the
  router's own public address and a mapped port is DNATed to that mapping's
  inside endpoint and SNATed to the *sender's* mapping, so the receiver sees
  the sender's public endpoint, as from anywhere else (RFC 4787 REQ-9).  The
  filtering set is not consulted for hairpinned packets: the home NAT behind
  each side still filters.  Without it such a packet is addressed to the
  router itself and dies there, as at a CGN that does not hairpin.
* ``none``: the router only routes.

Loss is ``numgen random`` in the forward chain, so it hits each forwarded
packet in either direction independently.
"""

from __future__ import annotations

NAT_KINDS = (
    "none",
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "symmetric",
    "udp-blocked",
    "symmetric-sequential",
)
CONE_KINDS = ("full-cone", "restricted-cone", "port-restricted-cone")

TABLE = "pilotlab"
WAN = "wan"
LOSS_SCALE = 10000
#: a sequential NAT hands out SEQUENTIAL_BASE, SEQUENTIAL_BASE + 1, ... and wraps
SEQUENTIAL_BASE = 20000
SEQUENTIAL_PORTS = 4096
#: packet mark of a hairpinned packet, from prerouting (DNAT) to postrouting (SNAT)
HAIRPIN_MARK = 0x4850

# What an unsolicited inbound packet must match to reach the inside host.
_FILTER_KEYS = {
    "full-cone": None,
    "restricted-cone": ("inet_service . ipv4_addr", "udp sport . ip daddr", "udp dport . ip saddr"),
    "port-restricted-cone": (
        "inet_service . ipv4_addr . inet_service",
        "udp sport . ip daddr . udp dport",
        "udp dport . ip saddr . udp sport",
    ),
}


def check_kind(kind: str) -> None:
    if kind not in NAT_KINDS:
        raise ValueError(f"unknown NAT kind {kind!r}; choose one of {', '.join(NAT_KINDS)}")


def loss_threshold(loss: float) -> int:
    if not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss {loss!r} is not a fraction between 0 and 1")
    return round(loss * LOSS_SCALE)


def site_ruleset(
    kind: str, public_address: str, loss: float = 0.0, mapping_timeout: int = 120, hairpin_lan: str | None = None, carrier: bool = False
) -> str:
    """The complete ``nft -f`` script that (re)defines a site router's table.

    It deletes any previous version of the table in the same transaction, so
    applying it again (for a new public address) is atomic and also forgets
    every learned mapping.  ``hairpin_lan`` names the inside interface on
    which to hairpin (cone kinds only).  ``carrier`` (a CGN) drops an
    unsolicited inbound packet its filter refuses before conntrack sees it.
    """
    check_kind(kind)
    if hairpin_lan is not None and kind not in CONE_KINDS:
        raise ValueError(
            f"hairpinning needs endpoint-independent mapping (a cone kind), not {kind!r}: "
            "a symmetric NAT has no mapping an inside packet could be sent back into"
        )
    threshold = loss_threshold(loss)
    if mapping_timeout < 1:
        raise ValueError("mapping_timeout must be at least one second")
    body: list[str] = []
    if kind in CONE_KINDS:
        body += _cone_maps(kind, mapping_timeout)
        if carrier:
            body += _chain("prerouting_unsolicited", "type filter hook prerouting priority mangle; policy accept;", _carrier_unsolicited(kind, public_address))
        inbound = _cone_inbound(kind, public_address) + _hairpin_inbound(public_address, hairpin_lan)
        body += _chain("prerouting_nat", "type nat hook prerouting priority dstnat; policy accept;", inbound)
    outbound = _hairpin_outbound(public_address, hairpin_lan) + _outbound_nat(kind, public_address)
    body += _chain("postrouting_nat", "type nat hook postrouting priority srcnat; policy accept;", outbound)
    if kind in CONE_KINDS:
        body += _chain("postrouting_learn", "type filter hook postrouting priority srcnat + 10; policy accept;", _cone_learning(kind))
    body += _chain("forward", "type filter hook forward priority filter; policy accept;", _forward(kind, threshold))
    lines = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    lines += ["    " + line for line in body]
    lines.append("}")
    return "\n".join(lines) + "\n"


def dynamic_sets(kind: str) -> list[tuple[str, str]]:
    """("map" or "set", name) of each learned map/set of a kind, which
    ``flush_nat`` empties."""
    if kind not in CONE_KINDS:
        return []
    names = [("map", "mapping_out"), ("map", "mapping_in")]
    if _FILTER_KEYS[kind] is not None:
        names.append(("set", "peers"))
    return names


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"chain {name} {{", f"    {header}"] + [f"    {rule}" for rule in rules] + ["}"]


def _cone_maps(kind: str, timeout: int) -> list[str]:
    flags = f"flags dynamic,timeout; timeout {timeout}s;"
    maps = [
        # Declared by type, not typeof: nft 1.0.6 mistypes "ct original
        # proto-src" inside a typeof concatenation.
        "map mapping_out { type ipv4_addr . inet_service : ipv4_addr . inet_service; " + flags + " }",
        "map mapping_in { type inet_service : ipv4_addr . inet_service; " + flags + " }",
    ]
    keys = _FILTER_KEYS[kind]
    if keys is not None:
        maps.append(f"set peers {{ type {keys[0]}; {flags} }}")
    return maps


def _cone_inbound(kind: str, public_address: str) -> list[str]:
    match = "udp dport @mapping_in"
    keys = _FILTER_KEYS[kind]
    if keys is not None:
        match = f"{keys[2]} @peers"
    return [
        f'iifname "{WAN}" ip daddr {public_address} {match} '
        "dnat ip addr . port to udp dport map @mapping_in"
    ]


def _carrier_unsolicited(kind: str, public_address: str) -> list[str]:
    """A CGN keeps its own mapping table: a packet its filter refuses leaves
    no trace (dropped after conntrack has looked, before the entry is kept).
    A Linux router instead delivers it locally and conntrack keeps the tuple,
    so the inside host's own first packet to that sender then gets another
    public port (what priming with a small TTL avoids at home, and cannot at
    a CGN one hop further out)."""
    keys = _FILTER_KEYS[kind]
    admitted = "udp dport @mapping_in" if keys is None else f"{keys[2]} @peers"
    new = f'iifname "{WAN}" ip daddr {public_address} meta l4proto udp ct state new'
    return [f"{new} {admitted} accept", f"{new} drop"]


def _hairpin_inbound(public_address: str, lan: str | None) -> list[str]:
    if lan is None:
        return []
    to_mapping = "dnat ip addr . port to udp dport map @mapping_in"
    return [f'iifname "{lan}" ip daddr {public_address} udp dport @mapping_in meta mark set {HAIRPIN_MARK:#x} {to_mapping}']


def _hairpin_outbound(public_address: str, lan: str | None) -> list[str]:
    if lan is None:
        return []
    # Postrouting has no input interface: the mark prerouting set says "hairpinned".
    hairpinned = f'oifname "{lan}" meta mark {HAIRPIN_MARK:#x}'
    return [
        # The sender's own public endpoint, so the receiver sees what anyone outside would.
        f"{hairpinned} ip saddr . udp sport @mapping_out snat ip addr . port to ip saddr . udp sport map @mapping_out",
        f"{hairpinned} snat to {public_address}",
    ]


def _outbound_nat(kind: str, public_address: str) -> list[str]:
    out = f'oifname "{WAN}"'
    if kind == "none":
        return []
    if kind == "symmetric":
        return [
            f"{out} meta l4proto {{ tcp, udp }} snat to {public_address}:1024-65535 fully-random",
            f"{out} snat to {public_address}",
        ]
    if kind == "symmetric-sequential":
        ports = ", ".join(f"{i} : {SEQUENTIAL_BASE + i}" for i in range(SEQUENTIAL_PORTS))
        return [
            f"{out} meta l4proto udp snat to {public_address} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {ports} }}",
            f"{out} snat to {public_address}",
        ]
    rules = []
    if kind in CONE_KINDS:
        rules += [
            f"{out} ip saddr . udp sport @mapping_out snat ip addr . port to ip saddr . udp sport map @mapping_out",
            # The port is another inside endpoint's mapping: take any other one.
            f"{out} udp sport @mapping_in snat to {public_address}:1024-65535",
        ]
    rules.append(f"{out} snat to {public_address}")
    return rules


def _cone_learning(kind: str) -> list[str]:
    out = f'oifname "{WAN}" meta l4proto udp'
    rules = [
        f"{out} ct direction original update @mapping_in {{ udp sport : ct original ip saddr . ct original proto-src }}",
        f"{out} ct direction original update @mapping_out {{ ct original ip saddr . ct original proto-src : ip saddr . udp sport }}",
        # Replies on a flow the remote side opened (full/restricted cone DNAT).
        f"{out} ct direction reply update @mapping_in {{ udp sport : ct reply ip saddr . ct reply proto-src }}",
        f"{out} ct direction reply update @mapping_out {{ ct reply ip saddr . ct reply proto-src : ip saddr . udp sport }}",
    ]
    keys = _FILTER_KEYS[kind]
    if keys is not None:
        rules.append(f"{out} update @peers {{ {keys[1]} }}")
    return rules


def _forward(kind: str, threshold: int) -> list[str]:
    rules = []
    if threshold:
        rules.append(f"numgen random mod {LOSS_SCALE} < {threshold} drop")
    if kind == "none":
        return rules
    if kind == "udp-blocked":
        rules.append("meta l4proto udp drop")
    rules += [
        f'iifname "{WAN}" ct state established,related accept',
        f'iifname "{WAN}" ct status dnat accept',
        f'iifname "{WAN}" drop',
    ]
    return rules
