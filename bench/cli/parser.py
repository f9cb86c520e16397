"""The argument parser of every command, and `--config F.toml` defaults checked against each option's type."""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path

from bench.errors import BenchError
from bench.sweep import command as sweep_command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors become our one-line exit 2
        raise BenchError(f"{message} (see {self.prog} --help)")


class _Number:
    """An argparse type: a number of `kind` (int or float) for which `ok` holds. A config file's value is checked
    against `kind` too."""

    def __init__(self, kind: type, ok, words: str):
        self.kind, self.ok, self.words = kind, ok, words
        self.__name__ = words

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.words}, got {text!r}")
        return value


POSITIVE_INT = _Number(int, lambda value: value >= 1, "a positive whole number")
NON_NEGATIVE_INT = _Number(int, lambda value: value >= 0, "a whole number >= 0")
POSITIVE_FLOAT = _Number(float, lambda value: math.isfinite(value) and value > 0, "a finite number above 0")
FINITE_FLOAT = _Number(float, math.isfinite, "a finite number")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", metavar="PATH", help="text files, folders, globs, or hf:NAME[:CONFIG]")
    parser.add_argument("--tokenizer", metavar="DIR", help="a saved Hugging Face tokenizer instead of training one")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "tf32", "bf16"],
                        help="fp32: strict float32 (TF32 off); tf32: float32 on TF32 tensor cores (CUDA only); "
                             "bf16: bfloat16 autocast; auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--micro-batch", type=POSITIVE_INT, metavar="ROWS",
                        help="gradient-accumulation chunk (rows; a divisor of the batch, at most the batch); "
                             "default: the pair's (the size's)")
    parser.add_argument("--lr", type=POSITIVE_FLOAT, help="peak learning rate (default 1e-3)")
    parser.add_argument("--price-file", metavar="F", help="a prices.toml to use instead of the built-in one")
    parser.add_argument("--price", action="append", default=[], metavar="KEY=USD",
                        help="override one price, e.g. H100=2.99 (repeatable)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, one line per eval point (as when the output is not a terminal)")


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=POSITIVE_FLOAT, metavar="FLOPS", help="training FLOPs every method gets")
    budget.add_argument("--budget-tokens", type=POSITIVE_FLOAT, metavar="N")
    budget.add_argument("--budget-steps", type=POSITIVE_INT, metavar="N",
                        help="the FLOPs of N steps of LARGE from scratch")
    budget.add_argument("--budget-seconds", type=POSITIVE_FLOAT, metavar="S")


def _add_global_args(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show its traceback (the error is re-raised)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", default=default,
                        help="no progress and no messages: errors and the final result only")
    output.add_argument("--log-json", action="store_true", default=default,
                        help="one JSON object per event on stdout (messages, eval points, the result)")


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    _add_global_args(debug, argparse.SUPPRESS)
    parser = _Parser(prog="bench", description="growbench: what does growing a transformer really save?")
    _add_global_args(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compare = commands.add_parser("compare", parents=[debug],
                                  help="train every method under one budget and record what it cost")
    compare.add_argument("--pair", default="bert-nano:bert-micro",
                         help="SMALL:LARGE (default bert-nano:bert-micro); :LARGE reads SMALL from --small-from")
    compare.add_argument("--methods", default="scratch,stackbert,mslt,bert2bert,ki,ligo",
                         help="comma-separated method names; 'all' = every method that is not a variant (no ':')")
    compare.add_argument("--method-arg", action="append", default=[], metavar="METHOD.SETTING=VALUE")
    add_budget_args(compare)
    compare.add_argument("--parent-steps", type=POSITIVE_INT, metavar="N", help="steps to pretrain the parent (SMALL)")
    compare.add_argument("--seeds", type=POSITIVE_INT, default=3)
    compare.add_argument("--eval-points", type=POSITIVE_INT, metavar="N",
                         help="validation points along each run (default 20)")
    compare.add_argument("--quick", action="store_true", help="the pair's short preset budgets")
    compare.add_argument("--small-from", metavar="DIR|HUB_ID",
                         help="a pretrained BERT / RoBERTa / GPT-2 checkpoint to grow from (a hub id downloads it); "
                              "the runs take its tokenizer, vocabulary and positions")
    compare.add_argument("--out", type=Path, metavar="DIR", help="run directory (default reports/<date>-<pair>)")
    start = compare.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue a run directory, skipping finished runs")
    start.add_argument("--fresh", action="store_true",
                       help="start the run directory over: its runs are deleted, whatever settings it held")
    compare.add_argument("--repair", action="store_true",
                         help="with --resume: train again the runs whose files fail their checksums")
    compare.add_argument("--prepare", action="store_true",
                         help="prepare data, tokenizer, parent, budget, calibration and manifest; train no run")
    compare.add_argument("--only", metavar="RUN[,RUN...]",
                         help="train only these runs (METHOD-sSEED, e.g. ligo-s2), e.g. one job per run")
    compare.add_argument("--checkpoint-every", type=POSITIVE_FLOAT, metavar="MIN",
                         help="minutes between mid-run checkpoints (default 10)")
    compare.add_argument("--keep-checkpoints", action="store_true", help="keep a run's checkpoints once it finished")
    compare.add_argument("--country", default="WLD", help="ISO-3 country code for carbon intensity")
    compare.add_argument("--config", type=Path, metavar="F.toml", help="defaults for any of these options")
    add_data_args(compare)

    pretrain = commands.add_parser("pretrain", parents=[debug],
                                   help="pretrain a SMALL model (a parent), cached and reusable")
    pretrain.add_argument("--size", required=True)
    pretrain.add_argument("--steps", type=POSITIVE_INT, help="training steps (default: the pair default for its scale)")
    pretrain.add_argument("--out", type=Path, metavar="DIR", help="default: the growbench cache")
    add_data_args(pretrain)

    report = commands.add_parser("report", parents=[debug], help="rebuild tables and plots of a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--target", type=FINITE_FLOAT, help="the quality bar (default: scratch's mean final loss)")

    check = commands.add_parser("check", parents=[debug], help="compare a run directory with a baseline (CI gate)")
    check.add_argument("run_dir", type=Path)
    check.add_argument("--baseline", type=Path, required=True)
    check.add_argument("--allow-incomplete", action="store_true",
                       help="judge a run directory whose runs are not all finished")

    baseline = commands.add_parser("baseline", parents=[debug], help="write a baseline file from a run directory")
    baseline.add_argument("run_dir", type=Path)
    baseline.add_argument("--out", type=Path, required=True)
    baseline.add_argument("--allow-incomplete", action="store_true",
                          help="write it from a run directory whose runs are not all finished")
    baseline.add_argument("--reproduction", type=Path, action="append", default=[], metavar="DIR",
                          help="the same comparison run again with one thing changed (torch threads, a perturbed "
                               "initialisation): FLOPs savings' and final loss' tolerances come from how far it moved "
                               "(repeatable)")

    commands.add_parser("list", parents=[debug], help="sizes, pairs, methods, collectors and the price table")

    sweep = commands.add_parser("sweep", parents=[debug], help="one comparison per budget (and parent): where "
                                "growth stops paying, the break-even budget")
    sweep_command.add_arguments(sweep)

    grow = commands.add_parser("grow", parents=[debug],
                               help="grow a parent checkpoint into a LARGE checkpoint, nothing else")
    grow.add_argument("--method", required=True)
    grow.add_argument("--from", dest="source", required=True, metavar="DIR|HUB_ID",
                      help="the checkpoint to grow (its tokenizer, vocabulary and positions are kept)")
    grow.add_argument("--to", required=True, metavar="SIZE")
    grow.add_argument("--out", type=Path, required=True)
    grow.add_argument("--method-arg", action="append", default=[], metavar="METHOD.SETTING=VALUE")
    grow.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    add_data_args(grow)
    return parser


# --- the config file -------------------------------------------------------------------------------------------


def _config_value(action: argparse.Action, key: str, value, where: Path):
    """A config file's value for `action`, checked to have the option's type, as argparse would store it."""
    option = action.option_strings[-1]

    def wrong(expected: str) -> BenchError:
        return BenchError(f"config file {where}: {key} must be {expected} (like {option}), got {value!r}")

    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value) \
                or (action.nargs == "+" and not value):
            raise wrong("a list of strings")
        return list(value)
    kind = getattr(action.type, "kind", str)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise wrong("a whole number")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise wrong("a number")
    if kind not in (int, float) and not isinstance(value, str):
        raise wrong("a string")
    if action.type is not None:
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except argparse.ArgumentTypeError as error:
            raise BenchError(f"config file {where}: {key} {error}") from None
    if action.choices is not None and value not in action.choices:
        raise wrong(f"one of {', '.join(map(str, action.choices))}")
    return value


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`--config F.toml` gives defaults (keys are option names with _ or -), each of the option's type; the command
    line wins, also over the config file's choice among options that exclude each other (--budget*, --resume)."""
    args = parser.parse_args(argv)
    where = getattr(args, "config", None)
    if where is None:
        return args
    try:
        values = tomllib.loads(where.read_text())
    except FileNotFoundError:
        raise BenchError(f"config file {where} does not exist") from None
    except OSError as error:
        raise BenchError(f"cannot read config file {where}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BenchError(f"config file {where} is not valid TOML ({error})") from None
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    actions = {action.dest: action for action in subparser._actions
               if action.option_strings and action.dest not in ("help", "config", "debug", "quiet", "log_json")}
    unknown = sorted(key for key in values if key.replace("-", "_") not in actions)
    if unknown:
        raise BenchError(f"config file {where}: unknown option(s) {', '.join(unknown)}")
    defaults = {key.replace("-", "_"): _config_value(actions[key.replace("-", "_")], key, value, where)
                for key, value in values.items()}
    for group in subparser._mutually_exclusive_groups:
        members = [action.dest for action in group._group_actions if action.dest in actions]
        if any(getattr(args, dest) != actions[dest].default for dest in members):
            for dest in members:
                defaults.pop(dest, None)
    subparser.set_defaults(**defaults)
    return parser.parse_args(argv)


