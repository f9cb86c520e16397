"""Per-run summary and per-method aggregation with intervals: the main table and what the CI gate judges.

The headline estimator (docs/statistics.md, chosen there by its bias and coverage on synthetic curves and its width
on real ones): method seed s is judged against scratch seed s, which trains on the same batches and is scored on
the same validation set. Both runs' eval points are smoothed by a monotone fit (estimators.py); the level τ_s is
scratch seed s's smoothed loss at its budget (or the τ the caller gives); each cost to τ_s is the crossing on the
fit, read in FLOPs and mapped to the run's other cumulative costs (seconds, energy, dollars) at that FLOPs value.
Savings = 1 − method's cost / scratch's cost to the same level. A seed whose fit never gets down to τ_s is not
censored at the budget (which reads a worse seed as ≈ 0, never negative) but judged at its own smoothed loss at the
budget ("match"): both costs to that loss, so a worse method reads negative. Survivor bias is not allowed
(accounting.md, "Savings and statistics"): every finished, paired seed counts, with a Student-t interval on the
mean over seeds (a percentile bootstrap of 3 values is far too narrow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.hardware import ABOVE_PEAK
from bench.report.contention import run_contention
from bench.report.estimators import (
    AT_OWN_LOSS,
    INTERPOLATED,
    REACHED,
    EvalCurve,
    MonotoneFit,
    cost_at_flops,
    monotone_fit,
    scored_rows,
    seed_savings,
)
from bench.report.read import COSTS, COUNTED_STATE, PHASE_COLUMNS, REFERENCE_METHOD, TOTALS, RunData, RunRecord

CI_METHOD = "t over seeds paired with scratch's (monotone fit; a seed short of tau_s at its own loss)"
"""How Report.table's intervals are made (its `ci_method` column); `n_seeds` says over how many seeds."""


# --------------------------------------------------------------------------- intervals


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    return float(stats.t.ppf(0.975, df))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% interval of the mean: mean ± t(0.975, n−1)·s/√n over the non-NaN values; (NaN, NaN) when n < 2."""
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if len(data) < 2:
        return math.nan, math.nan
    half = t_quantile(len(data) - 1) * float(np.std(data, ddof=1)) / math.sqrt(len(data))
    return float(data.mean()) - half, float(data.mean()) + half


def mean_of(values: Sequence[float]) -> float:
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    return float(data.mean()) if len(data) else math.nan


# --------------------------------------------------------------------------- per-run and per-method tables


def _phase_sum(phases: pd.DataFrame | None, column: str) -> float:
    """A phases.csv column summed, or NaN when absent or not measured in every phase."""
    if phases is None or column not in phases.columns or phases[column].isna().any():
        return math.nan
    return float(phases[column].sum())


def _totals(record: RunRecord) -> dict[str, float]:
    """Final cumulative cost per kind: the curve's last row, else the phases' sum."""
    totals = {}
    for key in TOTALS:
        value = math.nan
        if record.curve is not None and key in record.curve.columns and len(record.curve):
            value = float(record.curve[key].iloc[-1])
        totals[key] = value if not math.isnan(value) else _phase_sum(record.phases, PHASE_COLUMNS[key])
    return totals


def phase_labels(phases: pd.DataFrame | None, column: str) -> str:
    """The distinct values of a phases.csv label column (how a number was obtained) joined by '+', 'n/a' when the
    records do not say."""
    if phases is None or column not in phases.columns:
        return "n/a"
    labels = phases[column].dropna().astype(str).unique()
    return "+".join(labels) if len(labels) else "n/a"


def run_mfu(phases: pd.DataFrame | None) -> float:
    """A run's MFU: its phases' `mfu` weighted by their train seconds, Σ mfu·train_s / Σ train_s over the phases that
    trained. By time, because MFU is a rate: a plain mean over phases would let LiGO's few operator steps weigh as
    much as its main phase. Each phase keeps the denominator its collector chose (its devices and peak; a CPU is one
    device against its all-thread measured peak), so with one device and one math per run, as every run has, this
    is exactly Σ flops_executed / (Σ train_s × devices × peak), with no peak or device count re-derived here. NaN
    when a phase that trained has no MFU (no peak known, refused as above the peak, or records older than the
    column): a run is never credited with only the phases that had one; and NaN when a phase's stored MFU is above
    1 (records written before the collector refused those): `run_mfu_source` says why."""
    if phases is None or not {"mfu", "train_s"} <= set(phases.columns) or _above_peak(phases):
        return math.nan
    trained = phases[phases["train_s"] > 0]
    if not len(trained) or trained["mfu"].isna().any():
        return math.nan
    return float((trained["mfu"] * trained["train_s"]).sum() / trained["train_s"].sum())


def _above_peak(phases: pd.DataFrame | None) -> bool:
    """Whether a phase's stored MFU is above 1: the peak it was divided by is no measurement."""
    return phases is not None and "mfu" in phases.columns and bool((phases["mfu"] > 1).any())


def run_mfu_source(phases: pd.DataFrame | None) -> str:
    """The peak sources of a run's phases (`phase_labels`), "unreliable: above the peak (...)" around them where a
    stored MFU is above 1: the report then shows no MFU, and says why."""
    labels = phase_labels(phases, "mfu_peak_source")
    return f"{ABOVE_PEAK} ({labels})" if _above_peak(phases) and ABOVE_PEAK not in labels else labels


def parent_cost_of(data: RunData) -> tuple[dict[str, float], str]:
    """The parent's total cost per kind and where it came from."""
    if data.parent is not None:
        return _totals(data.parent), f"{data.path / 'parent'}"
    known = data.manifest.get("parent")
    if isinstance(known, dict):
        costs = known.get("cost", known)
        if isinstance(costs, dict) and any(isinstance(costs.get(key), (int, float)) for key in TOTALS):
            return {key: float(costs[key]) if isinstance(costs.get(key), (int, float)) else math.nan
                    for key in TOTALS}, "manifest"
    return {key: math.nan for key in TOTALS}, "unknown"


def needs_parent_flag(manifest: dict, method: str) -> bool | None:
    """manifest["methods"][method]["needs_parent"], or None when the manifest does not say."""
    flag = (manifest["methods"].get(method) or {}).get("needs_parent")
    return flag if isinstance(flag, bool) else None


def outside_plain_share(phases: pd.DataFrame | None) -> float:
    """Share of a run's executed FLOPs spent outside plain LARGE training: 1 − Σ flops_executed of the phases
    with `plain_large` / Σ flops_executed of all phases. NaN when phases.csv lacks the flag (older runs) or a
    value, so that an unknown share is never shown as 0."""
    if phases is None or not {"plain_large", "flops_executed"} <= set(phases.columns):
        return math.nan
    flops, plain = phases["flops_executed"], phases["plain_large"]
    if flops.isna().any() or plain.isna().any() or not flops.sum() > 0:
        return math.nan
    return 1 - float(flops[plain.astype(bool)].sum()) / float(flops.sum())


def scratch_levels(data: RunData) -> dict[int, float]:
    """τ_s per scratch seed: its monotone-smoothed loss at its own budget (the main table's targets)."""
    return {seed: fit.loss_at(fit.curve.budget) for seed, (fit, _) in _scratch_partners(data).items()}


def _scratch_partners(data: RunData) -> dict[int, tuple[MonotoneFit, pd.DataFrame]]:
    """Every finished scratch seed's monotone fit and scored eval rows."""
    partners = {}
    for record in data.runs:
        if record.method == REFERENCE_METHOD and record.counted and record.curve is not None and record.seed is not None:
            partners[int(record.seed)] = (monotone_fit(EvalCurve.from_frame(record.curve)), scored_rows(record.curve))
    return partners


def summarise_runs(data: RunData, uses_parent: dict[str, bool], parent_cost: dict[str, float],
                   target: float | None = None) -> pd.DataFrame:
    """One row per (method, seed): state, final loss, the level it is judged at (`target`: τ_s, or the given τ, or
    its own loss), reached / at own loss, both costs to that level, savings sunk and charged, totals, share outside
    plain LARGE, MFU and its peak's source. A finished seed without a finished scratch seed of the same number is
    `paired` False and has no savings."""
    partners = _scratch_partners(data)
    contention = run_contention(data)
    rows = []
    order = list(uses_parent)
    for record in sorted(data.runs, key=lambda record: (order.index(record.method), record.seed or 0)):
        totals = _totals(record)
        partner = partners.get(int(record.seed)) if record.seed is not None else None
        row = {"method": record.method, "seed": record.seed, "state": record.state, "reason": record.reason,
               "folder": record.folder, "needs_parent": uses_parent[record.method],
               "final_val_loss": record.final_val_loss if record.counted else math.nan,
               "perplexity": float(np.exp(record.final_val_loss)) if record.counted else math.nan,
               "paired": bool(record.counted and partner is not None), "target": math.nan,
               "reached": pd.NA, "at_own_loss": pd.NA,
               "energy_method": phase_labels(record.phases, "energy_method"),
               "mfu": run_mfu(record.phases) if record.counted else math.nan,
               "mfu_peak_source": run_mfu_source(record.phases),
               "outside_plain_large": outside_plain_share(record.phases) if record.counted else math.nan,
               **contention[record.folder]}
        judged = None
        if row["paired"]:
            scratch_fit, scratch_rows = partner
            judged = seed_savings(int(record.seed), monotone_fit(EvalCurve.from_frame(record.curve)), scratch_fit,
                                  scratch_fit.curve.budget, level=target)
            row["target"] = judged.level
            row["reached"], row["at_own_loss"] = judged.how == REACHED, judged.how == AT_OWN_LOSS
        elif record.counted and target is not None:  # no scratch seed to pair with: reaching a given τ is still known
            row["target"] = target
            row["reached"] = monotone_fit(EvalCurve.from_frame(record.curve)).crossing(target).label == INTERPOLATED
        for key in COSTS:
            cost = scratch_cost = math.nan
            if judged is not None and math.isfinite(judged.scratch_cost):  # a given τ scratch never reaches: n/a
                cost = cost_at_flops(scored_rows(record.curve), judged.method_cost, key)
                scratch_cost = cost_at_flops(scratch_rows, judged.scratch_cost, key)
            charged = cost + parent_cost[key] if uses_parent[record.method] else cost
            row[f"cost_to_target_{key}"] = cost
            row[f"scratch_cost_to_target_{key}"] = scratch_cost
            row[f"savings_{key}"] = 1 - cost / scratch_cost if scratch_cost > 0 else math.nan
            row[f"savings_charged_{key}"] = 1 - charged / scratch_cost if scratch_cost > 0 else math.nan
        for key in TOTALS:
            row[f"total_{key}"] = totals[key] if record.counted else math.nan
        rows.append(row)
    runs = pd.DataFrame(rows)
    for column in ("reached", "at_own_loss", "contended", "calibration_reliable"):
        runs[column] = runs[column].astype("boolean")
    runs["seed"] = runs["seed"].astype("Int64")
    return runs


def _with_ci(row: dict, name: str, values: pd.Series, every_seed: bool = False) -> None:
    """Mean and t-interval of `values` into row[name], row[name_lo], row[name_hi]. With `every_seed`, a value
    missing on one seed makes the whole mean NaN: averaging the rest would drop seeds (survivor bias)."""
    if every_seed and values.isna().any():
        values = values.iloc[:0]
    row[name] = mean_of(values)
    row[f"{name}_lo"], row[f"{name}_hi"] = t_interval(values)


def aggregate(runs: pd.DataFrame, uses_parent: dict[str, bool]) -> pd.DataFrame:
    """One row per method: seeds done / reached, whether it reached τ (at least half its finished seeds did),
    savings (mean over ALL finished seeds paired with a scratch seed, with a t-interval), final loss and
    perplexity (mean and t-interval), the mean totals at the budget, the share outside plain LARGE and the MFU
    with its peak's source."""
    finished = runs[runs["state"] == COUNTED_STATE]
    has_target = bool(finished["reached"].notna().any())
    contended = finished[finished["contended"].fillna(False).astype(bool)]
    uncalibrated = finished[~finished["calibration_reliable"].fillna(True).astype(bool)]
    rows = []
    for method, needs_parent in uses_parent.items():
        mine = runs[runs["method"] == method]
        done = mine[mine["state"] == COUNTED_STATE]
        n_reached = int(done["reached"].fillna(False).astype(bool).sum())
        row = {"method": method, "needs_parent": needs_parent,
               "n_runs": len(mine), "n_done": len(done), "n_reached": n_reached,
               "reached": bool(len(done) and 2 * n_reached >= len(done)) if has_target else pd.NA,
               "n_seeds": len(done), "ci_method": CI_METHOD,
               "energy_method": _joined(done["energy_method"]), "mfu_peak_source": _joined(done["mfu_peak_source"])}
        paired = done[done["paired"]]
        row["n_paired"] = len(paired)
        for key in COSTS:
            _with_ci(row, f"savings_{key}", paired[f"savings_{key}"], every_seed=True)
            _with_ci(row, f"savings_charged_{key}", paired[f"savings_charged_{key}"], every_seed=True)
        _with_ci(row, "final_val_loss", done["final_val_loss"])
        _with_ci(row, "perplexity", done["perplexity"])
        for key in TOTALS:
            row[f"total_{key}"] = mean_of(done[f"total_{key}"])
        for name in ("outside_plain_large", "mfu"):  # n/a when any seed's records lack it, not a mean of the rest
            row[name] = mean_of(done[name]) if done[name].notna().all() else math.nan
        # wall time, energy and their dollars are unreliable when a run of the method or of scratch was contended
        spoiled = contended[contended["method"].isin([method, REFERENCE_METHOD])]
        row["time_contended"] = bool(len(spoiled))
        row["contended_runs"] = ", ".join(spoiled["folder"])
        # and reference time is no measurement where a run of the method or of scratch used an unreliable calibration
        row["reference_unreliable"] = bool(uncalibrated["method"].isin([method, REFERENCE_METHOD]).any())
        rows.append(row)
    table = pd.DataFrame(rows)
    table["reached"] = table["reached"].astype("boolean")
    return table


def _joined(labels: pd.Series) -> str:
    return "+".join(sorted(set(labels) - {"n/a"})) or "n/a"


def no_savings(row: pd.Series, name: str) -> str | None:
    """Why a method row shows no savings value `name` ('reference', 'no finished run', 'not reached', 'n/a'),
    or None when it has one. Fewer than half the finished seeds at τ is "not reached", whatever the mean."""
    if row["method"] == REFERENCE_METHOD:
        return "reference"
    if row["n_done"] == 0:
        return "no finished run"
    if pd.isna(row["reached"]):
        return "n/a"
    if not row["reached"]:
        return "not reached"
    return "n/a" if pd.isna(row[name]) else None
