"""
The carrier-grade NAT rows of the traversal matrix: two NAT layers, and two
homes sharing one CGN with and without hairpinning.

A cell is two *sides*; a side is a home NAT kind, optionally behind a CGN of
some kind.  Two sides may name the same CGN (``shared``): then both homes sit
behind one CGN and reach each other only through it.  :func:`cell_expected`
says which path a cell gets and why; ``docs/traversal.md`` has the table.
"""

from __future__ import annotations

import attrs

from .errors import LabError
from .ruleset import CONE_KINDS

#: NAT kinds that map every destination to a new port
SYMMETRIC_KINDS = ("symmetric", "symmetric-sequential")
#: from least to most restrictive filtering, for the cone kinds
_FILTERING_ORDER = ("none",) + CONE_KINDS


@attrs.frozen
class Side:
    """A home NAT of kind ``home``, behind a CGN of kind ``cgn`` (None: on the internet)."""

    home: str
    cgn: str | None = None
    hairpin: bool = False

    @property
    def label(self) -> str:
        if self.cgn is None:
            return self.home
        return f"{self.home}@cgn-{self.cgn}{'+hairpin' if self.hairpin else ''}"


@attrs.frozen
class Cell:
    a: Side
    b: Side
    #: both sides behind one and the same CGN (which must then be the same kind)
    shared: bool = False

    def __attrs_post_init__(self):
        if self.shared and (self.a.cgn is None or (self.a.cgn, self.a.hairpin) != (self.b.cgn, self.b.hairpin)):
            raise LabError("a shared cell needs both sides behind one CGN of one kind")


def outermost(side: Side) -> str:
    """The NAT kind the rest of the internet sees for ``side``: what NAT
    discovery from a host behind both layers measures.

    A symmetric layer anywhere makes the pair symmetric (the outer layer
    picks the port, or the inner one hands the outer a new source per
    destination), the outer one's kind when both are; otherwise mapping is
    endpoint-independent and the stricter filter of the two wins.
    """
    if side.cgn is None:
        return side.home
    if side.cgn in SYMMETRIC_KINDS:
        return side.cgn
    if side.home in SYMMETRIC_KINDS:
        return side.home
    if "udp-blocked" in (side.home, side.cgn):
        return "udp-blocked"
    return max(side.home, side.cgn, key=_FILTERING_ORDER.index)


def cell_expected(cell: Cell, expected_path) -> str:
    """The best path of ``cell``; ``expected_path(kind_a, kind_b)`` is the
    plain matrix's rule, applied to each side's outermost behaviour."""
    if cell.shared:
        # Each side's public endpoint is the one CGN's address: only a CGN
        # that hairpins turns a packet to it back inside, and the LAN
        # candidates (behind two different home routers) never meet.
        if not cell.a.hairpin:
            return "relay"
        return expected_path(cell.a.home, cell.b.home)
    path = expected_path(outermost(cell.a), outermost(cell.b))
    if path == "direct" and any(_birthday_opener_behind_cgn(x, y) for x, y in ((cell.a, cell.b), (cell.b, cell.a))):
        # The birthday punch's opening side primes its 256 mappings with
        # TTL 2 (out of its own NAT, not into the peer's): behind a CGN that
        # packet dies at the CGN, one hop further out, before the CGN made
        # a mapping, so the probing side has nothing to hit.
        return "relay"
    return path


def _birthday_opener_behind_cgn(opener: Side, prober: Side) -> bool:
    return opener.cgn in SYMMETRIC_KINDS and outermost(prober) == "port-restricted-cone"


PRC = "port-restricted-cone"

#: the CGN rows ``run_matrix(cgn=True)`` adds; see docs/traversal.md
CGN_CELLS = (
    # A home behind an endpoint-independent CGN behaves like one cone NAT.
    Cell(Side(PRC, PRC), Side(PRC)),
    Cell(Side(PRC, "full-cone"), Side("symmetric")),
    # Behind a symmetric CGN the pair is port-restricted <-> symmetric, but
    # the birthday punch's TTL-2 priming dies at the CGN (see cell_expected).
    Cell(Side(PRC, "symmetric"), Side(PRC)),
    Cell(Side(PRC, "symmetric"), Side("symmetric")),
    # Two homes behind one CGN.
    Cell(Side(PRC, PRC, hairpin=True), Side(PRC, PRC, hairpin=True), shared=True),
    Cell(Side(PRC, PRC), Side(PRC, PRC), shared=True),
)
