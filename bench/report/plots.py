"""The figures of report.md (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.report.read import COUNTED_STATE, PHASE_COLUMNS, REFERENCE_METHOD, RunRecord
from bench.report.sections import reference_lines
from bench.report.statistics import no_savings, t_interval

if TYPE_CHECKING:
    from bench.report import Report


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
REFERENCE_COLOUR = "#8c6d31"
REFERENCE_STYLES = ("-.", (0, (6, 2, 1, 2, 1, 2)), (0, (2, 2)))  # one per context-free line, weakest first
PLOT_FILES = ("loss_vs_flops.png", "loss_vs_time.png", "savings.png", "bill.png", "energy.png")


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
    """Validation loss against a cumulative cost: seeds thin, mean bold, τ, the context-free reference lines, phase
    starts, the parent's own curve."""
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
    lines = reference_lines(report.manifest)
    for (line_label, value), style in zip(lines, REFERENCE_STYLES, strict=False):
        axes.axhline(value, color=REFERENCE_COLOUR, linestyle=style, linewidth=1.3,
                     label=f"context-free {line_label} = {value:.4g}")
    if plotted:
        losses = np.concatenate(plotted)
        low, high = float(np.nanmin(losses)), float(np.nanpercentile(losses, 95))
        levels = [value for _, value in lines] + ([] if math.isnan(report.target) else [report.target])
        low, high = min([low, *levels]), max([high, *levels])  # τ and every reference line in view
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
    """Savings % (FLOPs solid, wall time hatched) with the 95% t-interval; charged as ◇; the paper's value as ★.
    A method that is "not reached" gets the words, not a bar."""
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
            missing = no_savings(row, name)
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
    axes.set_title("savings to reach τ: FLOPs (solid) and wall time (hatched),\n"
                   "paired by seed (monotone fit), mean over all seeds, 95% t-interval")
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
            low, high = t_interval(runs.loc[runs["method"] == row["method"], f"total_{key}"])
            error = None if pd.isna(low) else [[value - low], [high - value]]
            axes.bar(index, value, color=colours[row["method"]], yerr=error, capsize=3)
        axes.set_xticks(range(len(report.table)), [f"{row['method']}\n{row['energy_method']}"
                                                   for _, row in report.table.iterrows()], fontsize=8)
        axes.set_ylabel(label)
        axes.set_title(f"{label} per run at the budget\n(below each method: how energy was obtained)", fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    return figure
