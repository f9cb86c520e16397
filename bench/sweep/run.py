"""Running a sweep: plan it, say how long it should take, then one `runner.compare` per point.

Every point is a normal comparison into its own run directory. What the points share is shared by the caches
`compare` already uses: the corpus and tokenizer (~/.cache/growbench), and each parent (cached by its size, steps,
data and optimiser, so the points of one parent pretrain it once). Scratch does not depend on the parent, so the
points of one budget with different parents share scratch's runs: a finished scratch run of the same budget is
copied into a point before its comparison starts (`compare` then skips it as done), unless `share_scratch` is off.

A point is done when its comparison returned; it failed when its comparison raised (the reason is kept in
SWEEP_DIR/status/<point>.json, and its finished runs stay in its directory). `resume` is passed to every point's
comparison, which skips the runs already done.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.errors import BenchError
from bench.logs import human_duration
from bench.records import DONE, FAILED, RUNNING, RunDir, read_json, run_name, write_json
from bench.sweep.points import (
    BudgetSpec,
    Plan,
    Point,
    make_points,
    merge_plans,
    read_plan,
    resolve_budgets,
    select_points,
    write_plan,
)

REFERENCE_METHOD = "scratch"
EVAL_FORWARD_SHARE = 1 / 3  # an eval batch is a forward pass: about a third of a training step
SETUP_SHARE = 0.10  # calibration before and after, model saving and loading: measured ~10% of a quick point


@dataclass
class SweepOptions:
    """What `bench sweep` was asked for (the command line, resolved)."""

    out: Path
    pair: str = "bert-nano:bert-micro"
    methods: list[str] = field(default_factory=lambda: ["scratch", "stackbert", "bert2bert:fpi", "ligo"])
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    budgets: list[BudgetSpec] = field(default_factory=list)
    parent_steps: list[int] | None = None  # None: the pair's default (its quick one with `quick`)
    seeds: int = 3
    quick: bool = True
    points: list[str] | None = None  # run only these points (by name); None = all
    resume: bool = False
    amortize: float = 1.0
    share_scratch: bool = True
    corpus: list[str] | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    lr: float | None = None
    micro_batch: int | None = None  # rows per gradient-accumulation chunk in every point's comparison; None: the pair's
    price_file: str | None = None
    prices: dict[str, float] = field(default_factory=dict)
    country: str = "WLD"
    progress_bar: bool = True


@dataclass
class Planned:
    """A plan with what planning measured here (for the estimate)."""

    plan: Plan
    selected: list[Point]
    large_step_seconds: float
    small_step_seconds: float
    eval_batches: int
    parents_cached: dict[int, bool]


# --------------------------------------------------------------------------- planning


def check_options(options: SweepOptions) -> None:
    """Everything that can be judged without data: BenchError (exit 2) before any work."""
    from bench.methods import make_method
    from bench.runner.prepare import check_micro_batch
    from bench.sizes import parse_pair

    check_micro_batch(options.micro_batch, parse_pair(options.pair).defaults.batch_size)
    for name in options.methods:
        make_method(name, options.method_args.get(name))
    unknown = sorted(set(options.method_args) - set(options.methods))
    if unknown:
        raise BenchError(f"--method-arg for {', '.join(unknown)}: not among --methods")
    if options.seeds < 1:
        raise BenchError("--seeds must be at least 1")
    if not math.isfinite(options.amortize) or options.amortize < 1:
        raise BenchError(f"--amortize {options.amortize:g}: the parent is shared by K ≥ 1 grown models "
                         "(1 = charged in full to each)")
    if not options.budgets:
        raise BenchError("--budgets needs at least one budget")


def plan_sweep(options: SweepOptions, echo: Callable[[str], None] = print) -> Planned:
    """Resolve the budgets (timing LARGE's step here), build the points, and merge with a stored plan."""
    from bench import data
    from bench.runner.parent import parent_key
    from bench.runner.prepare import DataConfig, loop_config, prepare_data, scratch_step
    from bench.sizes import parse_pair

    check_options(options)
    pair = parse_pair(options.pair)
    defaults = pair.defaults
    reference_steps = defaults.quick_budget_steps if options.quick else defaults.budget_steps
    parents = options.parent_steps or [defaults.quick_parent_steps if options.quick else defaults.parent_steps]
    echo(f"preparing data for {pair.name} ...")
    prepared = prepare_data(pair, _data_config(options, defaults, DataConfig))
    loop = loop_config(pair, options.device, options.dtype, options.lr, progress_bar=False,
                       micro_batch=options.micro_batch)  # the points' loop: their step times and parents' cache keys
    large_flops, large_seconds = scratch_step(pair.large, prepared, loop)
    small_seconds = scratch_step(pair.small, prepared, loop)[1]
    budgets = resolve_budgets(options.budgets, reference_steps, large_flops)
    plan = Plan(pair.name, list(options.methods), options.seeds, options.quick, reference_steps, large_flops,
                budgets, parents, options.method_args,
                {"corpus": options.corpus, "tokenizer": options.tokenizer, "fingerprint": prepared.fingerprint()},
                options.amortize, make_points(budgets, parents))
    if (options.out / "sweep.json").exists():
        plan = merge_plans(read_plan(options.out), plan)
    selected = select_points(plan, options.points)
    cached = {steps: RunDir(data.cache_root() / "parents" / parent_key(pair.small, steps, prepared, loop)).is_done()
              for steps in plan.parent_steps}
    eval_batches = len(prepared.validation().batches)
    return Planned(plan, selected, large_seconds, small_seconds, eval_batches, cached)


def _data_config(options: SweepOptions, defaults, data_config_class):
    return data_config_class(options.corpus, options.tokenizer, defaults.seq_len, defaults.batch_size,
                             defaults.vocab_size)


def estimate_seconds(planned: Planned, points: list[Point], out: Path, eval_points: int = 20) -> dict[str, float]:
    """Seconds the points should take here: training (steps × LARGE's measured step time, every method spends the
    same FLOPs), evaluation (eval points × validation batches × a forward pass), pretraining parents not cached
    yet, and setup (calibration, saving) as a share; runs already done (and scratch runs another point of the same
    budget will share) are not counted."""
    plan = planned.plan
    train = evaluate = 0.0
    scratch_budgets: set[str] = set()
    for point in points:
        budget = plan.budget(point.budget)
        steps = budget.flops / plan.large_step_flops
        for method in plan.methods:
            for seed in range(plan.seeds):
                if _run_done(point.path(out), method, seed):
                    continue
                if method == REFERENCE_METHOD:
                    key = f"{point.budget}-s{seed}"
                    if key in scratch_budgets:
                        continue
                    scratch_budgets.add(key)
                train += steps * planned.large_step_seconds
                evaluate += (eval_points + 1) * planned.eval_batches * planned.large_step_seconds * EVAL_FORWARD_SHARE
    parents = sum(steps * planned.small_step_seconds for steps, cached in planned.parents_cached.items()
                  if not cached and any(point.parent_steps == steps for point in points))
    setup = SETUP_SHARE * (train + evaluate)
    return {"train": train, "eval": evaluate, "parents": parents, "setup": setup,
            "total": train + evaluate + parents + setup}


# --------------------------------------------------------------------------- running


def _run_done(point_dir: Path, method: str, seed: int) -> bool:
    status_path = point_dir / "runs" / run_name(method, seed) / "status.json"
    if not status_path.exists():
        return False
    try:
        return read_json(status_path).get("state") == DONE
    except BenchError:
        return False


def check_fresh(points: list[Point], out: Path, resume: bool) -> None:
    """Without `resume`, a point whose directory already holds something is refused before anything runs."""
    if resume:
        return
    busy = [point.name for point in points if point.path(out).is_dir() and any(point.path(out).iterdir())]
    if busy:
        raise BenchError(f"{out}: point(s) {', '.join(busy)} already hold a comparison; pass --resume to continue "
                         "them, --point to run others, or --out for a new sweep")


def share_scratch(plan: Plan, point: Point, out: Path) -> list[str]:
    """Copy finished scratch runs of the same budget (another parent's point) into `point`; their names."""
    copied = []
    if REFERENCE_METHOD not in plan.methods:
        return copied
    donors = [other for other in plan.points if other.budget == point.budget and other.name != point.name]
    for seed in range(plan.seeds):
        name = run_name(REFERENCE_METHOD, seed)
        target = point.path(out) / "runs" / name
        if _run_done(point.path(out), REFERENCE_METHOD, seed) or target.exists():
            continue
        for donor in donors:
            if _run_done(donor.path(out), REFERENCE_METHOD, seed):
                temporary = target.with_name(f".{name}.copy")
                shutil.rmtree(temporary, ignore_errors=True)
                shutil.copytree(donor.path(out) / "runs" / name, temporary,
                                ignore=shutil.ignore_patterns(".*", "checkpoint*"))
                temporary.rename(target)
                copied.append(f"{name} from {donor.name}")
                break
    return copied


def compare_config(plan: Plan, point: Point, options: SweepOptions, resume: bool):
    from bench.runner import CompareConfig, DataConfig, parse_pair

    defaults = parse_pair(plan.pair).defaults
    budget = plan.budget(point.budget)
    data = None
    if options.corpus or options.tokenizer:
        data = _data_config(options, defaults, DataConfig)
    return CompareConfig(
        pair=plan.pair, methods=list(plan.methods), method_args=plan.method_args,
        budget_unit="flops", budget_value=budget.flops if budget.steps is None else None, budget_steps=budget.steps,
        parent_steps=point.parent_steps, seeds=plan.seeds, quick=plan.quick, data=data, out=point.path(options.out),
        resume=resume, device=options.device, dtype=options.dtype, lr=options.lr, micro_batch=options.micro_batch,
        price_file=options.price_file, prices=options.prices, country=options.country,
        progress_bar=options.progress_bar)


def write_point_status(point: Point, out: Path, state: str, **fields) -> None:
    write_json(point.status_path(out), {"point": point.name, "state": state, **fields})


def read_point_status(point: Point, out: Path) -> dict | None:
    path = point.status_path(out)
    if not path.exists():
        return None
    try:
        status = read_json(path)
    except BenchError as error:
        return {"state": FAILED, "reason": f"unreadable status: {error}"}
    return status if isinstance(status, dict) else None


def run_points(planned: Planned, options: SweepOptions, echo: Callable[[str], None] = print,
               compare: Callable | None = None, report: Callable | None = None) -> dict[str, dict]:
    """One comparison per selected point, in order; every point's outcome (also in status/<point>.json).

    A point's comparison raising (bad input for that budget, runs that failed) marks the point failed and the
    sweep goes on; KeyboardInterrupt stops it (the point stays `running`, `--resume` continues it)."""
    if compare is None or report is None:
        from bench import runner

        compare = compare or runner.compare
        report = report or runner.report
    plan, out = planned.plan, options.out
    outcomes = {}
    for index, point in enumerate(planned.selected, 1):
        budget = plan.budget(point.budget)
        copied = share_scratch(plan, point, out) if options.share_scratch else []
        resume = options.resume or bool(copied)
        echo(f"\n=== sweep point {index}/{len(planned.selected)}: {point.name} (budget {budget.label} = "
             f"{budget.flops:.3g} FLOPs ≈ {budget.flops / plan.large_step_flops:.0f} steps of LARGE; parent "
             f"{point.parent_steps} steps) ===")
        for line in copied:
            echo(f"{point.name}: scratch does not depend on the parent: {line} shared")
        started = time.perf_counter()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        write_point_status(point, out, RUNNING, started=stamp, scratch_from=copied)
        try:
            compare(compare_config(plan, point, options, resume), echo=echo)
        except Exception as error:  # a failed point must not lose the others (RunsFailed included)
            if _environment_fault(error):
                write_point_status(point, out, FAILED, started=stamp, seconds=time.perf_counter() - started,
                                   reason=f"{type(error).__name__}: {error}", scratch_from=copied)
                raise  # disk full, out of memory: every later point would fail the same way (exit 3)
            reason = f"{type(error).__name__}: {str(error).strip()}" if not isinstance(error, BenchError) \
                else str(error)
            outcomes[point.name] = {"state": FAILED, "reason": reason, "bad_input": isinstance(error, BenchError)}
            write_point_status(point, out, FAILED, started=stamp, seconds=time.perf_counter() - started,
                               reason=reason, bad_input=isinstance(error, BenchError), scratch_from=copied)
            echo(f"{point.name}: FAILED ({reason.splitlines()[0]})")
            _point_report(point, out, report, echo)
            continue
        seconds = time.perf_counter() - started
        write_point_status(point, out, DONE, started=stamp, seconds=seconds, scratch_from=copied)
        outcomes[point.name] = {"state": DONE, "seconds": seconds}
        _point_report(point, out, report, echo)
        echo(f"{point.name}: done in {human_duration(seconds)}")
    return outcomes


def _environment_fault(error: BaseException) -> bool:
    """Whether the command line counts `error` as a fault of the machine (disk full, out of memory: exit 3)."""
    from bench import errors

    classify = getattr(errors, "exit_code_and_message", None)
    code = getattr(errors, "EXIT_ENVIRONMENT", None)
    if classify is None or code is None:
        return isinstance(error, MemoryError)
    return classify(error)[0] == code


def _point_report(point: Point, out: Path, report: Callable, echo) -> None:
    """The point's own report.md (as `bench report` writes it); a point without finished runs has none."""
    try:
        report(point.path(out))
    except Exception as error:  # noqa: BLE001 — the sweep report says what is wrong with the point
        echo(f"{point.name}: no report of its own ({type(error).__name__}: {str(error).splitlines()[0]})")


def store_plan(planned: Planned, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_plan(out, planned.plan)


def load_plan(out: Path) -> Plan:
    return read_plan(out)


__all__ = ["Planned", "SweepOptions", "check_fresh", "check_options", "estimate_seconds", "load_plan",
           "plan_sweep", "read_point_status", "run_points", "store_plan"]
