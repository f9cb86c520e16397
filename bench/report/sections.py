"""report.md's sections on what the numbers are measured against and how the runs trained: the context-free
reference lines beside τ (also drawn on the loss plots), the loss around each phase boundary of the growth methods
("the growth bump"), and the training recipe with each method's schedule and optimizer settings.

Run directories written before these were recorded (no `reference_lines` in the manifest, no `val_loss_start` /
`val_loss_after_1pct` in phases.csv, no `train.recipe`) still report: each missing number reads "not recorded".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench.data.reference import reference_warning, strongest_line
from bench.report.read import REFERENCE_METHOD, RunRecord
from bench.sizes import Recipe

if TYPE_CHECKING:
    from bench.report import Report

NOT_RECORDED = "not recorded"

LINE_LABELS = {"unigram": "unigram", "unigram_copy": "unigram + copy", "bigram": "bigram"}
"""The manifest's reference lines, as report.md and the plots name them, weakest first."""

BOUNDARY_COLUMNS = ("val_loss_start", "val_loss_after_1pct", "steps_1pct")
"""phases.csv columns behind the growth-bump table (bench/train.py)."""

SCHEDULE_WORDS = {"continue": "no warmup after growth: the grown model starts at the peak lr",
                  "rewarm": "the recipe's warmup again, as scratch"}
OPTIMIZER_WORDS = {"carry": "AdamW's moments carry into the next stage where parameters map one to one",
                   "fresh": "a new AdamW per stage"}

MarkdownTable = Callable[[Sequence[str], Sequence[Sequence[str]]], str]
"""(headers, rows) -> a markdown table (tables.py's)."""


# --------------------------------------------------------------------------- reference lines


def reference_lines(manifest: dict) -> list[tuple[str, float]]:
    """(label, value) of each context-free line the manifest records, weakest first; [] for older manifests."""
    lines = manifest.get("reference_lines")
    if not isinstance(lines, dict):
        return []
    return [(label, float(lines[name])) for name, label in LINE_LABELS.items()
            if isinstance(lines.get(name), int | float) and math.isfinite(lines[name])]


def reference_note(target: float, manifest: dict) -> str | None:
    """The warning when τ is not below the strongest context-free line (bench.data.reference), else None."""
    lines = manifest.get("reference_lines")
    return reference_warning(target, lines if isinstance(lines, dict) else None)


def reference_sentence(target: float, manifest: dict) -> str:
    """'context-free lines on the same 10,080 predictions: unigram 6.66, unigram + copy 6.17 — τ is 0.36 below the
    unigram + copy line', or that they were not recorded."""
    shown = reference_lines(manifest)
    if not shown:
        return f"context-free lines: {NOT_RECORDED}"
    predictions = manifest["reference_lines"].get("predictions")
    counted = f" {predictions:,}" if isinstance(predictions, int) else ""
    text = (f"context-free lines on the same{counted} predictions: "
            + ", ".join(f"{label} {value:.3g}" for label, value in shown))
    strongest = strongest_line(manifest["reference_lines"])
    if strongest is not None and math.isfinite(target):
        name, value = strongest
        side = "below" if target < value else "above"
        text += f" — τ is {abs(value - target):.3g} {side} the {LINE_LABELS[name]} line"
    return text


# --------------------------------------------------------------------------- the growth bump


def _loss(value: float) -> str:
    return NOT_RECORDED if pd.isna(value) else f"{value:.4f}"


def _seed_mean(values: Sequence[float]) -> float:
    """Mean over seeds; NaN when any seed lacks the value (not a mean of the seeds that have it)."""
    return float(np.mean(values)) if len(values) else math.nan


def _phase_value(record: RunRecord, phase: str, column: str) -> float:
    phases = record.phases
    if column not in phases.columns:
        return math.nan
    values = pd.to_numeric(phases.loc[phases["phase"] == phase, column], errors="coerce")
    return float(values.iloc[0]) if len(values) else math.nan


def _phase_end(record: RunRecord, phase: str) -> float:
    """The last validation loss of `phase` on the run's curve (its model just before the next phase)."""
    losses = record.curve.loc[record.curve["phase"] == phase, "val_loss"].dropna() if record.curve is not None else []
    return float(losses.iloc[-1]) if len(losses) else math.nan


def _boundary_rows(report: Report) -> list[list[str]]:
    """Per growth method and phase, mean over finished seeds: loss before, at the start, after the first 1% of
    steps, how many steps that is, and the bump (after − start)."""
    parent_loss = report.data.parent.final_val_loss if report.data.parent is not None else math.nan
    rows = []
    for _, row in report.table.iterrows():
        method = row["method"]
        if method == REFERENCE_METHOD:
            continue
        records = [record for record in report.data.runs
                   if record.method == method and record.counted and record.phases is not None]
        if not records:
            rows.append([method, "-", "-", "no finished run", "-", "-", "-"])
            continue
        phases = list(dict.fromkeys(records[0].phases["phase"].astype(str)))
        for index, phase in enumerate(phases):
            start, after = (_seed_mean([_phase_value(record, phase, column) for record in records])
                            for column in BOUNDARY_COLUMNS[:2])
            if index:
                before = _loss(_seed_mean([_phase_end(record, phases[index - 1]) for record in records]))
            else:
                before = _loss(parent_loss) if row["needs_parent"] else "- (no parent)"
            steps = {_phase_value(record, phase, "steps_1pct") for record in records}
            steps_text = NOT_RECORDED if any(pd.isna(value) for value in steps) else "/".join(
                str(int(value)) for value in sorted(steps))
            bump = NOT_RECORDED if pd.isna(after - start) else f"{after - start:+.3g}"
            rows.append([method, phase, before, _loss(start), _loss(after), steps_text, bump])
    return rows


def boundary_section(report: Report, markdown_table: MarkdownTable) -> str:
    """'What growth cost at the boundary': one compact table of the loss around every phase boundary."""
    recorded = any(record.phases is not None and "val_loss_start" in record.phases.columns
                   for record in report.data.runs if record.counted)
    if not recorded:
        return (f"{NOT_RECORDED.capitalize()}: these run records predate phases.csv's `val_loss_start` and "
                "`val_loss_after_1pct`.")
    headers = ["method", "phase", "loss before", "at its start", "after first 1%", "steps in 1%", "bump"]
    return ("Validation loss around each phase boundary of the growth methods, mean over finished seeds. *Loss "
            "before*: for a method's first phase the parent's final validation loss (for KI the parent is only the "
            "teacher: its student starts from a random initialisation), for a later phase the previous phase's last "
            "validation loss. *At its start*: the phase's model before its first step (after any surgery). *After "
            "first 1%*: after the phase's first 1% of steps (at least one; *steps in 1%*). *Bump* = after first 1% − "
            "at its start: positive means the schedule or the surgery made the model worse before it got better.\n\n"
            + markdown_table(headers, _boundary_rows(report)))


# --------------------------------------------------------------------------- how it was trained


def _optimizer_line(optim: dict) -> str:
    """AdamW and its numbers from manifest["train"]["optim"] (bench.train.OptimConfig)."""
    if not isinstance(optim, dict) or not optim:
        return f"- optimizer: {NOT_RECORDED}"
    parts = [Recipe.optimizer]
    if "lr" in optim:
        parts.append(f"peak lr {optim['lr']:g}")
    if isinstance(optim.get("betas"), list | tuple):
        parts.append("betas (" + ", ".join(f"{beta:g}" for beta in optim["betas"]) + ")")
    if "eps" in optim:
        parts.append(f"eps {optim['eps']:g}")
    if "weight_decay" in optim:
        parts.append(f"weight decay {optim['weight_decay']:g} (matrices only)")
    if "warmup_fraction" in optim:
        parts.append(f"linear warmup over the first {100 * optim['warmup_fraction']:.3g}% of the budget, then linear "
                     "decay to 0 at the budget")
    if "grad_clip" in optim:
        parts.append(f"gradient norm clipped at {optim['grad_clip']:g}" if optim["grad_clip"] else "no clipping")
    return "- optimizer: " + ", ".join(parts)


def _method_line(method: str, settings: dict, recipe_recorded: bool) -> str:
    """'stackbert: schedule continue (no warmup after growth: ...), lr ×1': schedule, lr scale, stage optimizer and
    MSLT's embeddings; a method without a schedule setting follows the recipe's."""
    parts = []
    schedule = settings.get("schedule")
    if schedule is not None:
        words = SCHEDULE_WORDS.get(schedule)
        parts.append(f"schedule {schedule}" + (f" ({words})" if words else ""))
    else:
        parts.append("the recipe's schedule" if recipe_recorded else f"schedule {NOT_RECORDED}")
    if isinstance(settings.get("lr_scale"), int | float):
        parts.append(f"lr ×{settings['lr_scale']:g}")
    optimizer = settings.get("optimizer")
    if optimizer is not None:
        words = OPTIMIZER_WORDS.get(optimizer)
        parts.append(f"optimizer {optimizer}" + (f" ({words})" if words else ""))
    if settings.get("embeddings") is not None:
        parts.append(f"embeddings {settings['embeddings']}")
    return f"  - {method}: " + ", ".join(parts)


def training_section(manifest: dict) -> str:
    """'How it was trained': the recipe's name and source, the optimizer's numbers, one line per method."""
    train = manifest.get("train") if isinstance(manifest.get("train"), dict) else {}
    recipe = train.get("recipe") if isinstance(train.get("recipe"), dict) else None
    lines = [f"- recipe: {recipe.get('name', NOT_RECORDED)}; source: {recipe.get('source', NOT_RECORDED)}" if recipe
             else f"- recipe: {NOT_RECORDED}",
             _optimizer_line(train.get("optim")),
             "- per method (every setting under \"Method settings\"):"]
    lines += [_method_line(method, settings if isinstance(settings, dict) else {}, recipe is not None)
              for method, settings in manifest["methods"].items()]
    return "\n".join(lines)
