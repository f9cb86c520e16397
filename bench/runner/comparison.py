"""`bench compare`: every method under one budget, over several seeds, into one run directory.

`compare` resolves everything the runs share (data, budget, parent, prices, calibration), writes
the manifest, then trains each (method, seed) with `one_run.train_run` and records it. Nothing here
knows a method by name: methods come from the registry and yield their own phases.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from bench import __version__, data, distributed, logs
from bench.calibration import (
    CALIBRATION_FILE,
    CalibrationTable,
    calibrate,
    comparison_table,
    manifest_entry,
    recalibrate_after,
)
from bench.collectors.cost import load_prices
from bench.errors import BenchError, RunsFailed, Stopped, is_environment_fault
from bench.hardware import hardware_fingerprint
from bench.locks import COMPARE_LOCK, RUN_LOCK, Lock
from bench.logs import human_duration
from bench.methods import GrowthContext, check_method_args, make_method
from bench.records import FAILED, FINISHED, RUNNING, RunDir, read_json, remove_temporaries, run_name, write_json
from bench.runner import one_run
from bench.runner.parent import comparison_parent, open_parent
from bench.runner.prepare import PARENT_SEED, DataConfig, Prepared, loop_config, prepare_data, scratch_step
from bench.sizes import Pair, parent_pair, parse_pair
from bench.train import MAX_PHASE_STEPS, Budget, LoopConfig

MANIFEST = "manifest.json"


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
    micro_batch: int | None = None  # rows per gradient-accumulation chunk; None: the pair's default


@dataclass
class Comparison:
    """What every run of a comparison shares, resolved once under the comparison's lock."""

    out: Path
    methods: dict
    prepared: Prepared
    budget: Budget
    loop: LoopConfig
    prices: dict
    table: CalibrationTable
    seeds: int
    context: Callable[[object, int], GrowthContext]
    calibrated: Callable[[], CalibrationTable]

    def runs(self, only: list[str] | None = None) -> list[tuple[str, str, int]]:
        """(run name, method name, seed) of the runs to train, in order: every run, or those named in `only`."""
        every = [(run_name(name, seed), name, seed) for name in self.methods for seed in range(self.seeds)]
        return [entry for entry in every if only is None or entry[0] in only]


def compare(config: CompareConfig, echo=print) -> Path:
    """Run (or continue, or join) a comparison; the run directory's path."""
    pair = parse_pair(config.pair)
    methods = _methods(config, pair)
    out = config.out or default_out(pair)
    _open_run_directory(out, config, echo)
    with _compare_lock(out, echo):
        shared = _set_up(config, pair, methods, out, echo)
    if config.prepare_only:
        echo(f"prepared {out}: data, parent, budget and calibration; train its runs with --only or --resume")
        return out
    ran, failures = False, []
    for name, method, seed in shared.runs(config.only):
        run = RunDir(out / "runs" / name)
        lock = Lock(run.path / RUN_LOCK)  # one writer per run: concurrent jobs never train the same one
        if not lock.try_acquire():
            echo(f"{name}: being trained by {lock.holder()}; skipped")
            continue
        try:
            trained, failure = _train_one(run, method, seed, shared, config, echo)
        finally:
            lock.release()
        ran = ran or trained
        if failure:
            failures.append(failure)
    with _compare_lock(out, echo):
        _finish(shared, ran, echo)
    if failures:
        raise RunsFailed("some runs failed:\n" + "\n".join(failures))
    return out


def default_out(pair: Pair) -> Path:
    """reports/<date>-<small>_<large>, in characters any shell and file system take as they are."""
    return Path("reports") / f"{datetime.now():%Y-%m-%d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', pair.name).strip('_')}"


def _methods(config: CompareConfig, pair: Pair) -> dict:
    """The methods with their settings, and the run selection, checked before anything is prepared."""
    check_method_args(config.method_args, config.methods, "among --methods")
    methods = {name: make_method(name, config.method_args.get(name), pair) for name in config.methods}
    if config.seeds < 1:
        raise BenchError("--seeds must be at least 1")
    if config.fresh and config.resume:
        raise BenchError("--fresh starts the run directory over and --resume continues it: give one")
    if config.repair and not config.resume:
        raise BenchError("--repair retrains damaged runs of a run directory: it needs --resume")
    known = {run_name(name, seed) for name in methods for seed in range(config.seeds)}
    unknown = [name for name in config.only or [] if name not in known]
    if unknown:
        raise BenchError(f"--only {', '.join(unknown)}: not a run of this comparison, whose runs are "
                         f"{', '.join(sorted(known))}")
    return methods


def _open_run_directory(out: Path, config: CompareConfig, echo) -> None:
    """Refuse an --out that holds something else; with --fresh, empty a previous comparison's."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    if not out.exists() or all(path.name == COMPARE_LOCK for path in out.iterdir()):
        return  # new, or left by a comparison refused before it wrote anything
    ours = (out / MANIFEST).exists() or (out / "runs").is_dir()
    if config.fresh:
        if not ours:
            raise BenchError(f"--fresh: {out} does not hold a comparison, so growbench will not delete it")
        with _compare_lock(out, echo):
            busy = [path.parent.name for path in (out / "runs").glob(f"*/{RUN_LOCK}") if Lock(path).held()]
            if busy:
                raise BenchError(f"--fresh: {out} has runs being trained right now ({', '.join(busy)})")
            for path in out.iterdir():
                if path.name != COMPARE_LOCK:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    joining = config.resume or config.only is not None or config.prepare_only
    if not joining:
        raise BenchError(f"{out} already holds a comparison; pass --resume to continue it, --fresh to start it "
                         "over, or --out for a new one")
    if not ours:
        raise BenchError(f"{out} is not empty and holds no comparison; choose another --out")


@contextmanager
def _compare_lock(out: Path, echo) -> Iterator[None]:
    """The comparison's setup (manifest, parent, calibration) and finish happen under one lock."""
    lock = Lock(out / COMPARE_LOCK)
    lock.acquire(waiting=lambda holder: echo(f"waiting for {holder}, which is setting up {out} ..."))
    try:
        yield
    finally:
        lock.release()


def _set_up(config: CompareConfig, pair: Pair, methods: dict, out: Path, echo) -> Comparison:
    """Data, budget, manifest (checked against the one in `out`), parent and calibration."""
    defaults = pair.defaults
    data_config = config.data or DataConfig(seq_len=defaults.seq_len, batch_size=defaults.batch_size,
                                            vocab_size=defaults.vocab_size)
    prices = load_prices(config.price_file, config.prices)
    loop = loop_config(pair, config.device, config.dtype, config.lr, config.eval_points, config.progress_bar,
                       micro_batch=config.micro_batch, batch_size=data_config.batch_size)
    needs_parent = any(method.needs_parent for method in methods.values())
    checkpoint = parent = None
    if config.small_from:  # a checkpoint the user gave: the data and every model take its tokenizer and config
        checkpoint = open_parent(config.small_from)
        pair = parent_pair(pair, checkpoint.config, config.small_from)
        checkpoint.check_positions(data_config.seq_len)
        if needs_parent:  # its weights (and LM head) are checked before anything is written
            parent = comparison_parent(config.small_from, pair, 0, None, loop, prices, out, echo, checkpoint)
    echo(f"preparing data for {pair.name} ...")
    prepared = prepare_data(pair, data_config, checkpoint)
    budget_steps = config.budget_steps or (defaults.quick_budget_steps if config.quick else defaults.budget_steps)
    large_flops, large_seconds = scratch_step(pair.large, prepared, loop)
    budget = Budget(config.budget_unit, config.budget_value) if config.budget_value else \
        Budget("flops", large_flops * budget_steps)
    per_step = {"flops": large_flops, "tokens": prepared.source(0).tokens_per_step, "seconds": large_seconds}
    if budget.value / per_step[budget.unit] > MAX_PHASE_STEPS:  # refused before anything is written
        raise BenchError(f"the budget ({budget.value:.3g} {budget.unit}) is {budget.value / per_step[budget.unit]:.3g} "
                         f"steps of {pair.large.name} from scratch, more than growbench plans ({MAX_PHASE_STEPS:.0e})")
    parent_steps = config.parent_steps or (defaults.quick_parent_steps if config.quick else defaults.parent_steps)

    manifest = _manifest(config, pair, budget, large_flops, methods, prepared, loop, prices, parent_steps)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest = _joined(read_json(manifest_path), manifest)
    write_json(manifest_path, manifest)
    remove_temporaries(out)  # what a killed session left at the top (written only under this lock)

    runs = len(config.only) if config.only is not None else len(methods) * config.seeds
    _print_estimate(echo, pair, budget, large_flops, large_seconds, 0 if config.prepare_only else runs,
                    parent_steps if needs_parent and not config.small_from else 0, prepared, loop)
    if needs_parent and parent is None:
        parent = comparison_parent(config.small_from, pair, parent_steps, prepared, loop, prices, out, echo)

    def context(method, seed: int) -> GrowthContext:
        return GrowthContext(pair, copy.deepcopy(parent) if method.needs_parent else None, prepared.vocab_size,
                             data_config.seq_len, prepared.pad_token_id, seed, prepared.base)

    def calibrated() -> CalibrationTable:
        return calibrate(methods, context, config.seeds, budget, prepared.source, replace(loop, progress_bar=False),
                         echo=echo)

    # a new directory has no table yet; one being continued or joined keeps the one its finished runs used
    table = comparison_table(out / CALIBRATION_FILE, True, calibrated, echo)
    manifest["calibration"] = manifest_entry(table)
    write_json(manifest_path, manifest)
    return Comparison(out, methods, prepared, budget, loop, prices, table, config.seeds, context, calibrated)


def _train_one(run: RunDir, method_name: str, seed: int, shared: Comparison, config: CompareConfig,
               echo) -> tuple[bool, str | None]:
    """Train one run this process holds the lock of: (whether it trained, why it failed or None). A finished
    run is verified and skipped; a damaged one is an error, or trained again with --repair."""
    name, method = run.path.name, shared.methods[method_name]
    remove_temporaries(run.path)
    if run.status() and run.status().get("state") in FINISHED:
        damaged = run.damaged()
        if not damaged:
            echo(f"{name}: done already, skipped")
            return False, None
        if not config.repair:
            run.verify()
        echo(f"{name}: {damaged[0][0]} is damaged ({damaged[0][1]}); --repair: training the run again")
        for path in run.path.iterdir():
            if path.name != RUN_LOCK:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    run.set_status(RUNNING, method=method_name, seed=seed)
    shared.loop.label = f"{method_name} s{seed}"
    started = time.perf_counter()
    try:
        result = one_run.train_run(functools.partial(method.phases, shared.context(method, seed)), shared.budget, shared.prepared, seed,
                                   shared.loop, run.path, shared.prices, config.country, calibration=shared.table,
                                   checkpoint=one_run.Checkpointing(run.path / "checkpoint", config.checkpoint_every * 60,
                                                                    config.keep_checkpoints, resume=config.resume))
    except Stopped as stop:  # the partial records: the curve so far beside the checkpoint `--resume` continues from
        if stop.curve:
            run.write_curve(stop.curve)
        run.set_status(RUNNING, method=method_name, seed=seed, reason=f"stopped by {stop.name} {stop.where}".strip())
        raise
    except BenchError as error:
        run.set_status(FAILED, reason=str(error), method=method_name, seed=seed)
        raise
    except Exception as error:
        if is_environment_fault(error):  # a full disk fails every later run too: stop, exit 3, --resume later
            raise
        run.set_status(FAILED, reason=f"{type(error).__name__}: {error}", method=method_name, seed=seed)
        echo(f"{name}: FAILED ({type(error).__name__}: {error})")
        return True, f"{name}: {type(error).__name__}: {error}"
    one_run.record_run(run, result, shared.prepared, method=method_name, seed=seed,
                       settings=asdict(method.settings))
    state = f"diverged ({result.diverged})" if result.diverged else f"val loss {result.final_val_loss:.4f}"
    echo(f"{name}: {state} in {time.perf_counter() - started:.0f} s")
    return True, None


def _finish(shared: Comparison, ran: bool, echo) -> None:
    """Once every run of the comparison is finished (by whichever job is last): the calibration after the last
    run, and the manifest's `finished` time."""
    statuses = [RunDir(shared.out / "runs" / name).status() or {} for name, _, _ in shared.runs()]
    if any(status.get("state") not in FINISHED for status in statuses):
        return
    table = CalibrationTable.load(shared.out / CALIBRATION_FILE)
    manifest = read_json(shared.out / MANIFEST)
    if not ran and table.after and "finished" in manifest:
        return  # a finished comparison, only looked at again
    if ran or not table.after:  # again after the last run, unless a finished session already did
        recalibrate_after(table, shared.out / CALIBRATION_FILE, shared.calibrated, echo)
    manifest["calibration"] = manifest_entry(table)
    manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(shared.out / MANIFEST, manifest)


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
                   "seed": PARENT_SEED, **({"checkpoint": prepared.parent.essentials(prepared.tokenizer)}
                                           if prepared.parent is not None else {})},
        "data": prepared.fingerprint(),
        "reference_lines": {**data.reference_losses(prepared.tokenized.train, prepared.validation().batches,
                                                   prepared.tokenizer, prepared.objective, prepared.vocab_size),
                            "how": data.REFERENCE_HOW},  # derived from "data": not an IDENTITY entry of its own
        "train": {"optim": asdict(loop.optim), "eval_points": loop.eval_points, "device": str(loop.device),
                  "recipe": {"name": pair.defaults.recipe.name, "source": pair.defaults.recipe.source},
                  "dtype": config.dtype, "autocast": str(loop.autocast_dtype), "micro_batch": loop.micro_batch,
                  "quick": config.quick, "world_size": distributed.world().size},
        "flop_convention": "1 multiply-add = 2 FLOPs; flops_executed counted by torch FlopCounterMode on one real step",
        "hardware": {**hardware_fingerprint(), **({"rank_devices": list(distributed.world().devices)}
                                                  if distributed.world().distributed else {})},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git_sha": _git_sha(),
        "country": config.country,
        "prices": prices,
    }


IDENTITY = ("growbench_version", "pair", "small", "large", "budget", "seeds", "methods", "parent", "data", "train",
            "versions", "country", "prices", "hardware")
"""The manifest entries that decide a run's results: a run directory's runs all share them."""
NOT_IDENTITY = {"hardware.platform", "hardware.gpu_driver"}  # an OS or driver update does not change results


def _flat(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        return {key: text for name, item in value.items() for key, text in _flat(item, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True, default=str)}


def _joined(old: dict, new: dict) -> dict:
    """The manifest of a run directory being continued or joined: the old one, when every setting that decides
    results is the same; else BenchError naming each difference."""
    before = {key: text for name in IDENTITY for key, text in _flat(old.get(name), f"{name}.").items()}
    after = {key: text for name in IDENTITY for key, text in _flat(new.get(name), f"{name}.").items()}
    differ = [key for key in sorted(set(before) | set(after)) if key not in NOT_IDENTITY
              and before.get(key) != after.get(key)]
    if differ:
        shown = "; ".join(f"{key} {before.get(key, '(none)')} -> {after.get(key, '(none)')}" for key in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise BenchError(f"{new.get('pair')}: the run directory was made with other settings ({shown}{more}); "
                         "use the same ones, --fresh to start it over, or another --out")
    return {**old, "sessions": [*old.get("sessions", []), {"command": new["command"], "started": new["created"]}]}


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
         f"{' + parent' if parent_steps else ''}: {human_duration(total)} (eval not included)")
    default_steps = pair.defaults.budget_steps
    if abs(steps - default_steps) > 0.5:
        echo(f"the pair's default budget ({default_steps} steps) would take {human_duration(default_steps * large_seconds)}"
             f" per run here")


def method_list(text: str) -> list[str]:
    """Comma-separated method names, each once, in order; `all` stands for every registered method that is
    not a variant (no ':' in its name), scratch first: it sets the target."""
    from bench.methods import method_names

    every = sorted((name for name in method_names() if ":" not in name), key=lambda name: name != "scratch")
    names = [name.strip() for item in text.split(",") for name in (every if item.strip() == "all" else [item])]
    return list(dict.fromkeys(name for name in names if name))


def report(run_dir: Path, target: float | None = None):
    """The run directory's report, built and written; a warning (stderr, unless quiet) when τ is not below the
    manifest's strongest context-free reference line."""
    from bench.report import build_report

    built = build_report(run_dir, target)
    warning = data.reference_warning(built.target, built.manifest.get("reference_lines"))
    if warning:
        logs.warn(warning)
    return built


