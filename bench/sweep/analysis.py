"""From the points' run directories to one table of savings against budget, break-even budgets and amortisation.

Savings are not recomputed here: each point is analysed by `bench.report.analyse` (paired seeds, t-intervals,
parent sunk and charged, "reached" when at least half the seeds reach τ), and this module lays the per-method rows
of the points side by side. What it adds:

- *amortised* savings: the parent's cost shared by K grown models, 1 − (cost to τ + parent / K) / scratch's cost,
  which is, seed by seed, sunk + (charged − sunk) / K (K = 1 is charged in full), with the same t-interval;
- the state of every (point, method): `measured`, `reference` (scratch), `failed` (the point's comparison raised
  before the method's runs finished, or a run of the method or of scratch failed or diverged: the numbers of
  the surviving seeds are not shown, since dropping seeds is survivor bias), `incomplete` (runs missing, e.g. an
  interrupted sweep), `not run`;
- break-even budgets: where a savings curve crosses 0, interpolated linearly in log budget between the two
  measured budgets that bracket the crossing, every crossing listed; a point that did not reach τ does not pay
  (its savings enter as at most 0, so a crossing next to it is a bound too: ≤ or ≥);
- equal-budget quality: where a method's final loss crosses scratch's at the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.records import DIVERGED, DONE, FAILED, RUNNING
from bench.report import analyse
from bench.report.read import COUNTED_STATE, REFERENCE_METHOD
from bench.report.statistics import mean_of, t_interval
from bench.sweep.points import Plan, Point
from bench.sweep.run import read_point_status

MEASURED, REFERENCE, FAILED_STATE, INCOMPLETE, NOT_RUN = "measured", "reference", "failed", "incomplete", "not run"
FAILURES = (FAILED, DIVERGED)  # run states that make a (point, method) failed; running or not started: incomplete
SAVINGS_KEYS = {"flops": "FLOPs", "train_s": "wall time", "reference_s": "reference time"}
BASES = {"sunk": "parent sunk", "charged": "parent charged", "amortized": "parent amortised"}


def savings_column(key: str, basis: str) -> str:
    """The sweep table's column of savings of cost `key` with the parent `basis` (sunk, charged, amortized)."""
    return {"sunk": f"savings_{key}", "charged": f"savings_charged_{key}", "amortized": f"savings_amortized_{key}"}[
        basis]


# --------------------------------------------------------------------------- one table for the whole sweep


@dataclass
class Sweep:
    """The sweep analysed: one row per (point, method), the points' own state, and notes."""

    root: Path
    plan: Plan
    rows: pd.DataFrame
    points: pd.DataFrame  # one row per point: state, reason, seconds, shared scratch, directory
    amortize: float
    manifests: dict[str, dict] = field(default_factory=dict)
    parent_flops: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _problems(runs: pd.DataFrame, method: str, seeds: int) -> tuple[list[str], list[str]]:
    """The method's runs that failed or diverged ('ligo-s1 diverged (loss became NaN)'), and those that did not
    finish for another reason or are missing ('ligo-s2 running', 'ligo-s2 not started', 'ligo-s2 missing')."""
    mine = runs[runs["method"] == method]
    failures, unfinished = [], []
    for _, run in mine.iterrows():
        if run["state"] == COUNTED_STATE:
            continue
        reason = run["reason"] if isinstance(run["reason"], str) and run["reason"] else ""
        text = f"{run['folder']} {run['state']}" + (f" ({reason})" if reason else "")
        (failures if run["state"] in FAILURES else unfinished).append(text)
    present = {int(seed) for seed in mine["seed"].dropna()}
    unfinished += [f"{method} seed {seed} missing" for seed in range(seeds) if seed not in present]
    return failures, unfinished


def _amortized(runs: pd.DataFrame, method: str, key: str, k: float) -> tuple[float, float, float]:
    """Mean and t-interval over the method's finished seeds of sunk + (charged − sunk) / K; NaN when any seed lacks
    a value (as the report does: averaging the rest would drop seeds)."""
    done = runs[(runs["method"] == method) & (runs["state"] == COUNTED_STATE)]
    sunk, charged = done[f"savings_{key}"].astype(float), done[f"savings_charged_{key}"].astype(float)
    values = sunk + (charged - sunk) / k
    if values.isna().any() or not len(values):
        return math.nan, math.nan, math.nan
    low, high = t_interval(values)
    return mean_of(values), low, high


def _point_row(plan: Plan, point: Point, manifest: dict | None) -> dict:
    budget = plan.budget(point.budget)
    flops = budget.flops
    if manifest and isinstance(manifest.get("budget"), dict) and isinstance(manifest["budget"].get("flops"),
                                                                            (int, float)):
        flops = float(manifest["budget"]["flops"])
    return {"point": point.name, "budget": budget.label, "budget_spec": budget.spec, "parent_steps": point.parent_steps,
            "budget_flops": flops, "budget_steps": flops / plan.large_step_flops,
            "budget_ratio": flops / plan.reference_flops}


def _empty_values(row: dict) -> dict:
    row.update({"n_runs": 0, "n_done": 0, "n_reached": 0, "reached": pd.NA, "target": math.nan,
                "time_contended": pd.NA})
    for key in SAVINGS_KEYS:
        for basis in BASES:
            name = savings_column(key, basis)
            row[name] = row[f"{name}_lo"] = row[f"{name}_hi"] = math.nan
    for name in ("final_val_loss", "final_val_loss_lo", "final_val_loss_hi", "scratch_final_val_loss",
                 "loss_vs_scratch"):
        row[name] = math.nan
    return row


def collect(plan: Plan, root: Path, amortize: float | None = None) -> Sweep:
    """Every point of the plan analysed (`bench.report.analyse`), as one row per (point, method)."""
    root = Path(root)
    k = plan.amortize if amortize is None else amortize
    if not math.isfinite(k) or k < 1:
        raise BenchError(f"--amortize {k:g}: the parent is shared by K ≥ 1 grown models (1 = charged in full)")
    rows, point_rows, manifests, parent_flops, notes = [], [], {}, {}, []
    for point in plan.points:
        status = read_point_status(point, root) or {}
        folder = point.path(root)
        report, error = None, None
        if (folder / "manifest.json").exists():
            try:
                report = analyse(folder)
            except BenchError as problem:
                error = str(problem)
        elif folder.is_dir() and any(folder.iterdir()):
            error = "no manifest.json"
        manifest = report.manifest if report is not None else None
        if manifest is not None:
            manifests[point.name] = manifest
            if not math.isnan(report.parent_cost["flops"]):
                parent_flops.setdefault(point.parent_steps, report.parent_cost["flops"])
        state = status.get("state") or (NOT_RUN if not folder.exists() else INCOMPLETE)
        reason = status.get("reason") or error
        if state == RUNNING:
            state, reason = INCOMPLETE, reason or "its comparison did not finish (interrupted?)"
        if state == DONE and report is None:
            state, reason = FAILED, reason or "no readable run directory"
        point_row = {"point": point.name, "state": state, "reason": reason, "seconds": status.get("seconds"),
                     "scratch_from": "; ".join(status.get("scratch_from") or []), "directory": f"points/{point.name}"}
        point_rows.append(point_row)
        first_row = len(rows)
        scratch_problems, scratch_missing = ([], []) if report is None else \
            _problems(report.runs, REFERENCE_METHOD, plan.seeds)
        for method in plan.methods:
            row = _empty_values({**_point_row(plan, point, manifest), "method": method})
            if report is None:
                row["state"] = FAILED_STATE if state == FAILED else (NOT_RUN if state == NOT_RUN else INCOMPLETE)
                row["reason"] = reason
                rows.append(row)
                continue
            problems, missing = _problems(report.runs, method, plan.seeds)
            if method != REFERENCE_METHOD:
                problems += [f"scratch: {problem}" for problem in scratch_problems]
                missing += scratch_missing
            if problems:
                row["state"], row["reason"] = FAILED_STATE, "; ".join(problems)
            elif missing:
                failed_point = state == FAILED
                row["state"] = FAILED_STATE if failed_point else INCOMPLETE
                row["reason"] = (reason if failed_point else None) or "not finished: " + "; ".join(missing)
            else:
                row["state"], row["reason"] = (REFERENCE if method == REFERENCE_METHOD else MEASURED), None
                _fill(row, report, method, k)
            rows.append(row)
        states = {row["state"] for row in rows[first_row:]}
        if report is not None and states <= {MEASURED, REFERENCE}:
            point_row["state"] = DONE  # also a point run by hand (`bench compare --out points/<name>`)
        elif report is not None and FAILED_STATE in states and point_row["state"] == DONE:
            point_row["state"] = "done, with failed runs"
    frame = pd.DataFrame(rows)
    frame["reached"] = frame["reached"].astype("boolean")
    frame["time_contended"] = frame["time_contended"].astype("boolean")
    frame.insert(frame.columns.get_loc("savings_amortized_flops"), "amortize", k)
    return Sweep(root, plan, frame, pd.DataFrame(point_rows), k, manifests, parent_flops, notes)


def _fill(row: dict, report, method: str, k: float) -> None:
    table = report.table[report.table["method"] == method]
    if not len(table):
        return
    entry = table.iloc[0]
    row.update({"n_runs": int(entry["n_runs"]), "n_done": int(entry["n_done"]), "n_reached": int(entry["n_reached"]),
                "reached": entry["reached"], "target": report.target, "time_contended": bool(entry["time_contended"])})
    for key in SAVINGS_KEYS:
        for basis in ("sunk", "charged"):
            name = savings_column(key, basis)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = entry[name], entry[f"{name}_lo"], entry[f"{name}_hi"]
        name = savings_column(key, "amortized")
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _amortized(report.runs, method, key, k)
    row["final_val_loss"] = entry["final_val_loss"]
    row["final_val_loss_lo"], row["final_val_loss_hi"] = entry["final_val_loss_lo"], entry["final_val_loss_hi"]
    scratch = report.table[report.table["method"] == REFERENCE_METHOD]
    if len(scratch):
        row["scratch_final_val_loss"] = scratch.iloc[0]["final_val_loss"]
        row["loss_vs_scratch"] = row["scratch_final_val_loss"] - row["final_val_loss"]


# --------------------------------------------------------------------------- break-even


@dataclass
class Crossing:
    """Where a curve crosses 0 between two measured budgets (FLOPs), interpolated in log budget."""

    low: float
    high: float
    at: float
    direction: str  # "stops" (pays below, not above) | "starts" (pays above, not below)
    bound: str = "≈"  # "≈"; "≤" / "≥" when the non-paying side did not reach τ (its savings enter as at most 0)


@dataclass
class BreakEven:
    """The crossings of one savings curve over the measured budgets, and what to say when there is none."""

    kind: str  # "crossing" | "saves everywhere" | "saves nowhere" | "no data"
    crossings: list[Crossing]
    budgets: list[float]
    values: list[float]
    paying: list[bool]
    hints: list[str] = field(default_factory=list)  # "beyond the largest", "below the smallest"
    band: tuple[float, float] | None = None  # where the interval's edges cross (FLOPs; ±inf: open), see band_of


def _interpolate(x0: float, x1: float, s0: float, s1: float) -> float:
    """The budget between x0 and x1 (FLOPs) where the line through (log x0, s0), (log x1, s1) is 0."""
    fraction = s0 / (s0 - s1) if s0 != s1 else 0.5
    return float(math.exp(math.log(x0) + fraction * (math.log(x1) - math.log(x0))))


def break_even(budgets: Sequence[float], values: Sequence[float], reached: Sequence[bool | None] | None = None
               ) -> BreakEven:
    """Crossings of 0 of a savings curve measured at `budgets` (any order; NaN values are skipped).

    A point pays when its savings are > 0 and it reached τ (`reached` not False). A point that did not reach τ
    does not pay, and enters the interpolation with min(savings, 0): fewer than half its seeds got there, so the
    crossing next to it is an upper bound (≤) when the curve stops paying there, a lower bound (≥) when it
    starts paying after it."""
    reached = list(reached) if reached is not None else [None] * len(values)
    points = sorted((float(b), float(v), r) for b, v, r in zip(budgets, values, reached, strict=True)
                    if not (v is None or pd.isna(v)))
    if not points:
        return BreakEven("no data", [], [], [], [])
    xs = [b for b, _, _ in points]
    short = [r is False for _, _, r in points]
    ys = [min(v, 0.0) if c else v for (_, v, _), c in zip(points, short, strict=True)]
    paying = [y > 0 and not c for y, c in zip(ys, short, strict=True)]
    crossings = []
    for i in range(len(xs) - 1):
        if paying[i] == paying[i + 1]:
            continue
        direction = "stops" if paying[i] else "starts"
        bound = "≈"
        if direction == "stops" and short[i + 1]:
            bound = "≤"
        elif direction == "starts" and short[i]:
            bound = "≥"
        crossings.append(Crossing(xs[i], xs[i + 1], _interpolate(xs[i], xs[i + 1], ys[i], ys[i + 1]), direction,
                                  bound))
    result = BreakEven("crossing" if crossings else ("saves everywhere" if all(paying) else "saves nowhere"),
                       crossings, xs, ys, paying)
    if not crossings and len(xs) >= 2:
        falling_top, rising_bottom = ys[-1] < ys[-2], ys[1] > ys[0]
        if all(paying):
            if falling_top:
                result.hints.append("beyond the largest")
            if rising_bottom:
                result.hints.append("below the smallest")
        else:
            if ys[-1] > ys[-2]:
                result.hints.append("beyond the largest")
            if ys[1] < ys[0]:
                result.hints.append("below the smallest")
    return result


def band_of(mean: BreakEven, low: BreakEven, high: BreakEven) -> tuple[float, float] | None:
    """Where the 95% band's two edges cross 0, (earliest, latest) in FLOPs, when the mean curve crosses once and each
    edge at most once the same way; an edge that does not cross gives an open end: −inf (below the smallest budget
    measured) or +inf (beyond the largest). None otherwise (no interval, or edges crossing differently)."""
    if len(mean.crossings) != 1 or low.kind == "no data" or high.kind == "no data":
        return None
    direction = mean.crossings[0].direction
    ends = []
    for edge in (low, high):
        if len(edge.crossings) > 1 or any(crossing.direction != direction for crossing in edge.crossings):
            return None
        if edge.crossings:
            ends.append(edge.crossings[0].at)
        elif (edge.kind == "saves everywhere") == (direction == "stops"):
            ends.append(math.inf)
        else:
            ends.append(-math.inf)
    return min(ends), max(ends)


@dataclass
class BreakEvenRow:
    method: str
    parent_steps: int
    basis: str  # "flops_sunk", "train_s_charged", "quality", ...
    result: BreakEven
    skipped: list[str]  # points not measured (failed, incomplete, not run): "2x failed"
    contended: list[str]  # measured points whose wall-time savings ran on a busy machine (wall bases only)


def break_evens(sweep: Sweep, amortized: bool | None = None) -> list[BreakEvenRow]:
    """Every growth method's break-even per parent, for FLOPs and wall time, parent sunk / charged / amortised
    (amortised only when K ≠ 1 unless asked), and the equal-budget quality crossing ('quality')."""
    rows = sweep.rows
    amortized = sweep.amortize != 1 if amortized is None else amortized
    bases = ["sunk", "charged", *(["amortized"] if amortized else [])]
    out = []
    for parent in sweep.plan.parent_steps:
        for method in sweep.plan.methods:
            if method == REFERENCE_METHOD:
                continue
            mine = rows[(rows["method"] == method) & (rows["parent_steps"] == parent)].sort_values("budget_flops")
            measured = mine[mine["state"] == MEASURED]
            skipped = [f"{row['budget']} {row['state']}" for _, row in mine.iterrows() if row["state"] != MEASURED]
            budgets = measured["budget_flops"].tolist()
            reached = [None if pd.isna(value) else bool(value) for value in measured["reached"]]
            for key in ("flops", "train_s"):
                contended = [] if key == "flops" else [row["budget"] for _, row in measured.iterrows()
                                                       if row["time_contended"] is True]
                for basis in bases:
                    name = savings_column(key, basis)
                    mean = break_even(budgets, measured[name].tolist(), reached)
                    mean.band = band_of(mean, break_even(budgets, measured[f"{name}_lo"].tolist(), reached),
                                        break_even(budgets, measured[f"{name}_hi"].tolist(), reached))
                    out.append(BreakEvenRow(method, parent, f"{key}_{basis}", mean, skipped, contended))
            quality = break_even(budgets, measured["loss_vs_scratch"].tolist())
            out.append(BreakEvenRow(method, parent, "quality", quality, skipped, []))
    return out


__all__ = ["BASES", "FAILED_STATE", "INCOMPLETE", "MEASURED", "NOT_RUN", "REFERENCE", "SAVINGS_KEYS", "BreakEven",
           "BreakEvenRow", "Crossing", "Sweep", "band_of", "break_even", "break_evens", "collect", "savings_column"]
