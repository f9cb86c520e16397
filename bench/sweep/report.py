"""The sweep report: writes sweep.csv (+ .parquet), breakeven.csv, extrapolated.csv (tables.py), plots/*.png
(plots.py) and report.md, assembled here, with the terminal's text.

Measured and extrapolated numbers never share a table: the power-law fit's values live in extrapolated.csv (every
value column named extrapolated_*), in report.md only under the heading "Extrapolation", and in their own plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.records import atomic_path
from bench.report.read import REFERENCE_METHOD
from bench.sweep.analysis import FAILED_STATE, INCOMPLETE, SAVINGS_KEYS, BreakEvenRow, Sweep, break_evens, collect
from bench.sweep.fit import Extrapolation, extrapolate
from bench.sweep.plots import PLOTS, plot_extrapolation, plot_heatmap, plot_loss, plot_savings
from bench.sweep.points import Plan
from bench.sweep.tables import (
    CONTENDED_MARK,
    basis_header,
    break_even_frame,
    break_even_table,
    budget_text,
    extrapolated_frame,
    parent_grid_table,
    percent,
    quality_table,
    savings_table,
    sci,
    text_table,
)


@dataclass
class SweepReport:
    sweep: Sweep
    break_evens: list[BreakEvenRow]
    extrapolation: Extrapolation | None
    text: str = ""  # what the terminal shows
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- report.md


def _settings(sweep: Sweep) -> str:
    plan = sweep.plan
    manifest = next(iter(sweep.manifests.values()), {})
    hardware = manifest.get("hardware") or {}
    budgets = ", ".join(f"{budget.label} = {budget.flops / plan.large_step_flops:.0f} steps ({sci(budget.flops, 3)} "
                        "FLOPs)" for budget in plan.budgets)
    parents = ", ".join(f"{steps} steps" + (f" ({sci(sweep.parent_flops[steps], 3)} FLOPs)"
                                            if steps in sweep.parent_flops else "") for steps in plan.parent_steps)
    return "\n".join([
        f"- pair: `{plan.pair}`; methods: {', '.join(plan.methods)}; seeds per point: {plan.seeds}",
        (f"- reference budget (`1x`): {plan.reference_budget_steps} steps of LARGE from scratch "
        f"({'the pair’s quick budget, --quick' if plan.quick else 'the pair’s default budget'}), "
        f"{sci(plan.reference_flops, 3)} FLOPs"),
        f"- budgets: {budgets}",
        f"- parent (SMALL) pretraining: {parents}",
        f"- amortisation: the parent's cost shared by K = {sweep.amortize:g} grown model(s)"
        + (" (= charged in full)" if sweep.amortize == 1 else ""),
        "- hardware: " + (", ".join(f"{key} {value}" for key, value in hardware.items()) or "not recorded"),
    ])


HOW_TO_READ = (
    "**How to read.** Every point is a full `bench compare` run directory (`points/<budget>-p<parent steps>/`, that "
    "`bench report` reads on its own); its savings are computed there exactly as `bench report` does: method seed s "
    "against scratch seed s on monotone fits of their eval points, target τ_s = scratch seed s's smoothed loss at "
    "that budget, savings = 1 − cost to τ_s / scratch's cost to τ_s, every seed counted (a seed that never reaches "
    "τ_s is judged at its own loss), 95% Student-t intervals on the mean over the seeds, \"not reached\" when fewer "
    "than half the seeds reach τ_s. A break-even budget is where a savings "
    "curve crosses 0, interpolated linearly in log budget between the two measured budgets that bracket it; a curve "
    "that crosses more than once lists every crossing. A budget where the method did not reach τ does not pay: its "
    "savings enter as at most 0, so a crossing next to it is a bound, ≤ or ≥. The 95% band is where the "
    "two edges of the intervals cross 0. Parent *sunk*: the papers' convention; *charged*: the parent's whole "
    "pretraining added to every grown model's cost (its recorded cost: a cached parent's wall time is from the "
    "session that trained it); *amortised over K*: a K-th of it. Wall-time savings marked "
    f"{CONTENDED_MARK} ran while another program shared the machine (`bench report` calls them unreliable): trust "
    "FLOPs first.")


def format_markdown(report: SweepReport) -> str:
    sweep, rows = report.sweep, report.break_evens
    bases = ["sunk", "charged", *(["amortized"] if sweep.amortize != 1 else [])]
    sections = [
        f"# growbench sweep: {sweep.plan.pair}",
        ("**The question.** Every savings figure holds for one budget and one parent. At which budget does growing "
         "LARGE from the pretrained SMALL model stop paying, with the parent's cost sunk, charged, or shared?"),
        _settings(sweep),
        HOW_TO_READ,
        "## Break-even budgets: FLOPs",
        break_even_table(sweep, rows, [f"flops_{basis}" for basis in bases]),
        "## Break-even budgets: wall time",
        break_even_table(sweep, rows, [f"train_s_{basis}" for basis in bases]),
        "## Savings by budget",
        f"![savings against budget](plots/{PLOTS['savings']})",
    ]
    for key in ("flops", "train_s"):
        for basis in bases:
            title = {"sunk": "parent sunk", "charged": "parent charged",
                     "amortized": f"parent amortised over {sweep.amortize:g}"}[basis]
            sections += [f"### {SAVINGS_KEYS[key]} saved, {title}", savings_table(sweep, key, basis)]
    sections += [
        "## Equal-budget quality",
        ("Final validation loss at the budget (mean [95% t-interval]); the last column says where a method's curve "
         "crosses scratch's (it beats scratch while its loss is lower)."),
        quality_table(sweep, rows),
        f"![final loss against budget](plots/{PLOTS['loss']})",
    ]
    if len(sweep.plan.parent_steps) > 1:
        sections += ["## Savings by parent and budget",
                     "FLOPs saved, parent sunk / charged" + (" / amortised" if sweep.amortize != 1 else "") + "."]
        for method in sweep.plan.methods:
            if method != REFERENCE_METHOD:
                sections += [f"**{method}**", parent_grid_table(sweep, method)]
        sections.append(f"![savings by parent and budget](plots/{PLOTS['heatmap']})")
    sections += ["## Points", _points_table(sweep)]
    problems = _problems(sweep)
    if problems:
        sections += ["## Failed and incomplete", problems]
    if report.extrapolation is not None:
        sections += ["## Extrapolation (fitted, not measured)", _extrapolation_text(report)]
    if sweep.notes:
        sections += ["## Notes", "\n".join(f"- {note}" for note in sweep.notes)]
    return "\n\n".join(sections) + "\n"


def _points_table(sweep: Sweep) -> str:
    rows = []
    for _, point in sweep.points.iterrows():
        seconds = point["seconds"]
        folder = sweep.root / point["directory"]
        link = f"[report]({point['directory']}/report.md)" if (folder / "report.md").exists() else \
            f"`bench report {folder}`"
        reason = point["reason"] if isinstance(point["reason"], str) else ""
        rows.append([point["point"], point["state"], "—" if seconds is None or pd.isna(seconds) else
                     f"{seconds / 60:.1f} min", point["scratch_from"] or "—", link,
                     reason.splitlines()[0][:160] if reason else ""])
    return text_table(["point", "state", "time", "scratch runs shared from", "its report", "reason"], rows)


def _problems(sweep: Sweep) -> str:
    bad = sweep.rows[sweep.rows["state"].isin([FAILED_STATE, INCOMPLETE])]
    lines = []
    for _, row in bad.iterrows():
        reason = row["reason"] if isinstance(row["reason"], str) else ""
        lines.append(f"- {row['point']} {row['method']}: **{row['state']}**" + (f" — {reason.splitlines()[0][:240]}"
                                                                                if reason else ""))
    return "\n".join(lines)


def _extrapolation_text(report: SweepReport) -> str:
    sweep, extrapolation = report.sweep, report.extrapolation
    parts = [("**Everything in this section is extrapolated from a fit, not measured**, and appears nowhere else "
              "in this report (extrapolated.csv, columns `extrapolated_*`). Per method, the mean final validation "
              "loss at each measured budget C is fitted with the saturating power law L(C) = E + A·(C/C0)^−α (least "
              "squares with E ≥ 0; C0 = the smallest budget). Read from the fits: the budget where a method's fitted "
              "curve crosses scratch's (break-even, parent sunk), and where the compute it needs to match scratch's "
              "fitted loss plus the parent's cost equals the budget (parent charged or amortised). With 3 budgets "
              "the fit has no residual degrees of freedom; with few points read it as a rough trend.")]
    parameters = extrapolation.parameters
    rows = []
    for _, row in parameters.iterrows():
        if pd.isna(row.get("extrapolated_E", math.nan)):
            rows.append([row["method"], str(row["parent_steps"]), "—", "—", "—", "—", "—", row["extrapolated_note"]])
            continue
        rows.append([row["method"], str(row["parent_steps"]), f"{row['extrapolated_E']:.4f}",
                     f"{row['extrapolated_A']:.4f}", f"{row['extrapolated_alpha']:.3f}",
                     f"{row['extrapolated_rmse']:.2g}", str(int(row["extrapolated_dof"])),
                     row["extrapolated_note"] or ""])
    parts += ["### The fits", text_table(["method", "parent steps", "extrapolated E", "extrapolated A",
                                      "extrapolated α", "rmse", "dof", "note"], rows)]
    residuals = extrapolation.residuals
    if len(residuals):
        rows = [[row["method"], str(row["parent_steps"]), row["budget"], f"{row['final_val_loss']:.4f}",
                 f"{row['extrapolated_fitted_loss']:.4f}", f"{row['extrapolated_residual']:+.4f}"]
                for _, row in residuals.iterrows()]
        parts += ["### Residuals (measured − fitted)", text_table(
            ["method", "parent steps", "budget", "measured final loss", "extrapolated fitted loss", "residual"], rows)]
    frame = extrapolation.break_even
    if len(frame):
        rows = []
        for _, row in frame.iterrows():
            at = row["extrapolated_break_even_flops"]
            if pd.isna(at):
                cell = row["extrapolated_note"]
            else:
                verb = {"stops": "stops paying", "starts": "starts paying"}[row["extrapolated_direction"]]
                cell = f"{verb} at ≈ {budget_text(at, sweep.plan)}"
            implied = row.get("extrapolated_savings_at_largest", math.nan)
            rows.append([row["method"], str(row["parent_steps"]), basis_header(row["basis"], sweep.amortize),
                         percent(implied), cell])
        parts += ["### Extrapolated break-even beyond the largest budget measured",
                  text_table(["method", "parent steps", "savings basis", "extrapolated savings at the largest budget",
                          "extrapolated break-even"], rows)]
    parts.append(f"![EXTRAPOLATION: fitted final loss against budget](plots/{PLOTS['extrapolated']})")
    return "\n\n".join(parts)


def terminal_text(report: SweepReport) -> str:
    sweep = report.sweep
    bases = ["sunk", "charged", *(["amortized"] if sweep.amortize != 1 else [])]
    text = "break-even budgets (FLOPs savings cross 0):\n" + break_even_table(
        sweep, report.break_evens, [f"flops_{basis}" for basis in bases], markdown=False)
    failed = sweep.points[sweep.points["state"].isin([FAILED_STATE, "failed"])]
    if len(failed):
        text += "\n\nfailed point(s): " + ", ".join(failed["point"])
    return text


# --------------------------------------------------------------------------- building


def _atomic(path: Path, write) -> Path:
    with atomic_path(path) as temporary:
        write(temporary)
    return path


def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def build_sweep_report(plan: Plan, root: Path, amortize: float | None = None, extrapolation: bool = True
                       ) -> SweepReport:
    """Analyse every point and write the sweep's tables, plots and report.md into `root`."""
    root = Path(root)
    sweep = collect(plan, root, amortize)
    rows = break_evens(sweep)
    fitted = None
    if extrapolation:
        fitted = extrapolate(sweep.rows, plan.methods, plan.parent_steps, sweep.parent_flops, sweep.amortize,
                             plan.reference_flops)
    report = SweepReport(sweep, rows, fitted)
    files = report.files
    files.append(_atomic(root / "sweep.csv", lambda path: sweep.rows.to_csv(path, index=False)))
    if _parquet_available():
        files.append(_atomic(root / "sweep.parquet", lambda path: sweep.rows.to_parquet(path, index=False)))
    files.append(_atomic(root / "breakeven.csv", lambda path: break_even_frame(sweep, rows).to_csv(path, index=False)))
    if fitted is not None:
        frame = extrapolated_frame(fitted)
        files.append(_atomic(root / "extrapolated.csv", lambda path: frame.to_csv(path, index=False)))
    (root / "plots").mkdir(parents=True, exist_ok=True)
    figures = {"savings": lambda: plot_savings(sweep, rows), "loss": lambda: plot_loss(sweep)}
    if len(plan.parent_steps) > 1 and len(plan.budgets) > 1:
        figures["heatmap"] = lambda: plot_heatmap(sweep)
    if fitted is not None and any(not isinstance(fit, str) for fit in fitted.fits.values()):
        figures["extrapolated"] = lambda: plot_extrapolation(sweep, fitted)
    for name, make in figures.items():
        figure = make()
        files.append(_atomic(root / "plots" / PLOTS[name],
                             lambda path, fig=figure: fig.savefig(path, format="png", dpi=100)))
    files.append(_atomic(root / "report.md", lambda path: Path(path).write_text(format_markdown(report))))
    report.text = terminal_text(report)
    return report


__all__ = ["SweepReport", "build_sweep_report", "format_markdown", "terminal_text"]
