"""``pilotctl lab``: the network-namespace lab, for seeing traversal with your own eyes."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from ..errors import InvalidArgument, PilotError
from .output import CheckFailed, CommandFailed, Progress


def run_lab_matrix(args, ctx) -> dict:
    from ..lab import NAT_KINDS
    from ..lab.cgn_cells import CGN_CELLS
    from ..lab.matrix import pairs_of, run_matrix

    kinds = NAT_KINDS if not args.kinds else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in NAT_KINDS]
    if unknown or not kinds:
        raise InvalidArgument(f"unknown NAT kind(s): {', '.join(unknown) or '(none given)'}", hint=f"Choose from: {', '.join(NAT_KINDS)}")
    if not (0 <= args.loss < 50):
        raise InvalidArgument("--loss is a percentage from 0 to 50")
    check_lab_prerequisites()
    cells = CGN_CELLS if args.cgn else ()
    total = len(pairs_of(kinds)) + len(cells)
    extra = f", plus {len(cells)} carrier-grade NAT cells" if cells else ""
    ctx.out.note(f"Building a lab: a beacon and two sites per NAT kind ({len(kinds) * 2} sites){extra}, {total} pairs; loss {args.loss:g}%")
    # Each pair is printed once, in the table at the end; on a terminal a
    # transient line counts them as they finish.
    progress = Progress(ctx.out.progress_stream(), total, unit="pairs")
    results = []

    def finished(result):
        results.append(result)
        failed = sum(not r.ok for r in results)
        progress.update(len(results), note=f"{failed} failed" if failed else "")

    run_matrix(kinds, loss=args.loss / 100.0, progress=finished, cgn_cells=cells)
    progress.done()
    data = {"loss_pct": args.loss, "pairs": [r.as_dict() for r in results], "ok": all(r.ok for r in results)}
    failed = [r for r in results if not r.ok]
    if failed:
        raise CommandFailed(
            CheckFailed(
                f"{len(failed)} of {len(results)} pairs did not get the expected path: "
                + ", ".join(f"{r.a}<->{r.b}" for r in failed),
                hint="The FAIL rows say what each got; docs/traversal.md says what each pair should get and why.",
            ),
            data,
        )
    return data


def check_lab_prerequisites() -> None:
    from ..lab import check_prerequisites

    try:
        check_prerequisites()
    except PilotError as e:
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            # sudo resets PATH, so "sudo pilotctl" misses a virtualenv's pilotctl.
            e.hint = (
                f"Run it as root with this very pilotctl: sudo {this_pilotctl()} lab matrix "
                "(a plain 'sudo pilotctl' searches root's PATH, which has no virtualenv in it)."
            )
        raise


def this_pilotctl() -> str:
    """A command line that runs this pilotctl again from anywhere, e.g. under sudo."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "pilotctl":
        found = argv0 if os.sep in argv0 else shutil.which(argv0)
        if found:
            return shlex.quote(os.path.abspath(found))
    return f"{shlex.quote(sys.executable)} -m pilotproto.cli"


def render_lab_matrix(data: dict) -> str:
    from ..lab.matrix import PairResult, format_table

    rows = [PairResult(**{k: v for k, v in p.items() if k != "ok"}) for p in data["pairs"]]
    verdict = "Every pair got its best path." if data["ok"] else "Some pairs did not get the expected path (FAIL rows)."
    return format_table(rows) + "\n" + verdict


def add_commands(commands, subcommand, global_options) -> None:
    lab = commands.add_parser("lab", help="a virtual internet with real NATs (needs root)")
    global_options(lab, suppress=True)
    actions = lab.add_subparsers(dest="action", metavar="ACTION", required=True)
    matrix = subcommand(actions, "matrix", "ping between every pair of NAT kinds and show the path each got", run_lab_matrix, render_lab_matrix)
    matrix.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="random packet loss on every router, in percent")
    matrix.add_argument("--kinds", metavar="K1,K2,...", help="NAT kinds to include (default: all seven)")
    matrix.add_argument("--cgn", action="store_true", help="add the carrier-grade NAT cells (homes behind a CGN, hairpinning)")
