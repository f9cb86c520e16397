"""`bench compare`: every method under one budget, over several seeds, into one run directory.

`compare` resolves everything the runs share (data, budget, parent, prices, calibration), writes
the manifest, then trains each (method, seed) with `one_run.train_run` and records it. Nothing here
knows a method by name: methods come from the registry and yield their own phases.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from bench import __version__
from bench.calibration import (
    CALIBRATION_FILE,
    CalibrationTable,
    calibrate,
    comparison_table,
    manifest_entry,
    recalibrate_after,
)
from bench.collectors.cost import load_prices
from bench.errors import BenchError, RunsFailed
from bench.hardware import hardware_fingerprint
from bench.methods import GrowthContext, make_method
from bench.records import FAILED, RUNNING, RunDir, read_json, run_name, write_json
from bench.runner import one_run
from bench.runner.parent import comparison_parent
from bench.runner.prepare import PARENT_SEED, DataConfig, loop_config, prepare_data, scratch_step
from bench.sizes import parse_pair
from bench.train import Budget


@dataclass
class CompareConfig:
    pair: str = "bert-nano:bert-micro"
    methods: list[str] = field(default_factory=lambda: ["scratch"])
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    budget_unit: str = "flops"
    budget_value: float | None = None  # None: the pair's default, in steps of LARGE from scratch
    budget_steps: int | None = None
    parent_steps: int | None = None
    seeds: int = 1
    quick: bool = False
    data: DataConfig | None = None  # None: the pair's defaults with the built-in corpus
    small_from: str | None = None
    out: Path | None = None
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"
    lr: float | None = None
    eval_points: int = 20
    price_file: str | None = None
    prices: dict[str, float] = field(default_factory=dict)
    country: str = "WLD"
    progress_bar: bool = True
    # nothing lost (issue 10): how a run directory is continued, shared and checkpointed
    fresh: bool = False  # start the run directory over (its runs are deleted), whatever settings it held
    repair: bool = False  # with resume: retrain the runs whose files fail their checksums
    prepare_only: bool = False  # data, tokenizer, parent, budget, calibration and manifest; no run
    only: list[str] | None = None  # run names (e.g. ligo-s2) to train; None = every run
    checkpoint_every: float = 10.0  # minutes between mid-run checkpoints (also taken at eval points)
    keep_checkpoints: bool = False


def compare(config: CompareConfig, echo=print) -> Path:
    pair = parse_pair(config.pair)
    defaults = pair.defaults
    methods = {name: make_method(name, config.method_args.get(name)) for name in config.methods}
    if config.seeds < 1:
        raise BenchError("--seeds must be at least 1")
    data_config = config.data or DataConfig(seq_len=defaults.seq_len, batch_size=defaults.batch_size,
                                            vocab_size=defaults.vocab_size)
    prices = load_prices(config.price_file, config.prices)
    loop = loop_config(pair, config.device, config.dtype, config.lr, config.eval_points, config.progress_bar)
    out = config.out or Path("reports") / f"{datetime.now():%Y-%m-%d}-{pair.name.replace(':', '_')}"
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise BenchError(f"{out} already holds a comparison; pass --resume to continue it or --out for a new one")

    echo(f"preparing data for {pair.name} ...")
    prepared = prepare_data(pair, data_config)
    budget_steps = config.budget_steps or (defaults.quick_budget_steps if config.quick else defaults.budget_steps)
    large_flops, large_seconds = scratch_step(pair.large, prepared, loop)
    budget = Budget(config.budget_unit, config.budget_value) if config.budget_value else \
        Budget("flops", large_flops * budget_steps)
    parent_steps = config.parent_steps or (defaults.quick_parent_steps if config.quick else defaults.parent_steps)
    needs_parent = any(method.needs_parent for method in methods.values())

    manifest = _manifest(config, pair, budget, large_flops, methods, prepared, loop, prices, parent_steps)
    manifest_path = out / "manifest.json"
    if config.resume and manifest_path.exists():
        _check_same_comparison(read_json(manifest_path), manifest)
    write_json(manifest_path, manifest)

    _print_estimate(echo, pair, budget, large_flops, large_seconds, len(methods) * config.seeds,
                    parent_steps if needs_parent and not config.small_from else 0, prepared, loop)

    parent = None
    if needs_parent:
        parent = comparison_parent(config.small_from, pair, parent_steps, prepared, loop, prices, out, echo)

    def context(method, seed: int) -> GrowthContext:
        return GrowthContext(pair, copy.deepcopy(parent) if method.needs_parent else None, prepared.vocab_size,
                             data_config.seq_len, prepared.pad_token_id, seed)

    def calibrated() -> CalibrationTable:
        return calibrate(methods, context, config.seeds, budget, prepared.source, replace(loop, progress_bar=False),
                         echo=echo)

    table = comparison_table(out / CALIBRATION_FILE, config.resume, calibrated, echo)
    manifest["calibration"] = manifest_entry(table)
    write_json(manifest_path, manifest)
    ran = False
    failures = []
    for name, method in methods.items():
        for seed in range(config.seeds):
            run = RunDir(out / "runs" / run_name(name, seed))
            if config.resume and run.is_done():
                echo(f"{run_name(name, seed)}: done already, skipped")
                continue
            run.set_status(RUNNING, method=name, seed=seed)
            loop.label = f"{name} s{seed}"
            started, ran = time.perf_counter(), True
            try:
                result = one_run.train_run(method.phases(context(method, seed)), budget, prepared, seed, loop,
                                           run.path, prices, config.country, calibration=table)
            except BenchError as error:
                run.set_status(FAILED, reason=str(error), method=name, seed=seed)
                raise
            except Exception as error:  # noqa: BLE001 — one broken run must not lose the others
                run.set_status(FAILED, reason=f"{type(error).__name__}: {error}", method=name, seed=seed)
                failures.append(f"{run_name(name, seed)}: {type(error).__name__}: {error}")
                echo(f"{run_name(name, seed)}: FAILED ({type(error).__name__}: {error})")
                continue
            one_run.record_run(run, result, prepared, method=name, seed=seed, settings=asdict(method.settings))
            state = f"diverged ({result.diverged})" if result.diverged else f"val loss {result.final_val_loss:.4f}"
            echo(f"{run_name(name, seed)}: {state} in {time.perf_counter() - started:.0f} s")
    if ran or not table.after:  # again after the last run, unless a finished session already did
        recalibrate_after(table, out / CALIBRATION_FILE, calibrated, echo)
        manifest["calibration"] = manifest_entry(table)
    manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(manifest_path, manifest)
    if failures:
        raise RunsFailed("some runs failed:\n" + "\n".join(failures))
    return out


def _manifest(config, pair, budget, large_flops, methods, prepared, loop, prices, parent_steps) -> dict:
    return {
        "growbench_version": __version__,
        "command": sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "pair": pair.name, "small": asdict(pair.small), "large": asdict(pair.large),
        "budget": {"unit": budget.unit, "value": budget.value,
                   "flops": budget.value if budget.unit == "flops" else None,
                   "large_step_flops": large_flops, "large_steps_equivalent": budget.value / large_flops
                   if budget.unit == "flops" else None},
        "seeds": list(range(config.seeds)),
        "methods": {name: {"needs_parent": m.needs_parent, **asdict(m.settings)} for name, m in methods.items()},
        "parent": {"from": config.small_from or "pretrained", "steps": None if config.small_from else parent_steps,
                   "seed": PARENT_SEED},
        "data": prepared.fingerprint(),
        "train": {"optim": asdict(loop.optim), "eval_points": loop.eval_points, "device": str(loop.device),
                  "autocast": str(loop.autocast_dtype), "micro_batch": loop.micro_batch, "quick": config.quick},
        "flop_convention": "1 multiply-add = 2 FLOPs; flops_executed counted by torch FlopCounterMode on one real step",
        "hardware": hardware_fingerprint(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git_sha": _git_sha(),
        "prices": prices,
    }


def _check_same_comparison(old: dict, new: dict) -> None:
    for key in ("pair", "budget", "seeds", "methods", "data"):
        if json.dumps(old.get(key), sort_keys=True, default=str) != json.dumps(new.get(key), sort_keys=True,
                                                                               default=str):
            raise BenchError(f"--resume: the run directory holds a different comparison ({key} differs)")


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _print_estimate(echo, pair, budget, large_flops, large_seconds, runs, parent_steps, prepared, loop) -> None:
    """The time this comparison should take here, from timed steps, before the long work starts."""
    steps = budget.value / large_flops if budget.unit == "flops" else None
    if steps is None:
        echo(f"budget: {budget.value:g} {budget.unit}")
        return
    parent_s = 0.0
    if parent_steps:
        parent_s = scratch_step(pair.small, prepared, loop)[1] * parent_steps
    total = runs * steps * large_seconds + parent_s
    echo(f"budget: {budget.value:.3g} FLOPs = {steps:.0f} steps of {pair.large.name} from scratch "
         f"({large_seconds:.3g} s/step here); estimate for {runs} run(s)"
         f"{' + parent' if parent_steps else ''}: {_human(total)} (eval not included)")
    default_steps = pair.defaults.budget_steps
    if abs(steps - default_steps) > 0.5:
        echo(f"the pair's default budget ({default_steps} steps) would take {_human(default_steps * large_seconds)}"
             f" per run here")


def _human(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def method_list(text: str) -> list[str]:
    """Comma-separated method names, each once, in order; `all` stands for every registered method that is
    not a variant (no ':' in its name), scratch first: it sets the target."""
    from bench.methods import method_names

    every = sorted((name for name in method_names() if ":" not in name), key=lambda name: name != "scratch")
    names = [name.strip() for item in text.split(",") for name in (every if item.strip() == "all" else [item])]
    return list(dict.fromkeys(name for name in names if name))


def report(run_dir: Path, target: float | None = None):
    from bench.report import build_report

    return build_report(run_dir, target)


