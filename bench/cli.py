"""`bench` command line: argument parsing only; the work is done by the functions it calls.

Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tomllib
from pathlib import Path

from bench.errors import BenchError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors become our one-line exit 2
        raise BenchError(f"{self.prog}: {message}")


def _key_values(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"{what} takes KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _method_args(items: list[str]) -> dict[str, dict[str, str]]:
    """`mslt.growth_fraction=0.3` -> {"mslt": {"growth_fraction": "0.3"}}."""
    grouped: dict[str, dict[str, str]] = {}
    for key, value in _key_values(items, "--method-arg").items():
        method, sep, setting = key.rpartition(".")
        if not sep:
            raise BenchError(f"--method-arg takes METHOD.SETTING=VALUE, got {key!r}")
        grouped.setdefault(method, {})[setting] = value
    return grouped


def _budget(args) -> tuple[str, float | None, int | None]:
    given = [(unit, value) for unit, value in (("flops", args.budget), ("tokens", args.budget_tokens),
                                               ("seconds", args.budget_seconds), ("steps", args.budget_steps))
             if value is not None]
    if len(given) > 1:
        raise BenchError("give one budget: --budget, --budget-tokens, --budget-steps or --budget-seconds")
    if not given:
        return "flops", None, None
    unit, value = given[0]
    if not value > 0:
        raise BenchError(f"the budget must be positive, got {value}")
    if unit == "steps":
        return "flops", None, int(value)
    return unit, float(value), None


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", metavar="PATH", help="text files, folders, globs, or hf:NAME[:CONFIG]")
    parser.add_argument("--tokenizer", metavar="DIR", help="a saved Hugging Face tokenizer instead of training one")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    parser.add_argument("--price-file", metavar="F", help="a prices.toml to use instead of the built-in one")
    parser.add_argument("--price", action="append", default=[], metavar="KEY=USD",
                        help="override one price, e.g. H100=2.99 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_budget_args(parser: argparse.ArgumentParser) -> None:
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, metavar="FLOPS", help="training FLOPs every method gets")
    budget.add_argument("--budget-tokens", type=float, metavar="N")
    budget.add_argument("--budget-steps", type=int, metavar="N", help="the FLOPs of N steps of LARGE from scratch")
    budget.add_argument("--budget-seconds", type=float, metavar="S")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="growbench: what does growing a transformer really save?")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compare = commands.add_parser("compare", help="train every method under one budget and record what it cost")
    compare.add_argument("--pair", default="bert-nano:bert-micro", help="SMALL:LARGE (default bert-nano:bert-micro)")
    compare.add_argument("--methods", default="scratch,stackbert,mslt,bert2bert,ki,ligo",
                         help="comma-separated method names; 'all' = every method that is not a variant (no ':')")
    compare.add_argument("--method-arg", action="append", default=[], metavar="METHOD.SETTING=VALUE")
    _add_budget_args(compare)
    compare.add_argument("--parent-steps", type=int, metavar="N", help="steps to pretrain the parent (SMALL)")
    compare.add_argument("--seeds", type=int, default=3)
    compare.add_argument("--quick", action="store_true", help="the pair's short preset budgets")
    compare.add_argument("--small-from", metavar="DIR|HUB_ID", help="a pretrained SMALL checkpoint to grow from")
    compare.add_argument("--out", type=Path, metavar="DIR", help="run directory (default reports/<date>-<pair>)")
    compare.add_argument("--resume", action="store_true", help="continue a run directory, skipping finished runs")
    compare.add_argument("--country", default="WLD", help="ISO-3 country code for carbon intensity")
    compare.add_argument("--config", type=Path, metavar="F.toml", help="defaults for any of these options")
    _add_data_args(compare)

    pretrain = commands.add_parser("pretrain", help="pretrain a SMALL model (a parent), cached and reusable")
    pretrain.add_argument("--size", required=True)
    pretrain.add_argument("--steps", type=int, help="training steps (default: the pair default for its scale)")
    pretrain.add_argument("--out", type=Path, metavar="DIR", help="default: the growbench cache")
    _add_data_args(pretrain)

    report = commands.add_parser("report", help="rebuild tables and plots of a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--target", type=float, help="the quality bar (default: scratch's mean final loss)")

    check = commands.add_parser("check", help="compare a run directory with a baseline (CI gate)")
    check.add_argument("run_dir", type=Path)
    check.add_argument("--baseline", type=Path, required=True)

    baseline = commands.add_parser("baseline", help="write a baseline file from a run directory")
    baseline.add_argument("run_dir", type=Path)
    baseline.add_argument("--out", type=Path, required=True)

    commands.add_parser("list", help="sizes, pairs, methods, collectors and the price table")

    grow = commands.add_parser("grow", help="grow a parent checkpoint into a LARGE checkpoint, nothing else")
    grow.add_argument("--method", required=True)
    grow.add_argument("--from", dest="source", required=True, metavar="DIR")
    grow.add_argument("--to", required=True, metavar="SIZE")
    grow.add_argument("--out", type=Path, required=True)
    grow.add_argument("--method-arg", action="append", default=[], metavar="METHOD.SETTING=VALUE")
    grow.add_argument("--seed", type=int, default=0)
    _add_data_args(grow)
    return parser


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`--config F.toml` gives defaults (keys are option names with _ or -); the command line wins."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    try:
        values = tomllib.loads(args.config.read_text())
    except FileNotFoundError:
        raise BenchError(f"config file {args.config} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BenchError(f"config file {args.config} is not valid TOML ({error})") from None
    known = vars(args)
    defaults = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(defaults) - set(known))
    if unknown:
        raise BenchError(f"config file {args.config}: unknown option(s) {', '.join(unknown)}")
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    subparser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _compare(args) -> int:
    from bench import runner

    unit, value, steps = _budget(args)
    methods = runner.method_list(args.methods)
    data = None
    if args.corpus or args.tokenizer:
        defaults = runner.parse_pair(args.pair).defaults
        data = runner.DataConfig(args.corpus, args.tokenizer, defaults.seq_len, defaults.batch_size,
                                 defaults.vocab_size)
    config = runner.CompareConfig(
        pair=args.pair, methods=methods, method_args=_method_args(args.method_arg), budget_unit=unit,
        budget_value=value, budget_steps=steps, parent_steps=args.parent_steps, seeds=args.seeds, quick=args.quick,
        data=data, small_from=args.small_from, out=args.out, resume=args.resume, device=args.device,
        dtype=args.dtype, lr=args.lr, price_file=args.price_file, prices=_prices(args.price),
        country=args.country, progress_bar=not args.no_progress,
    )
    try:
        out = runner.compare(config)
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept. Continue with:", file=sys.stderr)
        print("  " + shlex.join(["bench", *sys.argv[1:], *([] if args.resume else ["--resume"])]), file=sys.stderr)
        return EXIT_INTERRUPTED
    report = runner.report(out)
    print(report.text)
    print(f"results: {out}/ (report: {out / 'report.md'})")
    return EXIT_OK


def _prices(items: list[str]) -> dict[str, float]:
    prices = {}
    for key, value in _key_values(items, "--price").items():
        try:
            prices[key] = float(value)
        except ValueError:
            raise BenchError(f"--price {key}={value}: not a number") from None
    return prices


def _pretrain(args) -> int:
    from bench import runner

    folder = runner.pretrain_command(args.size, args.steps, args.out, args.corpus, args.tokenizer, args.device,
                                     args.dtype, args.lr, not args.no_progress)
    print(f"parent: {folder / 'model'} (curve and bill in {folder}/)")
    return EXIT_OK


def _report(args) -> int:
    from bench import runner

    report = runner.report(args.run_dir, args.target)
    print(report.text)
    print(f"report: {args.run_dir / 'report.md'}")
    return EXIT_OK


def _check(args) -> int:
    from bench.check import check

    result = check(args.run_dir, args.baseline)
    print(result.text)
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def _baseline(args) -> int:
    from bench.check import write_baseline

    write_baseline(args.run_dir, args.out)
    print(f"baseline: {args.out}")
    return EXIT_OK


def _list(args) -> int:
    from bench import runner

    print(runner.listing())
    return EXIT_OK


def _grow(args) -> int:
    from bench import runner

    out = runner.grow_command(args.method, args.source, args.to, args.out, _method_args(args.method_arg),
                              args.seed, args.corpus, args.tokenizer, args.device, args.dtype, not args.no_progress)
    print(f"grown checkpoint: {out}")
    return EXIT_OK


COMMANDS = {"compare": _compare, "pretrain": _pretrain, "report": _report, "check": _check,
            "baseline": _baseline, "list": _list, "grow": _grow}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)  # one-off notices such as the first corpus extraction
    try:
        args = _apply_config_file(build_parser(), argv)
        return COMMANDS[args.command](args)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
