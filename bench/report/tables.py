"""Text of the report: the terminal table and report.md.

A savings cell is "34.1% [30.2, 38.0]" (mean over all finished seeds, each paired with its scratch seed, and its
95% t-interval), or a word: "not reached" (fewer than half the seeds reached τ), "reference", "no finished run", or
"n/a" (not measured), never a 0 standing in for one of those. "k/n reached" sits next to every growth method.
Wall-time, energy and dollar savings read "unreliable: contended" when a run of the method or of scratch ran on a
busy machine (report/contention.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from bench.calibration import CONTENTION_THRESHOLD, MIN_JUDGED_STEPS
from bench.hardware import ABOVE_PEAK
from bench.report.contention import (
    REFERENCE_KEYS,
    TIME_KEYS,
    UNRELIABLE,
    UNRELIABLE_CALIBRATION,
    calibration_summary,
    drift_sentence,
    energy_sentence,
)
from bench.report.plots import PLOT_FILES
from bench.report.read import COSTS, LABEL_COLUMNS, REFERENCE_METHOD
from bench.report.sections import boundary_section, reference_sentence, training_section
from bench.report.statistics import no_savings, run_mfu, run_mfu_source
from bench.report.verdicts import verdicts_section

if TYPE_CHECKING:
    from bench.report import Report


# --------------------------------------------------------------------------- formatting


MFU_UNAVAILABLE = "unavailable"  # how bench/hardware.py's resolve_peak starts the source of a peak it does not know

SAVINGS_RULE = ("savings = 1 − cost to τ_s / scratch seed s's cost to τ_s on monotone fits, mean over all seeds, a "
                "seed short of τ_s at its own loss [95% t-interval]")


def number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}g}"


def _percent(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"


def _savings_cell(row: pd.Series, name: str) -> str:
    """'34.1% [30.2, 38.0]', or why there is no number ('not reached', 'n/a', ...); no interval under 2 seeds."""
    missing = no_savings(row, name)
    if missing:
        return missing
    if row.get("time_contended") is True and name.endswith(TIME_KEYS):
        return UNRELIABLE
    if row.get("reference_unreliable") is True and name.endswith(REFERENCE_KEYS):
        return UNRELIABLE_CALIBRATION
    text = f"{100 * row[name]:.1f}%"
    if not pd.isna(row[f"{name}_lo"]):
        text += f" [{100 * row[f'{name}_lo']:.1f}, {100 * row[f'{name}_hi']:.1f}]"
    return text


def mfu_cell(value: float, peak_source: str) -> str:
    """'41.2%'; "unreliable: above the peak" for a value above 100% or a peak source that says so (never the
    number); without a value, "unavailable" where the collector knew no peak for the device and math (its
    `mfu_peak_source` says "unavailable: <why>"), "n/a" where the records hold no MFU (older runs)."""
    if ABOVE_PEAK in str(peak_source) or (not pd.isna(value) and value > 1):
        return ABOVE_PEAK
    if not pd.isna(value):
        return f"{100 * value:.3g}%"
    return MFU_UNAVAILABLE if MFU_UNAVAILABLE in str(peak_source) else "n/a"


def _reached_cell(row: pd.Series) -> str:
    """'2/3 reached': how many finished seeds reached τ."""
    if row["method"] == REFERENCE_METHOD:
        return "reference"
    if row["n_done"] == 0:
        return "no finished run"
    return "n/a" if pd.isna(row["reached"]) else f"{row['n_reached']}/{row['n_done']} reached"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def format_main_table(report: Report, markdown: bool) -> str:
    """Seeds at τ, savings (sunk, charged) with intervals, final loss, and the bill at the budget with the share
    spent outside plain LARGE training and the MFU, one row per method plus the parent's own row."""
    headers = ["method", "runs", "seeds at τ", "FLOPs saved", "wall saved", "FLOPs saved (parent charged)",
               "val loss", "ppl", "FLOPs", "outside plain LARGE", "train h", "MFU", "kWh", "kg CO2", "$ cloud",
               "$ energy"]
    rows = []
    for _, row in report.table.iterrows():
        rows.append([row["method"], f"{row['n_done']}/{row['n_runs']} done", _reached_cell(row),
                     _savings_cell(row, "savings_flops"), _savings_cell(row, "savings_train_s"),
                     _savings_cell(row, "savings_charged_flops"),
                     number(row["final_val_loss"], 4), number(row["perplexity"], 4),
                     number(row["total_flops"]), _percent(row["outside_plain_large"]),
                     number(row["total_train_s"] / 3600), mfu_cell(row["mfu"], row["mfu_peak_source"]),
                     number(row["total_energy_kwh"]), number(row["total_co2_kg"]),
                     number(row["total_cost_cloud_usd"]), number(row["total_cost_energy_usd"])])
    if report.parent_source != "unknown":
        cost = report.parent_cost
        parent = report.data.parent
        parent_loss = parent.final_val_loss if parent else math.nan
        phases = parent.phases if parent else None  # a parent known from the manifest alone has no MFU: n/a
        rows.append(["parent (SMALL)", report.parent_source if parent is None else "pretraining",
                     "-", "-", "-", "-", number(parent_loss, 4),
                     number(math.exp(parent_loss) if not math.isnan(parent_loss) else math.nan, 4),
                     number(cost["flops"]), "-", number(cost["train_s"] / 3600),
                     mfu_cell(run_mfu(phases), run_mfu_source(phases)), number(cost["energy_kwh"]),
                     number(cost["co2_kg"]), number(cost["cost_cloud_usd"]), number(cost["cost_energy_usd"])])
    return _table(headers, rows, markdown)


def _savings_table(report: Report, prefix: str) -> str:
    headers = ["method", "seeds at τ", *COSTS.values()]
    rows = [[row["method"], _reached_cell(row), *(_savings_cell(row, f"{prefix}{key}") for key in COSTS)]
            for _, row in report.table.iterrows()]
    return _table(headers, rows, markdown=True)


def _runs_table(report: Report) -> str:
    """One row per run: the level it was judged at, whether it got there, its cost and savings."""
    headers = ["method", "seed", "state", "final val loss", "τ_s", "reached τ_s", "FLOPs to level", "FLOPs saved",
               "wall saved", "outside plain LARGE"]
    rows = []
    scratch_contended = _contended(report.runs[report.runs["method"] == REFERENCE_METHOD])
    for _, run in report.runs.iterrows():
        at_own_loss = not pd.isna(run["at_own_loss"]) and bool(run["at_own_loss"])
        reached = "n/a" if pd.isna(run["reached"]) else ("yes" if run["reached"] else "no (at own loss)")
        savings = [_percent(run[f"savings_{key}"]) for key in ("flops", "train_s")]
        if savings[1] != "n/a" and (scratch_contended or _contended(report.runs.loc[[run.name]])):
            savings[1] = UNRELIABLE
        level = number(run["target"], 4) + (" (own loss)" if at_own_loss else "")
        rows.append([run["method"], str(run["seed"]), run["state"], number(run["final_val_loss"], 4), level,
                     reached, number(run["cost_to_target_flops"]), *savings, _percent(run["outside_plain_large"])])
    return _table(headers, rows, markdown=True)


def _how_to_read(report: Report) -> str:
    """The censoring rule, the interval method and the seeds behind each interval (with a warning under 5)."""
    seeds = {row["method"]: int(row["n_done"]) for _, row in report.table.iterrows() if row["n_done"] > 0}
    counts = sorted(set(seeds.values()))
    per_method = (f"n = {counts[0]} finished seed(s) per method" if len(counts) == 1 else
                  "n finished seeds per method: " + ", ".join(f"{method} {n}" for method, n in seeds.items()))
    text = ("**How to read.** Every finished seed counts, judged against the scratch seed of the same number, which "
            "trained on the same batches and is scored on the same validation set. Each run's eval points are "
            "smoothed by a monotone (isotonic, non-increasing) fit, so no single noisy point sets a crossing; τ_s is "
            "scratch seed s's smoothed loss at its budget, and a seed's saving is 1 − its cost to τ_s / scratch seed "
            "s's cost to τ_s, both read off the fits (in FLOPs, then in each run's seconds, energy and dollars at "
            "that FLOPs value). A seed whose fit never gets down to τ_s is not censored at the budget: it is judged "
            "at its own smoothed loss at the budget, with scratch's cost to that loss, so a method worse than "
            "scratch reads negative. \"k/n reached\" says how many seeds got to τ_s, and a method that reaches it "
            "in fewer than half its seeds reads \"not reached\" (its matched value is in the paired verdicts below "
            "and in summary.csv). Intervals are 95% Student-t intervals on the mean (mean ± t(0.975, n−1)·s/√n) "
            f"over {per_method}; one seed gives a mean and no interval.")
    if counts and min(counts) < 5:
        text += (" With fewer than 5 seeds the interval is wide and itself uncertain (the spread is estimated "
                 "from a handful of values): read it as a rough range, and add seeds before trusting a "
                 "difference between methods.")
    return text + ("\n\n**outside plain LARGE** is the share of a method's executed FLOPs spent in phases other than "
                   "plain training of every parameter of the LARGE model: operator fitting (LiGO), teacher forward "
                   "passes (KI), shallow or partial stages (StackBERT, MSLT, bert2BERT); mean over finished seeds, "
                   "n/a where the run records do not mark plain LARGE phases (runs written before that column)."
                   "\n\n**MFU** (model FLOPs utilisation) is a run's executed FLOPs / (its train seconds × devices × "
                   "peak FLOP/s), each training phase against its own peak and weighted by its train seconds, mean "
                   "over finished seeds; the peak is named under \"How the costs were obtained\" (MFU peak). "
                   "\"unavailable\" where no peak is known for the device and math, n/a where the run records hold "
                   "no MFU (runs written before it).")


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


def _contended(runs: pd.DataFrame) -> bool:
    return "contended" in runs.columns and bool(runs["contended"].fillna(False).astype(bool).any())


def _unreliable_methods(report: Report) -> list[str]:
    table = report.table
    if "time_contended" not in table.columns:
        return []
    return [row["method"] for _, row in table.iterrows() if row["time_contended"] and row["method"] != REFERENCE_METHOD]


def _contention_warning(report: Report) -> str:
    """One paragraph: whose wall-time savings are unreliable and why, and whose reference-time savings rest on an
    unreliable calibration; nothing when neither."""
    methods = _unreliable_methods(report)
    runs, table = report.runs, report.table
    contended = runs[runs["contended"].fillna(False).astype(bool)] if "contended" in runs else runs.iloc[:0]
    uncalibrated = ([row["method"] for _, row in table.iterrows() if row["reference_unreliable"]]
                    if "reference_unreliable" in table.columns else [])
    parts = []
    if len(contended):
        parts.append(f"Contended runs (a phase's train step ran more than {CONTENTION_THRESHOLD:g}× slower than its "
                     "calibrated step, or, where the calibration is unreliable or absent, than the same phase in the "
                     f"fastest run): {', '.join(contended['folder'])}.")
    if methods:
        parts.append(f"Wall-time, energy and dollar savings of {', '.join(methods)} are shown as \"{UNRELIABLE}\": "
                     "they measure the machine's other work as much as the method.")
    if uncalibrated:
        problems = runs.loc[runs["calibration_problem"].astype(bool), "calibration_problem"] \
            if "calibration_problem" in runs else []
        first = f" (first: {problems.iloc[0]})" if len(problems) else ""
        parts.append(f"The calibration is unreliable for runs behind {', '.join(uncalibrated)}{first}: their "
                     f"reference-time savings are shown as \"{UNRELIABLE_CALIBRATION}\".")
    if methods or uncalibrated:
        parts.append("Trust FLOPs" + ("" if uncalibrated else " and reference-time savings")
                     + ", or rerun on a quiet machine.")
    return " ".join(parts)


def terminal_text(report: Report) -> str:
    """What `bench report` prints: τ, how savings and intervals are made, the main table and a contention warning (the
    warning when τ is not below the context-free reference line goes to stderr: bench/runner/comparison.py)."""
    warnings = [text for text in (_contention_warning(report),) if text]
    return (f"target val loss τ = {number(report.target, 4)} ({report.target_source}); {SAVINGS_RULE}\n\n"
            + format_main_table(report, markdown=False) + "".join(f"\n\n{text}" for text in warnings))


def _time_section(report: Report) -> str:
    """How reference time was made, which runs were contended and what that spoils, the before/after calibration
    drift, and how far energy can be trusted."""
    table, reference = calibration_summary(report.data)
    lines = [f"- **Reference time.** {reference}"]
    runs = report.runs
    judged = runs[runs["contended"].notna()] if "contended" in runs.columns else runs.iloc[:0]
    rule = (f"a phase is contended when, over at least {MIN_JUDGED_STEPS} steps, its train step took more than "
            f"{CONTENTION_THRESHOLD:g}× its calibrated step (forward, backward and update; `slowdown` in phases.csv), "
            "or, where the calibration is unreliable or absent, the fastest run's step of the same phase signature")
    if not len(judged):
        lines.append(f"- **Contention.** Not judged: the run records lack what it needs ({rule}).")
    elif not _contended(runs):
        lines.append(f"- **Contention.** None found in {len(judged)} judged run(s) ({rule}).")
    else:
        contended = runs[runs["contended"].fillna(False).astype(bool)]
        detail = "; ".join(f"{run['folder']}: {run['contended_phases']}" for _, run in contended.iterrows())
        lines.append(f"- **Contention.** {_contention_warning(report)} ({rule}; per run: {detail}.) FLOPs and "
                     "reference time (from a reliable calibration) do not depend on the machine's load and stay the "
                     "headline; for wall time, rerun the contended runs on a quiet machine (a new --out).")
    drift = drift_sentence(table)
    if drift:
        lines.append(f"- **Calibration before and after.** {drift}")
    methods = set(report.runs["energy_method"].dropna()) if "energy_method" in report.runs.columns else set()
    lines.append(f"- **Energy.** {energy_sentence(methods - {'n/a'})}")
    return "\n".join(lines)


def format_markdown(report: Report) -> str:
    manifest = report.manifest
    budget = manifest["budget"]
    budget_text = (f"{number(budget.get('value'))} {budget.get('unit', '')}".strip() if isinstance(budget, dict)
                   else str(budget))
    if isinstance(budget, dict) and budget.get("unit") != "flops" and isinstance(budget.get("flops"), (int, float)):
        budget_text += f" (≈ {number(budget['flops'])} FLOPs)"
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
            f"- target validation loss τ: {number(report.target, 4)} ({report.target_source}); "
            + reference_sentence(report.target, manifest),
            f"- parent (SMALL) cost from: {report.parent_source}",
        ]),
        "## Main table",
        ("Savings = 1 − cost to reach τ_s / scratch seed s's cost to τ_s, paired by seed on monotone fits, mean "
         "over all finished seeds [95% t-interval], with the parent's pretraining *sunk* (the papers' convention) "
         "unless marked charged; \"not reached\" means fewer than half the seeds got to τ_s within the budget; "
         "n/a means not measured."),
        _how_to_read(report),
        format_main_table(report, markdown=True),
        "## Savings by cost, parent sunk",
        _savings_table(report, "savings_"),
        "## Savings by cost, parent charged",
        ("The parent's whole pretraining cost added to the cost to τ of every method that uses the parent "
         "(KI too: its teacher is the parent)."),
        _savings_table(report, "savings_charged_"),
        verdicts_section(report, lambda headers, rows: _table(headers, rows, markdown=True)),
        "## What growth cost at the boundary",
        boundary_section(report, lambda headers, rows: _table(headers, rows, markdown=True)),
        "## Time, energy and contention",
        _time_section(report),
        "## How it was trained",
        training_section(manifest),
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
