"""Savings, statistics, tables, plots and report.md, built from a run directory alone.

Reporting reads RUN_DIR (manifest.json, runs/*/{curve,phases}.csv + status.json, parent/); it never
re-runs training. Conventions (see accounting.md, "Savings and statistics"):

- target τ: mean over seeds of scratch's final validation loss, unless the caller gives one.
- cost to target: the cumulative cost at the FIRST eval point whose validation loss is ≤ τ, linearly
  interpolated between that point and the one before it (a run already at τ on its first eval point
  costs that point's cost).
- savings = 1 − cost_method(τ) / cost_scratch(budget), cost_scratch(budget) = mean over scratch seeds
  of the final cumulative cost. A finished seed that never reaches τ is *censored* at the budget
  (`censored` in Report.runs): its cost is its own total at the budget, a lower bound, so its savings
  are an upper bound (≈ 0 for FLOPs). A cost that was not measured is NaN and printed "n/a", never 0.
- parent cost, *sunk* (the papers' convention) and *charged* (the parent's whole pretraining cost is
  added to the cost to target of every method that uses a parent). Which methods use one: the flag
  `needs_parent` in manifest["methods"][m]; KI counts as one (its teacher is the parent). Without the
  flag, every method but scratch is assumed to use the parent, and the report says so.
- a method's savings are the mean over ALL its finished seeds, censored ones included (fairness rule 5:
  no survivor bias), with a 95% Student-t interval on the mean (`ci_method`, `n_seeds` in the table).
  A method counts as reaching τ (`reached` in the table, judged by the gate) when at least half of its
  finished seeds do; otherwise the report prints "not reached", and "k/n reached" in every case.
- MFU of a run: its phases' `mfu` weighted by their train seconds (= Σ flops_executed / (Σ train_s × devices × peak)
  for one device and one math), mean over finished seeds; "unavailable" where the collector knew no peak, never 0.

Layout: read.py (the run directory), statistics.py (crossing point, per-run and per-method numbers),
sections.py (reference lines, the loss at phase boundaries, the recipe), tables.py (terminal table, report.md),
plots.py (figures); this module ties them into a Report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.records import atomic_path
from bench.report.plots import PLOT_FILES, method_colours, plot_bill, plot_curves, plot_energy, plot_savings
from bench.report.read import COSTS, COUNTED_STATE, REFERENCE_METHOD, RunData, RunRecord, method_order, read_run_dir
from bench.report.sections import reference_note
from bench.report.statistics import (
    CI_METHOD,
    aggregate,
    crossing_position,
    mean_of,
    needs_parent_flag,
    parent_cost_of,
    summarise_runs,
    t_interval,
    value_at,
)
from bench.report.tables import format_markdown, terminal_text
from bench.report.verdicts import paired_table

__all__ = ["CI_METHOD", "COSTS", "COUNTED_STATE", "PLOT_FILES", "REFERENCE_METHOD", "Report", "RunData", "RunRecord",
           "analyse", "build_report", "crossing_position", "read_run_dir", "t_interval", "value_at"]


@dataclass
class Report:
    """A run directory analysed: what the gate judges (table) and what report.md and the plots show."""

    run_dir: Path
    manifest: dict
    target: float
    target_source: str
    parent_cost: dict[str, float]
    parent_source: str
    runs: pd.DataFrame  # one row per (method, seed), also written as summary.csv / summary.parquet
    table: pd.DataFrame  # one row per method
    data: RunData  # the records as read, for the plots
    notes: list[str] = field(default_factory=list)
    text: str = ""  # the main table for the terminal
    files: list[Path] = field(default_factory=list)


def analyse(run_dir: Path, target: float | None = None) -> Report:
    """Tables and statistics of a run directory, without writing anything (the gate uses this)."""
    data = read_run_dir(run_dir)
    methods = method_order(data)
    notes = []
    scratch_losses = [record.final_val_loss for record in data.runs
                      if record.method == REFERENCE_METHOD and record.counted]
    if not scratch_losses:
        notes.append("No finished scratch run: savings need scratch's cost at the budget, so none are given.")
    if target is not None:
        target_source = "given"
    elif scratch_losses:
        target = mean_of(scratch_losses)
        target_source = f"mean final validation loss of scratch over {len(scratch_losses)} seed(s)"
    else:
        target, target_source = math.nan, "none"
    warning = reference_note(target, data.manifest)
    if warning:
        notes.append(warning)
    unflagged = [method for method in methods if needs_parent_flag(data.manifest, method) is None]
    uses_parent = {method: needs_parent_flag(data.manifest, method) is not False and method != REFERENCE_METHOD
                   for method in methods}
    if unflagged:
        notes.append(f"The manifest does not say whether {', '.join(unflagged)} use(s) the parent; assumed: "
                     "every method but scratch does.")
    parent_cost, parent_source = parent_cost_of(data)
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
    report.text = terminal_text(report)
    return report


def build_report(run_dir: Path, target: float | None = None, out: Path | None = None) -> Report:
    """Write summary.csv, summary.parquet, verdicts.csv, report.md and plots/*.png into `out` (default: the run
    directory)."""
    report = analyse(run_dir, target)
    out = Path(out) if out is not None else Path(run_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    report.files.append(_atomic(out / "summary.csv", lambda path: report.runs.to_csv(path, index=False)))
    report.files.append(_atomic(out / "summary.parquet", lambda path: report.runs.to_parquet(path, index=False)))
    report.files.append(_atomic(out / "verdicts.csv", lambda path: paired_table(report).to_csv(path, index=False)))
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
