"""Turning command-line values into settings: KEY=VALUE lists, budgets, prices, run selections, and the
checks that need no data (output locations, corpus and tokenizer paths, the price table, the device)."""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

from bench.errors import BenchError


def key_values(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"{what} takes KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_method_args(items: list[str]) -> dict[str, dict[str, str]]:
    """`mslt.growth_share=0.3` -> {"mslt": {"growth_share": "0.3"}}."""
    grouped: dict[str, dict[str, str]] = {}
    for key, value in key_values(items, "--method-arg").items():
        method, sep, setting = key.rpartition(".")
        if not sep or not method or not setting:
            raise BenchError(f"--method-arg takes METHOD.SETTING=VALUE, got {key!r}")
        grouped.setdefault(method, {})[setting] = value
    return grouped


def parse_budget(args) -> tuple[str, float | None, int | None]:
    given = [(unit, value) for unit, value in (("flops", args.budget), ("tokens", args.budget_tokens),
                                               ("seconds", args.budget_seconds), ("steps", args.budget_steps))
             if value is not None]
    if len(given) > 1:
        raise BenchError("give one budget: --budget, --budget-tokens, --budget-steps or --budget-seconds")
    if not given:
        return "flops", None, None
    unit, value = given[0]
    if isinstance(value, bool) or not math.isfinite(value) or not value > 0:
        raise BenchError(f"the budget must be a positive finite number, got {value}")
    if unit == "steps":
        return "flops", None, int(value)
    return unit, float(value), None


def parse_prices(items: list[str]) -> dict[str, float]:
    prices = {}
    for key, value in key_values(items, "--price").items():
        try:
            prices[key] = float(value)
        except ValueError:
            raise BenchError(f"--price {key}={value}: not a number") from None
    return prices


def parse_only(text: str, methods: list[str], seeds: int) -> list[str]:
    """`--only ligo-s2,bert2bert:fpi-s0` -> run names, each a run of this comparison (method chosen, seed in range)."""
    from bench.records import run_name

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise BenchError(f"--only names no run; give RUN[,RUN...], e.g. {run_name(methods[0], 0)}")
    stems = {run_name(method, 0).rpartition("-s")[0]: method for method in methods}
    chosen = []
    for name in names:
        stem, sep, seed_text = name.replace(":", "_").rpartition("-s")
        if not sep or not stem or not re.fullmatch(r"[0-9]+", seed_text):
            raise BenchError(f"--only {name}: a run name is METHOD-sSEED, e.g. {run_name(methods[0], 0)}")
        if stem not in stems:
            raise BenchError(f"--only {name}: method {stem} is not among --methods ({', '.join(methods)})")
        seed = int(seed_text)
        if seed >= seeds:
            raise BenchError(f"--only {name}: seed {seed} is out of range; --seeds {seeds} runs seeds 0 to {seeds - 1}")
        chosen.append(run_name(stems[stem], seed))
    return list(dict.fromkeys(chosen))


def check_output_location(path: Path, option: str, folder: bool = True) -> None:
    """Refuse, before any work, an output location that cannot be used: a file where a folder belongs (or the
    reverse), a path below a file, a folder this process cannot write in. (As root only a read-only file system
    shows here; a write that fails later is still exit 2, from main.)"""
    path = Path(path).expanduser()
    if path.exists() and folder and not path.is_dir():
        raise BenchError(f"{option} {path} is a file, not a folder")
    if path.exists() and not folder and path.is_dir():
        raise BenchError(f"{option} {path} is a folder, not a file")
    existing = path if folder and path.is_dir() else path.parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BenchError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(f"{option} {path}: cannot write in {existing} (read-only or permission denied)")


def check_data_inputs(args) -> dict:
    """The inputs every training command shares, checked before any data is prepared; the price table."""
    from bench.collectors.cost import load_prices
    from bench.runner.prepare import resolve_device

    for source in args.corpus or []:
        if not source.startswith("hf:") and not os.path.lexists(Path(source).expanduser()) \
                and not glob.has_magic(source):
            raise BenchError(f"corpus path {source} does not exist")
    if args.tokenizer and not Path(args.tokenizer).expanduser().is_dir():
        raise BenchError(f"tokenizer folder {args.tokenizer} does not exist")
    prices = load_prices(args.price_file, parse_prices(args.price))
    resolve_device(args.device, args.dtype)
    return prices


