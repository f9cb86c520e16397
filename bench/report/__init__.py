"""Savings, statistics, tables, plots and report.md, built from a run directory alone.

Reporting reads RUN_DIR (manifest.json, runs/*/{curve,phases}.csv + status.json, parent/); it never
re-runs training. Conventions (see accounting.md, "Savings and statistics"):

- target τ_s, per seed: scratch seed s's loss at its budget on a monotone (isotonic) fit of its eval points,
  unless the caller gives one τ for every seed. Method seed s is judged against scratch seed s alone (same
  batches, same validation set): docs/statistics.md says why this is the headline.
- cost to target: where the run's monotone fit first reaches the level, in executed FLOPs, and the run's other
  cumulative costs (seconds, energy, dollars) read at that FLOPs value.
- savings = 1 − cost_method(τ_s) / cost_scratch_s(τ_s). A finished seed whose fit never gets to τ_s is judged at
  its own smoothed loss at the budget instead (`at_own_loss` in Report.runs): both costs to that loss, so a
  worse method reads negative rather than a censored ≈ 0. A cost that was not measured is NaN and printed "n/a",
  never 0. `Report.target` is the mean of the τ_s, for display.
- parent cost, *sunk* (the papers' convention) and *charged* (the parent's whole pretraining cost is
  added to the cost to target of every method that uses a parent). Which methods use one: the flag
  `needs_parent` in manifest["methods"][m]; KI counts as one (its teacher is the parent). Without the
  flag, every method but scratch is assumed to use the parent, and the report says so.
- a method's savings are the mean over ALL its finished seeds that have a scratch partner (fairness rule 5: no
  survivor bias), with a 95% Student-t interval on the mean (`ci_method`, `n_seeds`, `n_paired` in the table).
  A method counts as reaching τ (`reached` in the table, judged by the gate) when at least half of its
  finished seeds reach their τ_s; otherwise the report prints "not reached", and "k/n reached" in every case.
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
from bench.report.estimators import crossing_position, value_at
from bench.report.plots import PLOT_FILES, method_colours, plot_bill, plot_curves, plot_energy, plot_savings
from bench.report.read import COSTS, COUNTED_STATE, REFERENCE_METHOD, RunData, RunRecord, method_order, read_run_dir
from bench.report.sections import reference_note
from bench.report.statistics import (
    CI_METHOD,
    aggregate,
    mean_of,
    needs_parent_flag,
    parent_cost_of,
    scratch_levels,
    summarise_runs,
    t_interval,
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
    levels = scratch_levels(data)
    if not levels:
        notes.append("No finished scratch run: savings need scratch's cost to each seed's target, so none are given.")
    if target is not None:
        shown, target_source = target, "given, for every seed"
    elif levels:
        shown = mean_of(list(levels.values()))
        target_source = (f"mean of τ_s over {len(levels)} scratch seed(s), each seed's loss at its budget on a "
                         "monotone fit; every method seed is judged against its own scratch seed's τ_s")
    else:
        shown, target_source = math.nan, "none"
    warning = reference_note(shown, data.manifest)
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
    runs = summarise_runs(data, uses_parent, parent_cost, target)
    unpaired = runs[runs["state"].eq(COUNTED_STATE) & ~runs["paired"]]
    if len(unpaired) and levels:
        notes.append(f"{', '.join(unpaired['folder'])}: no finished scratch run of the same seed to pair with — "
                     "left out of the savings.")
    table = aggregate(runs, uses_parent)
    report = Report(Path(run_dir), data.manifest, float(shown), target_source, parent_cost, parent_source,
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
