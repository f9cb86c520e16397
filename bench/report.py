"""Savings, statistics, tables, plots and report.md, built from a run directory alone.

Reporting reads RUN_DIR (manifest.json, runs/*/{curve,phases}.csv + status.json, parent/); it never
re-runs training. Conventions (see accounting.md, "Savings and statistics"):

- target τ: mean over seeds of scratch's final validation loss, unless the caller gives one.
- cost to target: the cumulative cost at the FIRST eval point whose validation loss is ≤ τ, linearly
  interpolated between that point and the one before it (a run already at τ on its first eval point
  costs that point's cost).
- savings = 1 − cost_method(τ) / cost_scratch(budget), cost_scratch(budget) = mean over scratch seeds
  of the final cumulative cost. "Not reached" is its own result (`reached` is False, savings NaN) and
  is printed as such; a cost that was not measured is NaN and printed "n/a", never 0.
- parent cost, *sunk* (the papers' convention) and *charged* (the parent's whole pretraining cost is
  added to the cost to target of every method that uses a parent). Which methods use one: the flag
  `needs_parent` in manifest["methods"][m]; KI counts as one (its teacher is the parent). Without the
  flag, every method but scratch is assumed to use the parent, and the report says so.
- a method's savings are the mean over the seeds that reached τ (fairness rule 5), with the share of
  seeds that reached shown next to it; with ≥ 2 such seeds also a seeded bootstrap 95% interval. A
  method counts as reaching τ (`reached` in the table, judged by the gate) when at least half of its
  finished seeds do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.errors import BenchError
from bench.records import DONE, atomic_path, read_json

COSTS: dict[str, str] = {
    "flops": "FLOPs",
    "train_s": "train time",
    "reference_s": "reference time",
    "energy_kwh": "energy",
    "cost_cloud_usd": "cloud $",
    "cost_energy_usd": "energy $",
}
"""The costs savings are computed for (curve.csv column -> what it is called in the report). Dollars come two
ways (accounting.md): cloud = device-hours × price; energy = kWh × PUE × $/kWh for owned hardware."""

TOTALS = (*COSTS, "co2_kg")
PHASE_COLUMNS = {"flops": "flops_executed", "train_s": "train_s", "reference_s": "reference_s",
                 "energy_kwh": "energy_kwh", "cost_cloud_usd": "cost_cloud_usd", "cost_energy_usd": "cost_energy_usd",
                 "co2_kg": "co2_kg"}
"""Where each total lives in phases.csv (used when the curve lacks the column, and for the bill)."""

LABEL_COLUMNS = {"flops_convention": "FLOPs", "device_kind": "device-hours", "energy_method": "energy",
                 "carbon_source": "carbon intensity", "cost_cloud_price": "cloud price",
                 "cost_energy_price": "electricity price"}
"""phases.csv columns that say how a number was obtained; report.md lists every value found."""

CURVE_REQUIRED = ("step", "tokens", "flops", "train_s", "phase", "train_loss", "val_loss")
NUMERIC_COLUMNS = {"val_loss", "train_loss", *TOTALS, *PHASE_COLUMNS.values()}
COUNTED_STATE = DONE  # only finished runs count; the others are listed with their state
REFERENCE_METHOD = "scratch"  # the baseline of every saving; its own "savings" only show its seed spread

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

PAPER_SAVINGS: dict[str, dict[str, tuple[float, float]]] = {
    "bert-small:bert-base": {
        "stackbert": (34.1, 33.3),
        "mslt": (34.9, 30.0),
        "ki": (-5.7, -13.9),
        "bert2bert": (29.0, 25.1),
        "ligo": (44.7, 40.7),
    },
}
"""Published savings in % (FLOPs, wall time), parent cost sunk. Source: Wang et al., "Learning to Grow
Pretrained Models for Efficient Transformer Training" (LiGO, ICLR 2023), Table 1, BERT-Small -> BERT-Base.
Matched by exact method name only (variants such as bert2bert:fpi are not the paper's setting)."""

METHOD_COLOURS = {
    "scratch": "#555555",
    "stackbert": "#1f77b4",
    "stackbert:progressive": "#17becf",
    "mslt": "#2ca02c",
    "bert2bert": "#ff7f0e",
    "bert2bert:fpi": "#bcbd22",
    "ki": "#9467bd",
    "ligo": "#d62728",
}
SPARE_COLOURS = ("#8c564b", "#e377c2", "#7f7f7f", "#aec7e8", "#98df8a", "#ffbb78", "#c5b0d5", "#f7b6d2")
PARENT_COLOUR = "#000000"
PLOT_FILES = ("loss_vs_flops.png", "loss_vs_time.png", "savings.png", "bill.png", "energy.png")


# --------------------------------------------------------------------------- reading the run directory


@dataclass
class RunRecord:
    """One run folder (or the parent folder) as stored."""

    method: str
    seed: int | None
    state: str
    reason: str | None
    folder: str
    curve: pd.DataFrame | None
    phases: pd.DataFrame | None
    final_val_loss: float

    @property
    def counted(self) -> bool:
        return self.state == COUNTED_STATE


@dataclass
class RunData:
    path: Path
    manifest: dict
    runs: list[RunRecord]
    parent: RunRecord | None


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise BenchError(f"{path} must hold a JSON object")
    return data


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise BenchError(f"{path} is not a readable CSV file ({error})") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(missing)}")
    for column in NUMERIC_COLUMNS & set(frame.columns):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _read_record(folder: Path, method_from_folder: dict[str, str]) -> RunRecord:
    status_path = folder / "status.json"
    status = _read_object(status_path) if status_path.exists() else {"state": "unknown", "reason": "no status.json"}
    stem, _, seed_text = folder.name.rpartition("-s")
    method = status.get("method") or method_from_folder.get(stem, stem)
    seed = status.get("seed", int(seed_text) if seed_text.isdigit() else None)
    state = str(status.get("state", "unknown"))
    curve_path, phases_path = folder / "curve.csv", folder / "phases.csv"
    curve = _read_csv(curve_path, CURVE_REQUIRED) if curve_path.exists() else None
    phases = _read_csv(phases_path, ("phase",)) if phases_path.exists() else None
    if state == COUNTED_STATE and (curve is None or curve["val_loss"].notna().sum() == 0):
        raise BenchError(f"run {folder} is marked done but has no curve.csv with validation losses")
    final = status.get("final_val_loss")
    if not isinstance(final, (int, float)) and curve is not None and curve["val_loss"].notna().any():
        final = curve["val_loss"].dropna().iloc[-1]
    return RunRecord(method, seed, state, status.get("reason"), folder.name, curve, phases,
                     float(final) if isinstance(final, (int, float, np.floating)) else math.nan)


def read_run_dir(run_dir: Path) -> RunData:
    """The run directory as records; BenchError when it is missing or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"run directory {run_dir} does not exist")
    manifest = _read_object(run_dir / "manifest.json")
    for key in ("pair", "budget", "methods"):
        if key not in manifest:
            raise BenchError(f"manifest {run_dir / 'manifest.json'} lacks {key!r}")
    if not isinstance(manifest["methods"], dict):
        raise BenchError(f"manifest {run_dir / 'manifest.json'}: 'methods' must map method names to settings")
    runs_dir = run_dir / "runs"
    if not runs_dir.is_dir():
        raise BenchError(f"run directory {run_dir} has no runs/ folder")
    method_from_folder = {name.replace(":", "_"): name for name in manifest["methods"]}
    runs = [_read_record(folder, method_from_folder) for folder in sorted(runs_dir.iterdir()) if folder.is_dir()]
    if not runs:
        raise BenchError(f"run directory {run_dir} has no runs yet (runs/ is empty)")
    parent = _read_record(run_dir / "parent", {}) if (run_dir / "parent").is_dir() else None
    if parent is not None:
        parent.method, parent.seed = "parent", None
    return RunData(run_dir, manifest, runs, parent)


# --------------------------------------------------------------------------- crossing point and statistics


def crossing_position(val_loss: Sequence[float], target: float) -> float | None:
    """Fractional eval-point index where the loss first reaches `target` (≤), or None if it never does.

    Between the last point above τ and the first at or below it the loss is taken as linear. The
    losses are the scored eval points only (the caller drops rows without a validation loss)."""
    losses = np.asarray(val_loss, dtype=float)
    hits = np.flatnonzero(losses <= target)
    if len(hits) == 0:
        return None
    first = int(hits[0])
    if first == 0:
        return 0.0
    above = losses[first - 1]
    return first - 1 + (above - target) / (above - losses[first])


def value_at(values: Sequence[float], position: float) -> float:
    """Linear interpolation of `values` at a fractional index (NaN when a bracketing value is NaN)."""
    values = np.asarray(values, dtype=float)
    below = math.floor(position)
    if below == position:
        return float(values[below])
    fraction = position - below
    return float(values[below] + fraction * (values[below + 1] - values[below]))


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds; (NaN, NaN) with fewer than 2 values.
    The resampling is seeded, so the same values always give the same interval."""
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if len(data) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _mean(values: Sequence[float]) -> float:
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


def _energy_method(record: RunRecord) -> str:
    if record.phases is None or "energy_method" not in record.phases.columns:
        return "n/a"
    modes = record.phases["energy_method"].dropna().astype(str).unique()
    return "+".join(modes) if len(modes) else "n/a"


def _parent_cost(data: RunData) -> tuple[dict[str, float], str]:
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


def _needs_parent(manifest: dict, method: str) -> bool | None:
    """manifest["methods"][method]["needs_parent"], or None when the manifest does not say."""
    flag = (manifest["methods"].get(method) or {}).get("needs_parent")
    return flag if isinstance(flag, bool) else None


def _method_order(data: RunData) -> list[str]:
    """Scratch first, then the manifest's order, then methods found only on disk."""
    seen = list(dict.fromkeys([REFERENCE_METHOD, *data.manifest["methods"]]))
    seen = [method for method in seen if method in data.manifest["methods"]]
    return seen + sorted({record.method for record in data.runs} - set(seen))


def summarise_runs(data: RunData, target: float, uses_parent: dict[str, bool],
                   parent_cost: dict[str, float]) -> pd.DataFrame:
    """One row per (method, seed): state, final loss, cost to target, savings sunk and charged, totals."""
    scratch = [_totals(record) for record in data.runs if record.method == REFERENCE_METHOD and record.counted]
    scratch_budget = {key: _mean([totals[key] for totals in scratch]) for key in COSTS}
    rows = []
    order = list(uses_parent)
    for record in sorted(data.runs, key=lambda record: (order.index(record.method), record.seed or 0)):
        totals = _totals(record)
        row = {"method": record.method, "seed": record.seed, "state": record.state, "reason": record.reason,
               "folder": record.folder, "needs_parent": uses_parent[record.method],
               "final_val_loss": record.final_val_loss if record.counted else math.nan,
               "perplexity": float(np.exp(record.final_val_loss)) if record.counted else math.nan,
               "reached": pd.NA, "energy_method": _energy_method(record)}
        position = None
        if record.counted and not math.isnan(target):
            scored = record.curve.dropna(subset=["val_loss"])
            position = crossing_position(scored["val_loss"], target)
            row["reached"] = position is not None
        for key in COSTS:
            cost = math.nan
            if position is not None and key in scored.columns:
                cost = value_at(scored[key], position)
            charged = cost + parent_cost[key] if uses_parent[record.method] else cost
            row[f"cost_to_target_{key}"] = cost
            row[f"savings_{key}"] = 1 - cost / scratch_budget[key] if scratch_budget[key] > 0 else math.nan
            row[f"savings_charged_{key}"] = 1 - charged / scratch_budget[key] if scratch_budget[key] > 0 else math.nan
        for key in TOTALS:
            row[f"total_{key}"] = totals[key] if record.counted else math.nan
        rows.append(row)
    runs = pd.DataFrame(rows)
    runs["reached"] = runs["reached"].astype("boolean")
    runs["seed"] = runs["seed"].astype("Int64")
    return runs


def _with_ci(row: dict, name: str, values: Sequence[float]) -> None:
    row[name] = _mean(values)
    row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_ci(values)


def aggregate(runs: pd.DataFrame, uses_parent: dict[str, bool]) -> pd.DataFrame:
    """One row per method: seeds done / reached, savings (mean over seeds that reached τ, with a bootstrap
    95% interval), final loss and perplexity (mean and interval), and the mean totals at the budget."""
    rows = []
    for method, needs_parent in uses_parent.items():
        mine = runs[runs["method"] == method]
        done = mine[mine["state"] == COUNTED_STATE]
        reached = done[done["reached"].fillna(False).astype(bool)]
        row = {"method": method, "needs_parent": needs_parent,
               "n_runs": len(mine), "n_done": len(done), "n_reached": len(reached),
               "reached": bool(len(done) and 2 * len(reached) >= len(done)) if done["reached"].notna().any()
               else pd.NA,
               "energy_method": "+".join(sorted(set(done["energy_method"]) - {"n/a"})) or "n/a"}
        for key in COSTS:
            _with_ci(row, f"savings_{key}", reached[f"savings_{key}"])
            _with_ci(row, f"savings_charged_{key}", reached[f"savings_charged_{key}"])
        _with_ci(row, "final_val_loss", done["final_val_loss"])
        _with_ci(row, "perplexity", done["perplexity"])
        for key in TOTALS:
            row[f"total_{key}"] = _mean(done[f"total_{key}"])
        rows.append(row)
    table = pd.DataFrame(rows)
    table["reached"] = table["reached"].astype("boolean")
    return table


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    run_dir: Path
    manifest: dict
    target: float
    target_source: str
    parent_cost: dict[str, float]
    parent_source: str
    runs: pd.DataFrame  # one row per (method, seed), also written as summary.csv / summary.parquet
    table: pd.DataFrame  # one row per method
    data: RunData
    notes: list[str] = field(default_factory=list)
    text: str = ""  # the main table for the terminal
    files: list[Path] = field(default_factory=list)


def analyse(run_dir: Path, target: float | None = None) -> Report:
    """Tables and statistics of a run directory, without writing anything (the gate uses this)."""
    data = read_run_dir(run_dir)
    methods = _method_order(data)
    notes = []
    scratch_losses = [record.final_val_loss for record in data.runs
                      if record.method == REFERENCE_METHOD and record.counted]
    if not scratch_losses:
        notes.append("No finished scratch run: savings need scratch's cost at the budget, so none are given.")
    if target is not None:
        target_source = "given"
    elif scratch_losses:
        target = _mean(scratch_losses)
        target_source = f"mean final validation loss of scratch over {len(scratch_losses)} seed(s)"
    else:
        target, target_source = math.nan, "none"
    unflagged = [method for method in methods if _needs_parent(data.manifest, method) is None]
    uses_parent = {method: _needs_parent(data.manifest, method) is not False and method != REFERENCE_METHOD
                   for method in methods}
    if unflagged:
        notes.append(f"The manifest does not say whether {', '.join(unflagged)} use(s) the parent; assumed: "
                     "every method but scratch does.")
    parent_cost, parent_source = _parent_cost(data)
    if any(uses_parent.values()) and math.isnan(parent_cost["flops"]):
        notes.append("The parent's cost is unknown (no parent/ folder, none in the manifest): charged savings are n/a.")
    for record in data.runs:
        if not record.counted:
            notes.append(f"{record.folder}: {record.state}" + (f" ({record.reason})" if record.reason else "")
                         + " — not counted.")
    runs = summarise_runs(data, float(target), uses_parent, parent_cost)
    table = aggregate(runs, uses_parent)
    report = Report(Path(run_dir), data.manifest, float(target), target_source, parent_cost, parent_source,
                    runs, table, data, notes)
    report.text = (f"target val loss τ = {_number(report.target, 4)} ({report.target_source}); savings = 1 − cost "
                   "to τ / scratch's cost at the budget, mean [95% bootstrap CI] over seeds\n\n"
                   + format_main_table(report, markdown=False))
    return report


def build_report(run_dir: Path, target: float | None = None, out: Path | None = None) -> Report:
    """Write summary.csv, summary.parquet, report.md and plots/*.png into `out` (default: the run directory)."""
    report = analyse(run_dir, target)
    out = Path(out) if out is not None else Path(run_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    report.files.append(_atomic(out / "summary.csv", lambda path: report.runs.to_csv(path, index=False)))
    report.files.append(_atomic(out / "summary.parquet", lambda path: report.runs.to_parquet(path, index=False)))
    colours = method_colours(report.table["method"])
    plotters = (
        lambda: plot_curves(report, "flops", "cumulative executed FLOPs", colours),
        lambda: plot_curves(report, "train_s", "cumulative train time (s)", colours),
        lambda: plot_savings(report, colours),
        lambda: plot_bill(report),
        lambda: plot_energy(report, colours),
    )
    for name, plotter in zip(PLOT_FILES, plotters, strict=True):
        figure = plotter()
        report.files.append(_atomic(out / "plots" / name, lambda path, fig=figure: fig.savefig(
            path, format="png", dpi=110)))
    report.files.append(_atomic(out / "report.md", lambda path: Path(path).write_text(format_markdown(report))))
    return report


def _atomic(path: Path, write) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    with atomic_path(path) as temporary:
        write(temporary)
    return path


# --------------------------------------------------------------------------- formatting


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}g}"


def _no_savings(row: pd.Series, name: str) -> str | None:
    """Why a method row shows no savings value `name` ('reference', 'no finished run', 'not reached', 'n/a'),
    or None when it has one."""
    if row["method"] == REFERENCE_METHOD:
        return "reference"
    if row["n_done"] == 0:
        return "no finished run"
    if pd.isna(row["reached"]):
        return "n/a"
    if row["n_reached"] == 0:
        return "not reached"
    return "n/a" if pd.isna(row[name]) else None


def _savings_cell(row: pd.Series, name: str) -> str:
    """'34.1% [30.2, 38.0]', 'not reached', 'n/a'; '(2/3 reached)' when only some seeds reached τ."""
    missing = _no_savings(row, name)
    if missing:
        return missing
    text = f"{100 * row[name]:.1f}%"
    if not pd.isna(row[f"{name}_lo"]):
        text += f" [{100 * row[f'{name}_lo']:.1f}, {100 * row[f'{name}_hi']:.1f}]"
    if row["n_reached"] < row["n_done"]:
        text += f" ({row['n_reached']}/{row['n_done']} reached)"
    return text


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def format_main_table(report: Report, markdown: bool) -> str:
    """Savings (sunk, charged) with intervals, final loss, and the bill at the budget, one row per method
    plus the parent's own row."""
    headers = ["method", "runs", "FLOPs saved", "wall saved", "FLOPs saved (parent charged)", "val loss", "ppl",
               "FLOPs", "train h", "kWh", "kg CO2", "$ cloud", "$ energy"]
    rows = []
    for _, row in report.table.iterrows():
        rows.append([row["method"], f"{row['n_done']}/{row['n_runs']} done",
                     _savings_cell(row, "savings_flops"), _savings_cell(row, "savings_train_s"),
                     _savings_cell(row, "savings_charged_flops"),
                     _number(row["final_val_loss"], 4), _number(row["perplexity"], 4),
                     _number(row["total_flops"]), _number(row["total_train_s"] / 3600),
                     _number(row["total_energy_kwh"]), _number(row["total_co2_kg"]),
                     _number(row["total_cost_cloud_usd"]), _number(row["total_cost_energy_usd"])])
    if report.parent_source != "unknown":
        cost = report.parent_cost
        parent_loss = report.data.parent.final_val_loss if report.data.parent else math.nan
        rows.append(["parent (SMALL)", report.parent_source if report.data.parent is None else "pretraining",
                     "-", "-", "-", _number(parent_loss, 4),
                     _number(math.exp(parent_loss) if not math.isnan(parent_loss) else math.nan, 4),
                     _number(cost["flops"]), _number(cost["train_s"] / 3600), _number(cost["energy_kwh"]),
                     _number(cost["co2_kg"]), _number(cost["cost_cloud_usd"]), _number(cost["cost_energy_usd"])])
    return _table(headers, rows, markdown)


def _savings_table(report: Report, prefix: str) -> str:
    headers = ["method", *COSTS.values()]
    rows = [[row["method"], *(_savings_cell(row, f"{prefix}{key}") for key in COSTS)]
            for _, row in report.table.iterrows()]
    return _table(headers, rows, markdown=True)


def _runs_table(report: Report) -> str:
    headers = ["method", "seed", "state", "final val loss", "reached τ", "FLOPs to τ", "FLOPs saved", "wall saved"]
    rows = []
    for _, run in report.runs.iterrows():
        reached = "n/a" if pd.isna(run["reached"]) else ("yes" if run["reached"] else "not reached")
        savings = [f"{100 * run[f'savings_{key}']:.1f}%" if not pd.isna(run[f"savings_{key}"])
                   else "-" if reached == "not reached" else "n/a" for key in ("flops", "train_s")]
        rows.append([run["method"], str(run["seed"]), run["state"], _number(run["final_val_loss"], 4), reached,
                     "-" if reached == "not reached" else _number(run["cost_to_target_flops"]), *savings])
    return _table(headers, rows, markdown=True)


def _provenance(report: Report) -> str:
    """Every distinct label of how FLOPs, time, energy, carbon and prices were obtained, over all phases."""
    records = [record for record in (*report.data.runs, report.data.parent) if record is not None and
               record.phases is not None]
    lines = []
    for column, what in LABEL_COLUMNS.items():
        values = dict.fromkeys(str(value) for record in records if column in record.phases.columns
                               for value in record.phases[column].dropna())
        lines.append(f"- {what}: " + ("; ".join(values) if values else "not recorded"))
    return "\n".join(lines)


def format_markdown(report: Report) -> str:
    manifest = report.manifest
    budget = manifest["budget"]
    budget_text = (f"{_number(budget.get('value'))} {budget.get('unit', '')}".strip() if isinstance(budget, dict)
                   else str(budget))
    if isinstance(budget, dict) and budget.get("unit") != "flops" and isinstance(budget.get("flops"), (int, float)):
        budget_text += f" (≈ {_number(budget['flops'])} FLOPs)"
    hardware = manifest.get("hardware") or {}
    prices = manifest.get("prices") or {}
    seeds = manifest.get("seeds", sorted({seed for seed in report.runs["seed"].dropna()}))
    sections = [
        f"# growbench report: {manifest['pair']}",
        ("**The question.** If the large model is grown from the small pretrained one instead of being trained "
         "from scratch, how much compute, time, energy and money does it save to reach the quality scratch "
         "reaches at the budget, and how good is each method at the budget?"),
        "\n".join([
            f"- pair: `{manifest['pair']}`",
            f"- budget per run: {budget_text}",
            f"- seeds: {', '.join(str(seed) for seed in seeds)}",
            "- hardware: " + (", ".join(f"{key} {value}" for key, value in hardware.items()) or "not recorded"),
            f"- prices as of: {prices.get('as_of', 'not recorded')}",
            f"- target validation loss τ: {_number(report.target, 4)} ({report.target_source})",
            f"- parent (SMALL) cost from: {report.parent_source}",
        ]),
        "## Main table",
        ("Savings = 1 − cost to reach τ / scratch's cost at the budget, mean [95% bootstrap interval] over seeds, "
         "with the parent's pretraining *sunk* (the papers' convention) unless marked charged; "
         "\"not reached\" means the method never got to τ within the budget; n/a means not measured."),
        format_main_table(report, markdown=True),
        "## Savings by cost, parent sunk",
        _savings_table(report, "savings_"),
        "## Savings by cost, parent charged",
        ("The parent's whole pretraining cost added to the cost to τ of every method that uses the parent "
         "(KI too: its teacher is the parent)."),
        _savings_table(report, "savings_charged_"),
        "## How the costs were obtained",
        _provenance(report),
        "## Plots",
        "\n\n".join(f"![{title}](plots/{name})" for title, name in zip(
            ("validation loss vs FLOPs", "validation loss vs train time", "savings", "the bill by phase",
             "energy and CO2"), PLOT_FILES, strict=True)),
        "## Runs",
        _runs_table(report),
        "## Method settings",
        "\n\n".join(f"**{method}**\n\n```json\n{json.dumps(settings, indent=2, sort_keys=True, default=str)}\n```"
                    for method, settings in manifest["methods"].items()),
    ]
    if report.notes:
        sections += ["## Notes", "\n".join(f"- {note}" for note in report.notes)]
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------- plots


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: known methods always the same, others from a spare palette in order."""
    spare = iter(colour for colour in SPARE_COLOURS if colour not in METHOD_COLOURS.values())
    return {method: METHOD_COLOURS.get(method) or next(spare, "#999999") for method in methods}


def _counted_by_method(report: Report) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = {method: [] for method in report.table["method"]}
    for record in report.data.runs:
        if record.counted:
            grouped[record.method].append(record)
    return grouped


def _xy(record: RunRecord, x: str) -> tuple[np.ndarray, np.ndarray]:
    curve = record.curve.dropna(subset=[x, "val_loss"]) if x in record.curve.columns else record.curve.iloc[:0]
    return curve[x].to_numpy(float), curve["val_loss"].to_numpy(float)


def _phase_boundaries(records: list[RunRecord], x: str) -> list[float]:
    """Where each phase after the first starts, on axis `x`, mean over seeds (from phases.csv when it has the
    cost, else the first eval point of each new phase)."""
    per_seed = []
    for record in records:
        column = PHASE_COLUMNS[x]
        if record.phases is not None and column in record.phases.columns and record.phases[column].notna().all():
            per_seed.append(np.cumsum(record.phases[column].to_numpy(float))[:-1])
        elif x in record.curve.columns:
            changes = record.curve["phase"].ne(record.curve["phase"].shift()).to_numpy()
            changes[0] = False
            per_seed.append(record.curve[x].to_numpy(float)[changes])
    if not per_seed or len({len(bounds) for bounds in per_seed}) != 1:
        return []
    return list(np.nanmean(np.vstack(per_seed), axis=0))


def plot_curves(report: Report, x: str, label: str, colours: dict[str, str]) -> Figure:
    """Validation loss against a cumulative cost: seeds thin, mean bold, τ, phase starts, the parent's own curve."""
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.add_subplot()
    plotted, x_max = [], 0.0
    for method, records in _counted_by_method(report).items():
        curves = [_xy(record, x) for record in records]
        curves = [(xs, ys) for xs, ys in curves if len(xs)]
        if not curves:
            continue
        colour = colours[method]
        for xs, ys in curves:
            axes.plot(xs, ys, color=colour, linewidth=0.7, alpha=0.35)
            plotted.append(ys)
        end = min(xs[-1] for xs, _ in curves)
        grid = np.unique(np.concatenate([xs[xs <= end] for xs, _ in curves]))
        mean = np.mean([np.interp(grid, xs, ys) for xs, ys in curves], axis=0)
        axes.plot(grid, mean, color=colour, linewidth=2.2, label=f"{method} (mean of {len(curves)})")
        x_max = max(x_max, max(xs[-1] for xs, _ in curves))
        for boundary in _phase_boundaries(records, x):
            axes.axvline(boundary, color=colour, linestyle=":", linewidth=1, alpha=0.7)
    parent = report.data.parent
    if parent is not None and parent.curve is not None:
        xs, ys = _xy(parent, x)
        if len(xs):
            axes.plot(xs, ys, color=PARENT_COLOUR, linestyle="--", linewidth=1.6,
                      label="parent (SMALL) pretraining, its own cost")
            plotted.append(ys)
            if x_max and xs[-1] > 1.05 * x_max:
                axes.annotate(f"parent continues to {xs[-1]:.3g}", xy=(0.99, 0.97), xycoords="axes fraction",
                              ha="right", va="top", fontsize=8)
    if not math.isnan(report.target):
        axes.axhline(report.target, color="#333333", linewidth=1, label=f"target τ = {report.target:.4g}")
    if plotted:
        losses = np.concatenate(plotted)
        low, high = float(np.nanmin(losses)), float(np.nanpercentile(losses, 95))
        if not math.isnan(report.target):
            high = max(high, report.target)
        span = max(high - low, 1e-3)
        axes.set_ylim(low - 0.05 * span, high + 0.1 * span)
    if x_max:
        axes.set_xlim(0, 1.02 * x_max)
    axes.set_xlabel(label + ("  (dotted: phase starts)" if plotted else ""))
    axes.set_ylabel("validation loss")
    axes.set_title(f"{report.manifest['pair']}: validation loss vs {label}")
    axes.grid(alpha=0.3)
    if plotted:
        axes.legend(fontsize=8)
    return figure


def plot_savings(report: Report, colours: dict[str, str]) -> Figure:
    """Savings % (FLOPs solid, wall time hatched) with the 95% interval; charged as ◇; the paper's value as ★."""
    figure = Figure(figsize=(max(6, 1.6 * len(report.table) + 2), 5), layout="constrained")
    axes = figure.add_subplot()
    paper = PAPER_SAVINGS.get(report.manifest["pair"], {})
    labelled = set()
    for index, (_, row) in enumerate(report.table.iterrows()):
        if row["method"] == REFERENCE_METHOD:
            axes.text(index, 0, "reference", rotation=90, ha="center", va="bottom", fontsize=8)
            continue
        for offset, key, hatch, paper_index in ((-0.2, "flops", None, 0), (0.2, "train_s", "//", 1)):
            position = index + offset
            name = f"savings_{key}"
            missing = _no_savings(row, name)
            if missing:
                axes.text(position, 0, missing, rotation=90, ha="center", va="bottom", fontsize=8)
            else:
                error = None
                if not pd.isna(row[f"{name}_lo"]):
                    error = [[100 * (row[name] - row[f"{name}_lo"])], [100 * (row[f"{name}_hi"] - row[name])]]
                axes.bar(position, 100 * row[name], width=0.38, color=colours[row["method"]], hatch=hatch,
                         edgecolor="white" if hatch else None, yerr=error, capsize=3)
                charged = row[f"savings_charged_{key}"]
                if row["needs_parent"] and not pd.isna(charged):
                    axes.plot(position, 100 * charged, marker="D", markerfacecolor="none", color="black",
                              linestyle="none", label=None if "charged" in labelled else "parent charged")
                    labelled.add("charged")
            if row["method"] in paper:
                axes.plot(position, paper[row["method"]][paper_index], marker="*", markersize=12, color="gold",
                          markeredgecolor="black", linestyle="none",
                          label=None if "paper" in labelled else "LiGO paper, Table 1 (parent sunk)")
                labelled.add("paper")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(report.table)), report.table["method"])
    axes.set_xlim(-0.6, len(report.table) - 0.4)
    axes.set_ylabel("savings vs scratch (%)")
    axes.set_title("savings to reach τ: FLOPs (solid) and wall time (hatched), 95% CI over seeds")
    axes.grid(axis="y", alpha=0.3)
    if labelled:
        axes.legend(fontsize=8)
    return figure


def _bill_segments(report: Report, key: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per method, the mean over seeds of each phase's cost `key` (phases.csv), the parent first when charged."""
    column = PHASE_COLUMNS[key]
    segments: dict[str, dict[str, float]] = {}
    phase_names: list[str] = []
    needs_parent = dict(zip(report.table["method"], report.table["needs_parent"], strict=True))
    for method, records in _counted_by_method(report).items():
        bill: dict[str, float] = {}
        if needs_parent[method]:
            bill["parent"] = report.parent_cost[key]
        frames = [record.phases for record in records if record.phases is not None and column in record.phases]
        if frames:
            means = pd.concat(frames).groupby("phase", sort=False)[column].mean()
            bill.update(means.to_dict())
        for phase in bill:
            if phase not in phase_names:
                phase_names.append(phase)
        segments[method] = bill
    return segments, phase_names


def plot_bill(report: Report) -> Figure:
    """The bill per method, stacked by phase (parent charged first), in FLOPs and in cloud dollars."""
    figure = Figure(figsize=(max(9, 2.2 * len(report.table) + 3), 5), layout="constrained")
    palette = ["#c7c7c7", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    panels = {key: (label, *_bill_segments(report, key)) for key, label in (("flops", "executed FLOPs"),
                                                                            ("cost_cloud_usd", "cloud dollars"))}
    phase_names = ["parent"] + [name for _, _, names in panels.values() for name in names if name != "parent"]
    colour_of = {phase: palette[i % len(palette)] for i, phase in enumerate(dict.fromkeys(phase_names))}
    for panel, (label, segments, _) in enumerate(panels.values(), 1):
        axes = figure.add_subplot(1, 2, panel)
        for index, (method, bill) in enumerate(segments.items()):
            bottom = 0.0
            measured = [(phase, value) for phase, value in bill.items() if not pd.isna(value)]
            for phase, value in measured:
                axes.bar(index, value, bottom=bottom, color=colour_of[phase], edgecolor="white",
                         hatch="xx" if phase == "parent" else None)
                bottom += value
            if len(measured) < len(bill):
                axes.text(index, bottom, "n/a" if not measured else "partly n/a", ha="center", va="bottom",
                          fontsize=8)
        axes.set_xticks(range(len(segments)), list(segments), rotation=30, ha="right")
        axes.set_ylabel(label)
        axes.set_title(f"bill by phase: {label}")
        axes.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=colour, hatch="xx" if phase == "parent" else None, label=phase)
               for phase, colour in colour_of.items()]
    figure.legend(handles=handles, fontsize=8, title="phase", loc="outside right center")
    return figure


def plot_energy(report: Report, colours: dict[str, str]) -> Figure:
    """Energy (kWh) and CO2 (kg) per method at the budget, labelled with how the energy was obtained."""
    figure = Figure(figsize=(max(8, 2.2 * len(report.table) + 2), 5), layout="constrained")
    runs = report.runs[report.runs["state"] == COUNTED_STATE]
    for panel, (key, label) in enumerate((("energy_kwh", "energy (kWh, IT)"), ("co2_kg", "CO2 (kg)")), 1):
        axes = figure.add_subplot(1, 2, panel)
        for index, (_, row) in enumerate(report.table.iterrows()):
            value = row[f"total_{key}"]
            if pd.isna(value):
                axes.text(index, 0, "n/a", ha="center", va="bottom", fontsize=9)
                continue
            low, high = bootstrap_ci(runs.loc[runs["method"] == row["method"], f"total_{key}"])
            error = None if pd.isna(low) else [[value - low], [high - value]]
            axes.bar(index, value, color=colours[row["method"]], yerr=error, capsize=3)
        axes.set_xticks(range(len(report.table)), [f"{row['method']}\n{row['energy_method']}"
                                                   for _, row in report.table.iterrows()], fontsize=8)
        axes.set_ylabel(label)
        axes.set_title(f"{label} per run at the budget\n(below each method: how energy was obtained)", fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    return figure
