"""`bench sweep`: the command line of a sweep (arguments, and what runs them). bench/cli/parser.py wires it in:

    sweep = commands.add_parser("sweep", help=...); bench.sweep.command.add_arguments(sweep)
    ... return bench.sweep.command.run(args)

Exit codes as everywhere: 0 every point done, 1 some point failed (the report still shows it, as failed),
2 bad input (BenchError, one line), 130 interrupted (finished runs kept; the --resume command is printed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

from bench.errors import BenchError, Stopped, exit_code_and_message

DEFAULT_METHODS = "scratch,stackbert,bert2bert:fpi,ligo"
DEFAULT_BUDGETS = "0.5x,1x,2x"
SYNOPSIS = """\
bench sweep [--pair bert-nano:bert-micro] [--methods scratch,stackbert,bert2bert:fpi,ligo]
            [--budgets 0.5x,1x,2x] [--parent-steps N[,N...]] [--seeds 3] [--quick | --no-quick]
            [--amortize K] [--out DIR] [--resume] [--point NAME[,NAME...]] [--dry-run] [--report-only]
            [--no-extrapolate] [--no-share-scratch] [--method-arg METHOD.SETTING=VALUE]
            [--corpus PATH ...] [--tokenizer DIR] [--device auto|cpu|cuda] [--dtype auto|fp32|tf32|bf16] [--lr LR]
            [--micro-batch ROWS] [--price-file F] [--price KEY=USD] [--country ISO3] [--no-progress]"""
BUDGET_HELP = ("comma-separated budgets, one point each: Nx = N × the pair's reference budget (its quick budget "
               "with --quick, the default; its default budget with --no-quick), e.g. 0.25x; N or Nsteps = N steps "
               "of LARGE from scratch (as --budget-steps); Fflops, e.g. 1e12flops = F training FLOPs (as --budget)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench sweep`."""
    from bench.cli.parser import add_data_args  # here: the command line imports this module while it loads

    parser.add_argument("--pair", default="bert-nano:bert-micro", help="SMALL:LARGE (default bert-nano:bert-micro)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated methods, scratch first (added when missing); default {DEFAULT_METHODS}")
    parser.add_argument("--method-arg", action="append", default=[], metavar="METHOD.SETTING=VALUE")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"{BUDGET_HELP} (default {DEFAULT_BUDGETS})")
    parser.add_argument("--parent-steps", metavar="N[,N...]",
                        help="steps to pretrain the parent, one set of points per value (default: the pair's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True,
                        help="points sized from the pair's quick budget and parent (default); --no-quick: from its "
                             "default budget and parent")
    parser.add_argument("--amortize", type=float, metavar="K",
                        help="the parent's cost shared by K grown models (default 1 = charged in full to each)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="sweep directory (default reports/sweep-<date>-<pair>)")
    parser.add_argument("--resume", action="store_true", help="continue the points, skipping their finished runs")
    parser.add_argument("--point", action="append", metavar="NAME[,NAME...]",
                        help="run only these points (e.g. 1x-p300); the report covers every point there is")
    parser.add_argument("--dry-run", action="store_true", help="print the points and the time estimate, run nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the sweep report of --out from its points, train nothing")
    parser.add_argument("--no-extrapolate", action="store_true", help="leave out the power-law extrapolation")
    parser.add_argument("--no-share-scratch", action="store_true",
                        help="train scratch again for every parent instead of sharing its runs across parents")
    parser.add_argument("--country", default="WLD", help="ISO-3 country code for carbon intensity")
    add_data_args(parser)


def options_from(args: argparse.Namespace):
    """SweepOptions from parsed arguments; BenchError for anything malformed."""
    from bench.cli.inputs import parse_method_args, parse_prices
    from bench.runner import method_list
    from bench.sweep.points import parse_budgets, parse_parent_steps
    from bench.sweep.run import REFERENCE_METHOD, SweepOptions

    methods = method_list(args.methods)
    if not methods:
        raise BenchError("--methods needs at least one method")
    if REFERENCE_METHOD not in methods:
        methods.insert(0, REFERENCE_METHOD)  # savings are relative to scratch: a sweep without it has none
    amortize = 1.0 if args.amortize is None else args.amortize
    if not amortize >= 1:
        raise BenchError(f"--amortize {amortize:g}: the parent is shared by K ≥ 1 grown models "
                         "(1 = charged in full to each)")
    points = [name.strip() for item in args.point or [] for name in item.split(",") if name.strip()] or None
    out = args.out or Path("reports") / f"sweep-{datetime.now():%Y-%m-%d}-{args.pair.replace(':', '_')}"
    return SweepOptions(
        out=out, pair=args.pair, methods=methods, method_args=parse_method_args(args.method_arg),
        budgets=parse_budgets(args.budgets), parent_steps=parse_parent_steps(args.parent_steps), seeds=args.seeds,
        quick=args.quick, points=points, resume=args.resume, amortize=amortize,
        share_scratch=not args.no_share_scratch, corpus=args.corpus, tokenizer=args.tokenizer, device=args.device,
        dtype=args.dtype, lr=args.lr, micro_batch=args.micro_batch, price_file=args.price_file,
        prices=parse_prices(args.price), country=args.country, progress_bar=True)


def run(args: argparse.Namespace, echo=print) -> int:
    """Run (or report) a sweep; the exit code. Bad input raises BenchError (the command line's exit 2)."""
    from bench.logs import human_duration as human
    from bench.sweep.plots import PLOTS
    from bench.sweep.points import read_plan
    from bench.sweep.report import build_sweep_report
    from bench.sweep.run import check_fresh, estimate_seconds, plan_sweep, run_points, store_plan

    if args.report_only:
        if args.out is None:
            raise BenchError("--report-only needs --out SWEEP_DIR")
        if args.amortize is not None and not args.amortize >= 1:
            raise BenchError(f"--amortize {args.amortize:g}: the parent is shared by K ≥ 1 grown models")
        plan = read_plan(args.out)
        report = build_sweep_report(plan, args.out, args.amortize, not args.no_extrapolate)
        echo(report.text)
        tables = "sweep.csv, breakeven.csv" + (", extrapolated.csv" if report.extrapolation is not None else "")
        echo(f"sweep report: {args.out / 'report.md'} (tables: {tables}; plots: {args.out / 'plots'}/)")
        return 0
    options = options_from(args)
    planned = plan_sweep(options, echo)
    plan = planned.plan
    check_fresh(planned.selected, options.out, options.resume)
    estimate = estimate_seconds(planned, planned.selected, options.out)
    runs = len(plan.methods) * plan.seeds
    echo(f"sweep: {len(planned.selected)} point(s) × {runs} runs ({', '.join(plan.methods)}; {plan.seeds} seed(s)); "
         f"budgets {', '.join(f'{b.label} = {b.flops / plan.large_step_flops:.0f} steps' for b in plan.budgets)}; "
         f"parent steps {', '.join(map(str, plan.parent_steps))}")
    echo(f"estimate for the whole sweep here: {human(estimate['total'])} (training {human(estimate['train'])} at "
         f"{planned.large_step_seconds:.3g} s per step of LARGE, eval {human(estimate['eval'])}, parents "
         f"{human(estimate['parents'])}, calibration and saving ~{human(estimate['setup'])}); runs done already "
         "are not counted")
    if args.dry_run:
        echo("points: " + ", ".join(point.name for point in planned.selected))
        echo(f"dry run: nothing trained; the sweep would write {options.out}/")
        return 0
    store_plan(planned, options.out)
    try:
        outcomes = run_points(planned, options, echo)
    except (KeyboardInterrupt, Stopped) as stop:  # Ctrl-C, or SIGTERM/SIGHUP/SIGUSR1 after a checkpoint
        said = exit_code_and_message(stop)[1]
        echo(f"{said}; finished runs are kept. Continue with:")
        argv = [*sys.argv[1:]] if sys.argv[1:2] == ["sweep"] else ["sweep"]
        echo("  " + shlex.join(["bench", *argv, *([] if "--resume" in argv else ["--resume"])]))
        try:
            build_sweep_report(plan, options.out, options.amortize, not args.no_extrapolate)
            echo(f"partial sweep report: {options.out / 'report.md'}")
        except Exception as error:  # noqa: BLE001 — the interrupted sweep's partial report is a courtesy
            echo(f"no partial sweep report ({type(error).__name__}: {error})")
        return exit_code_and_message(stop)[0]
    report = build_sweep_report(plan, options.out, options.amortize, not args.no_extrapolate)
    echo("")
    echo(report.text)
    echo(f"sweep: {options.out}/ (report: {options.out / 'report.md'}; tables: sweep.csv, breakeven.csv"
         f"{', extrapolated.csv' if report.extrapolation is not None else ''}; plots: "
         f"{', '.join(f'plots/{name}' for name in PLOTS.values() if (options.out / 'plots' / name).exists())}; "
         f"points: {options.out / 'points'}/)")
    failed = {name: outcome for name, outcome in outcomes.items() if outcome["state"] != "done"}
    if failed and len(failed) == len(outcomes) and all(outcome.get("bad_input") for outcome in failed.values()):
        first = next(iter(failed.values()))["reason"].splitlines()[0]
        raise BenchError(f"every point failed: {first}")
    if failed:
        echo(f"{len(failed)} point(s) failed: {', '.join(failed)} (shown as failed in the report)")
        return 1
    return 0


__all__ = ["SYNOPSIS", "add_arguments", "options_from", "run"]
