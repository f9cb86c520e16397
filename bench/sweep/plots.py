"""The sweep's plots (plots/*.png): savings against budget, equal-budget final loss, savings by (parent, budget),
and the EXTRAPOLATION plot, the only one that shows the power-law fit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.report.plots import method_colours
from bench.report.read import REFERENCE_METHOD
from bench.sweep.analysis import (
    BASES,
    FAILED_STATE,
    INCOMPLETE,
    MEASURED,
    REFERENCE,
    SAVINGS_KEYS,
    BreakEvenRow,
    Sweep,
    savings_column,
)
from bench.sweep.fit import Extrapolation
from bench.sweep.tables import CONTENDED_MARK, label_of

PLOTS = {"savings": "savings_vs_budget.png", "loss": "loss_vs_budget.png", "heatmap": "savings_heatmap.png",
         "extrapolated": "extrapolated_loss_fit.png"}
PARENT_STYLES = ("-", "--", ":", "-.")


def _budget_axis(axes, sweep: Sweep) -> None:
    budgets = sorted({budget.flops for budget in sweep.plan.budgets})
    axes.set_xscale("log")
    labels = [f"{label_of(flops, sweep)}\n{flops / sweep.plan.large_step_flops:.0f} st" for flops in budgets]
    axes.set_xticks(budgets, labels, fontsize=7)
    axes.minorticks_off()
    if budgets:
        axes.set_xlim(budgets[0] / 1.4, budgets[-1] * 1.4)
    axes.set_xlabel(f"budget per run (log; × the reference budget of {sweep.plan.reference_budget_steps} steps, "
                    "and steps of LARGE)", fontsize=8)


def _marks(axes, mine: pd.DataFrame) -> None:
    """Failed points as a red ✗ on the axis, incomplete ones as a grey ?, so that no point is a silent gap."""
    for _, row in mine.iterrows():
        if row["state"] == FAILED_STATE:
            axes.plot(row["budget_flops"], 0, marker="X", color="#d62728", markersize=10, linestyle="none")
            axes.annotate("failed", (row["budget_flops"], 0), textcoords="offset points", xytext=(0, 8),
                          ha="center", fontsize=7, color="#d62728")
        elif row["state"] == INCOMPLETE:
            axes.annotate("?", (row["budget_flops"], 0), ha="center", fontsize=11, color="#777777")


def _dodge(sweep: Sweep, method: str, parent: int) -> float:
    """A small sideways factor per (method, parent) on the log budget axis, so that equal values stay visible."""
    keys = [(m, p) for p in sweep.plan.parent_steps for m in sweep.plan.methods]
    index = keys.index((method, parent)) if (method, parent) in keys else 0
    return 1.035 ** (index - (len(keys) - 1) / 2)


def plot_savings(sweep: Sweep, rows: list[BreakEvenRow]) -> Figure:
    """Savings against budget (log), one line per method (per parent: line style): FLOPs (top) and wall time
    (bottom), parent sunk, charged and (K ≠ 1) amortised; 95% t-intervals; ▽ = not reached (fewer than half the seeds
    reached τ_s); ✗ = failed; ◆ on the axis = an interpolated break-even."""
    bases = ["sunk", "charged", *(["amortized"] if sweep.amortize != 1 else [])]
    figure = Figure(figsize=(5.2 * len(bases), 8.5), layout="constrained")
    colours = method_colours(sweep.plan.methods)
    for row_index, key in enumerate(("flops", "train_s")):
        for col_index, basis in enumerate(bases):
            axes = figure.add_subplot(2, len(bases), row_index * len(bases) + col_index + 1)
            name = savings_column(key, basis)
            for parent_index, parent in enumerate(sweep.plan.parent_steps):
                style = PARENT_STYLES[parent_index % len(PARENT_STYLES)]
                for method in sweep.plan.methods:
                    if method == REFERENCE_METHOD:
                        continue
                    mine = sweep.rows[(sweep.rows["method"] == method) & (sweep.rows["parent_steps"] == parent)]
                    mine = mine.sort_values("budget_flops")
                    measured = mine[mine["state"] == MEASURED]
                    label = method + (f", parent {parent}" if len(sweep.plan.parent_steps) > 1 else "")
                    shift = _dodge(sweep, method, parent)
                    xs, ys = measured["budget_flops"].to_numpy(float) * shift, 100 * measured[name].to_numpy(float)
                    axes.plot(xs, ys, linestyle=style, color=colours[method], linewidth=1.6, label=label)
                    for (_, point), x, y in zip(measured.iterrows(), xs, ys, strict=True):
                        if math.isnan(y):
                            continue
                        reached = point["reached"] is True
                        error = None
                        if not pd.isna(point[f"{name}_lo"]):
                            error = [[y - 100 * point[f"{name}_lo"]], [100 * point[f"{name}_hi"] - y]]
                        axes.errorbar(x, y, yerr=error, color=colours[method], capsize=3, linestyle="none",
                                      marker="o" if reached else "v", markersize=6,
                                      markerfacecolor=colours[method] if reached else "white")
                        if key == "train_s" and point["time_contended"] is True:
                            axes.annotate(CONTENDED_MARK, (x, y), textcoords="offset points", xytext=(5, 2),
                                          fontsize=8, color=colours[method])
                    _marks(axes, mine)
                    for be in rows:
                        if be.method == method and be.parent_steps == parent and be.basis == f"{key}_{basis}":
                            for crossing in be.result.crossings:
                                axes.plot(crossing.at, 0, marker="D", color=colours[method], markersize=7,
                                          markeredgecolor="black", linestyle="none")
            axes.axhline(0, color="black", linewidth=0.8)
            _budget_axis(axes, sweep)
            axes.set_ylabel(f"{SAVINGS_KEYS[key]} saved vs scratch (%)")
            parent_words = {"sunk": "parent sunk", "charged": "parent charged in full",
                            "amortized": f"parent amortised over {sweep.amortize:g} models"}[basis]
            axes.set_title(f"{SAVINGS_KEYS[key]}, {parent_words}", fontsize=10)
            axes.grid(alpha=0.3)
            if row_index == 0 and col_index == 0:
                axes.legend(fontsize=7, title="● reached  ▽ not reached (upper bound)\n◆ break-even  ✗ failed\n"
                            f"{CONTENDED_MARK} wall time contended  (points dodged sideways)", title_fontsize=7)
    figure.suptitle(f"{sweep.plan.pair}: savings to reach scratch's final loss, against the budget "
                    f"(mean over {sweep.plan.seeds} seed(s), 95% t-interval)", fontsize=11)
    return figure


def plot_loss(sweep: Sweep) -> Figure:
    """Final validation loss at the budget against the budget (equal-budget quality), scratch included."""
    figure = Figure(figsize=(8, 5.2), layout="constrained")
    axes = figure.add_subplot()
    colours = method_colours(sweep.plan.methods)
    for parent_index, parent in enumerate(sweep.plan.parent_steps):
        style = PARENT_STYLES[parent_index % len(PARENT_STYLES)]
        for method in sweep.plan.methods:
            if method == REFERENCE_METHOD and parent_index > 0:
                continue
            mine = sweep.rows[(sweep.rows["method"] == method) & (sweep.rows["parent_steps"] == parent)]
            mine = mine.sort_values("budget_flops")
            measured = mine[mine["state"].isin([MEASURED, REFERENCE])]
            xs = measured["budget_flops"].to_numpy(float) * _dodge(sweep, method, parent)
            ys = measured["final_val_loss"].to_numpy(float)
            low = measured["final_val_loss_lo"].to_numpy(float)
            high = measured["final_val_loss_hi"].to_numpy(float)
            label = method + (f", parent {parent}" if len(sweep.plan.parent_steps) > 1 and method != REFERENCE_METHOD
                              else "")
            axes.errorbar(xs, ys, yerr=np.nan_to_num(np.vstack([ys - low, high - ys])), color=colours[method],
                          linestyle=style, marker="o", capsize=3, linewidth=2.2 if method == REFERENCE_METHOD else 1.5,
                          label=label)
            for _, row in mine.iterrows():
                if row["state"] == FAILED_STATE:
                    axes.annotate("✗ failed", (row["budget_flops"], np.nanmin(ys) if len(ys) else 0),
                                  color="#d62728", fontsize=7, ha="center")
    _budget_axis(axes, sweep)
    axes.set_ylabel("final validation loss at the budget")
    axes.set_title(f"{sweep.plan.pair}: equal-budget quality (mean over {sweep.plan.seeds} seed(s), 95% t-interval)",
                   fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def plot_heatmap(sweep: Sweep) -> Figure:
    """FLOPs savings by (parent steps, budget), one panel per growth method, parent sunk (top) and charged."""
    methods = [method for method in sweep.plan.methods if method != REFERENCE_METHOD]
    budgets = [budget.label for budget in sweep.plan.budgets]
    parents = sweep.plan.parent_steps
    bases = ["sunk", "charged", *(["amortized"] if sweep.amortize != 1 else [])]
    figure = Figure(figsize=(max(6, 3.2 * len(methods)), 2.6 * len(bases) + 0.8), layout="constrained")
    grids = {}
    for basis in bases:
        for method in methods:
            grid = np.full((len(parents), len(budgets)), np.nan)
            words = {}
            for i, parent in enumerate(parents):
                for j, label in enumerate(budgets):
                    match = sweep.rows[(sweep.rows["method"] == method) & (sweep.rows["budget"] == label)
                                       & (sweep.rows["parent_steps"] == parent)]
                    if not len(match):
                        words[i, j] = "not run"
                        continue
                    row = match.iloc[0]
                    if row["state"] != MEASURED:
                        words[i, j] = row["state"]
                    elif row["reached"] is not True:
                        words[i, j] = "not\nreached"
                    else:
                        grid[i, j] = 100 * row[savings_column("flops", basis)]
            grids[basis, method] = (grid, words)
    finite = [abs(value) for grid, _ in grids.values() for value in grid.ravel() if not math.isnan(value)]
    scale = max(finite, default=1.0) or 1.0
    image = None
    for b, basis in enumerate(bases):
        for m, method in enumerate(methods):
            axes = figure.add_subplot(len(bases), len(methods), b * len(methods) + m + 1)
            grid, words = grids[basis, method]
            image = axes.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-scale, vmax=scale, aspect="auto")
            for i in range(len(parents)):
                for j in range(len(budgets)):
                    text = words.get((i, j)) or f"{grid[i, j]:.0f}%"
                    axes.text(j, i, text, ha="center", va="center", fontsize=7,
                              color="#d62728" if text == FAILED_STATE else "black")
            axes.set_xticks(range(len(budgets)), budgets, fontsize=7)
            axes.set_yticks(range(len(parents)), [str(parent) for parent in parents], fontsize=7)
            axes.set_title(f"{method}: FLOPs, parent {BASES[basis].split()[-1]}", fontsize=9)
            if m == 0:
                axes.set_ylabel("parent steps")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="FLOPs saved vs scratch (%)")
    return figure


def plot_extrapolation(sweep: Sweep, extrapolation: Extrapolation) -> Figure:
    """EXTRAPOLATION: measured final losses (points) and the fitted saturating power laws (dashed) beyond them."""
    figure = Figure(figsize=(8.5, 5.4), layout="constrained")
    axes = figure.add_subplot()
    colours = method_colours(sweep.plan.methods)
    largest = max(budget.flops for budget in sweep.plan.budgets)
    smallest = min(budget.flops for budget in sweep.plan.budgets)
    grid = np.geomspace(smallest / 1.5, largest * 30, 200)
    for (method, parent), fit in extrapolation.fits.items():
        if isinstance(fit, str) or (method == REFERENCE_METHOD and parent != sweep.plan.parent_steps[0]):
            continue
        style = PARENT_STYLES[sweep.plan.parent_steps.index(parent) % len(PARENT_STYLES)]
        label = method + (f", parent {parent}" if len(sweep.plan.parent_steps) > 1 and method != REFERENCE_METHOD
                          else "")
        axes.plot(fit.budgets, fit.losses, marker="o", linestyle="none", color=colours[method])
        axes.plot(grid, fit(grid), linestyle="--" if style == "-" else style, color=colours[method], linewidth=1.2,
                  label=f"{label}: fit E={fit.e:.3f}, α={fit.alpha:.2f}")
    frame = extrapolation.break_even
    if len(frame):
        for _, row in frame[(frame["basis"] == "flops_sunk") & frame["extrapolated_break_even_flops"].notna()
                            ].iterrows():
            axes.axvline(row["extrapolated_break_even_flops"], color=colours[row["method"]], linestyle=":",
                         linewidth=1)
    axes.axvspan(largest, grid[-1], color="#f2f2f2", zorder=0, label="beyond the budgets measured")
    axes.set_xscale("log")
    axes.set_xlabel("budget per run (FLOPs, log)")
    axes.set_ylabel("final validation loss at the budget")
    axes.set_title("EXTRAPOLATION (fitted, not measured): L(C) = E + A·(C/C0)^−α per method;\n"
                   "dotted: the fitted curves cross scratch's (break-even, parent sunk)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure



__all__ = ["PLOTS", "plot_extrapolation", "plot_heatmap", "plot_loss", "plot_savings"]
