"""``pilotctl lab``: the network-namespace lab, for seeing traversal with your own eyes."""

from __future__ import annotations

from ..errors import InvalidArgument


def run_lab_matrix(args, ctx) -> dict:
    from ..lab import NAT_KINDS, check_prerequisites
    from ..lab.matrix import run_matrix

    kinds = NAT_KINDS if not args.kinds else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in NAT_KINDS]
    if unknown or not kinds:
        raise InvalidArgument(f"unknown NAT kind(s): {', '.join(unknown) or '(none given)'}", hint=f"Choose from: {', '.join(NAT_KINDS)}")
    if not (0 <= args.loss < 50):
        raise InvalidArgument("--loss is a percentage from 0 to 50")
    check_prerequisites()
    ctx.out.note(f"Building a lab: a beacon and two sites per NAT kind ({len(kinds) * 2} sites); loss {args.loss:g}%")

    def progress(result):
        ctx.out.note(f"  {result.a:>21} <-> {result.b:<21} {result.path:<9} {'ok' if result.ok else 'FAIL'}")

    results = run_matrix(kinds, loss=args.loss / 100.0, progress=progress)
    return {"loss_pct": args.loss, "pairs": [r.as_dict() for r in results], "ok": all(r.ok for r in results)}


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
    matrix.add_argument("--kinds", metavar="K1,K2,...", help="NAT kinds to include (default: all six)")
