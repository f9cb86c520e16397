"""The sweep's tables: the cells and tables of report.md and the terminal (savings, break-even, equal-budget
quality, savings by parent), and the frames of breakeven.csv and extrapolated.csv (sweep.csv is the sweep's rows).

Measured and extrapolated numbers never share a table: extrapolated.csv holds the power-law fit's values alone, every
value column named extrapolated_*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.report.read import REFERENCE_METHOD
from bench.sweep.analysis import (
    FAILED_STATE,
    INCOMPLETE,
    NOT_RUN,
    REFERENCE,
    SAVINGS_KEYS,
    BreakEven,
    BreakEvenRow,
    Sweep,
    savings_column,
)
from bench.sweep.fit import Extrapolation
from bench.sweep.points import Plan

CONTENDED_MARK = "†"
WORDS = {"savings": {"stops": "stops paying", "starts": "starts paying", "yes": "saves", "no": "saves"},
         "quality": {"stops": "stops beating scratch", "starts": "starts beating scratch", "yes": "beats scratch",
                     "no": "beats scratch"}}


# --------------------------------------------------------------------------- formatting


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = True) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def percent(value: float) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def sci(value: float, digits: int = 2) -> str:
    """2e+11 -> '2e11', 1.5e+13 -> '1.5e13'."""
    mantissa, _, exponent = f"{value:.{digits}g}".partition("e")
    return mantissa if not exponent else f"{mantissa}e{int(exponent)}"


def budget_text(flops: float, plan: Plan, short: bool = False) -> str:
    """'1.41x (423 steps, 2.9e13 FLOPs)': a budget relative to the reference budget, in steps of LARGE and FLOPs."""
    ratio, steps = flops / plan.reference_flops, flops / plan.large_step_flops
    if short:
        return f"{ratio:.3g}x"
    return f"{ratio:.3g}x ({steps:.0f} steps, {sci(flops)} FLOPs)"


def label_of(flops: float, sweep: Sweep) -> str:
    """The budget label of a measured budget (its FLOPs as the rows hold them)."""
    rows = sweep.rows[np.isclose(sweep.rows["budget_flops"], flops, rtol=1e-9)]
    return str(rows["budget"].iloc[0]) if len(rows) else budget_text(flops, sweep.plan, short=True)


def break_even_text(result: BreakEven, sweep: Sweep, kind: str = "savings", short: bool = False) -> str:
    """One cell: every crossing with its bracket, or why there is none ('never: saves at every budget measured');
    `short` for the terminal: the crossing's multiple of the reference budget and its bracket only."""
    words = WORDS[kind]
    if result.kind == "no data":
        return "no measured point"
    first, last = label_of(result.budgets[0], sweep), label_of(result.budgets[-1], sweep)
    if result.crossings:
        parts = []
        for crossing in result.crossings:
            low, high = label_of(crossing.low, sweep), label_of(crossing.high, sweep)
            if short:
                parts.append(f"{words[crossing.direction]} {crossing.bound} "
                             f"{budget_text(crossing.at, sweep.plan, short=True)} ({low}–{high})")
            else:
                parts.append(f"{words[crossing.direction]} {crossing.bound} {budget_text(crossing.at, sweep.plan)}, "
                             f"between {low} and {high}")
        if len(result.crossings) == 1:
            text = parts[0]
            band = result.band
            if band is not None and not short and result.crossings[0].bound == "≈" and band[0] < band[1]:
                low, high = (("below " + first) if end == -math.inf else ("beyond " + last) if end == math.inf
                             else budget_text(end, sweep.plan, short=True) for end in band)
                text += f" (95% band: {low} to {high})"
            return text
        count = {2: "twice"}.get(len(result.crossings), f"{len(result.crossings)} times")
        return f"crosses 0 {count}: " + "; ".join(parts)
    everywhere = result.kind == "saves everywhere"
    verb = {("savings", True): "saves at every budget measured", ("savings", False): "saves at no budget measured",
            ("quality", True): "beats scratch at every budget measured",
            ("quality", False): "beats scratch at no budget measured"}[kind, everywhere]
    if len(result.budgets) == 1:
        return f"one budget measured ({first}): " + verb.replace("every budget measured", "it").replace(
            "no budget measured", "it: no")
    trend = "falling" if everywhere else "rising"
    hints = set(result.hints)
    if hints == {"beyond the largest"}:
        where, why = f"beyond the largest budget measured ({last})", f"{trend} toward it"
    elif hints == {"below the smallest"}:
        where, why = f"below the smallest budget measured ({first})", f"{trend} toward it"
    elif hints:
        where, why = f"outside {first}–{last}", f"{trend} toward both ends"
    else:
        where, why = "never", None
    if not everywhere and why:
        where += ", if anywhere"
    if short:
        return f"{where.replace(' budget measured', '')} ({verb.split(' at ')[0]} at "\
               f"{'all' if everywhere else 'none'} of {first}–{last}{', ' + trend if why else ''})"
    return f"{where}: {verb}" + (f", {why}" if why else f" ({first}–{last})")


def break_even_cell(row: BreakEvenRow, sweep: Sweep, short: bool = False) -> str:
    text = break_even_text(row.result, sweep, "quality" if row.basis == "quality" else "savings", short)
    if row.skipped:
        text += f" ({', '.join(row.skipped)})" if short else f" (not measured: {', '.join(row.skipped)})"
    if row.contended:
        text += f" {CONTENDED_MARK} contended at {', '.join(row.contended)}"
    return text


def _savings_cell(row: pd.Series, name: str) -> str:
    """A (point, method) savings cell as bench report writes it, or the point's state."""
    state = row["state"]
    if state == REFERENCE:
        return "reference"
    if state == FAILED_STATE:
        return "**failed**"
    if state in (INCOMPLETE, NOT_RUN):
        return state
    if pd.isna(row["reached"]):
        return "n/a"
    if not row["reached"]:
        return f"not reached ({row['n_reached']}/{row['n_done']})"
    if pd.isna(row[name]):
        return "n/a"
    text = percent(row[name])
    if not pd.isna(row[f"{name}_lo"]):
        text += f" [{100 * row[f'{name}_lo']:.1f}, {100 * row[f'{name}_hi']:.1f}]"
    if name.endswith("train_s") and row["time_contended"] is True:
        text += f" {CONTENDED_MARK}"
    return text


def _loss_cell(row: pd.Series) -> str:
    state = row["state"]
    if state == FAILED_STATE:
        return "**failed**"
    if state in (INCOMPLETE, NOT_RUN):
        return state
    if pd.isna(row["final_val_loss"]):
        return "n/a"
    text = f"{row['final_val_loss']:.4f}"
    if not pd.isna(row["final_val_loss_lo"]):
        text += f" [{row['final_val_loss_lo']:.4f}, {row['final_val_loss_hi']:.4f}]"
    return text


def _cell_row(sweep: Sweep, method: str, parent: int, label: str) -> pd.Series | None:
    match = sweep.rows[(sweep.rows["method"] == method) & (sweep.rows["parent_steps"] == parent)
                       & (sweep.rows["budget"] == label)]
    return match.iloc[0] if len(match) else None


def _by_budget(sweep: Sweep, cell, methods: Sequence[str], last: Sequence[str] = (), extra=None) -> str:
    """Rows (method, and parent when there are several) by columns (budgets, smallest first)."""
    several = len(sweep.plan.parent_steps) > 1
    labels = [budget.label for budget in sweep.plan.budgets]
    rows = []
    for index, parent in enumerate(sweep.plan.parent_steps):
        for method in methods:
            if method == REFERENCE_METHOD and index > 0:
                continue  # scratch does not depend on the parent
            cells = []
            for label in labels:
                row = _cell_row(sweep, method, parent, label)
                cells.append("not run" if row is None else cell(row))
            parent_cell = ["—" if method == REFERENCE_METHOD else str(parent)] if several else []
            rows.append([method, *parent_cell, *cells, *([extra(method, parent)] if extra else [])])
    return text_table(["method", *(["parent steps"] if several else []), *labels, *last], rows)


def savings_table(sweep: Sweep, key: str, basis: str) -> str:
    name = savings_column(key, basis)
    methods = [method for method in sweep.plan.methods if method != REFERENCE_METHOD]
    return _by_budget(sweep, lambda row: _savings_cell(row, name), methods)


def break_even_table(sweep: Sweep, rows: list[BreakEvenRow], bases: Sequence[str], markdown: bool = True) -> str:
    headers = ["method", *(["parent steps"] if len(sweep.plan.parent_steps) > 1 else []),
               *(basis_header(basis, sweep.amortize) for basis in bases)]
    table = []
    for parent in sweep.plan.parent_steps:
        for method in sweep.plan.methods:
            if method == REFERENCE_METHOD:
                continue
            cells = []
            for basis in bases:
                match = [row for row in rows if row.method == method and row.parent_steps == parent
                         and row.basis == basis]
                cells.append(break_even_cell(match[0], sweep, short=not markdown) if match else "n/a")
            table.append([method, *([str(parent)] if len(sweep.plan.parent_steps) > 1 else []), *cells])
    return text_table(headers, table, markdown)


def basis_header(basis: str, k: float) -> str:
    if basis == "quality":
        return "final loss vs scratch at equal budget"
    key, _, how = basis.partition("_")
    if key == "train":  # train_s_<basis>
        key, how = "train_s", basis.split("_")[-1]
    what = SAVINGS_KEYS[key]
    parent = {"sunk": "parent sunk", "charged": "parent charged", "amortized": f"parent amortised over {k:g}"}[how]
    return f"{what}, {parent}"


def quality_table(sweep: Sweep, rows: list[BreakEvenRow]) -> str:
    def crossing(method: str, parent: int) -> str:
        if method == REFERENCE_METHOD:
            return "reference"
        match = [row for row in rows if row.method == method and row.parent_steps == parent and row.basis == "quality"]
        return break_even_cell(match[0], sweep) if match else "n/a"

    return _by_budget(sweep, _loss_cell, sweep.plan.methods, ["where it crosses scratch"], crossing)


def parent_grid_table(sweep: Sweep, method: str) -> str:
    """Savings of one method by (parent steps, budget): FLOPs sunk / charged (amortised when K ≠ 1)."""
    budgets = [budget.label for budget in sweep.plan.budgets]
    bases = ["sunk", "charged", *(["amortized"] if sweep.amortize != 1 else [])]
    rows = []
    for parent in sweep.plan.parent_steps:
        cells = []
        for label in budgets:
            match = sweep.rows[(sweep.rows["method"] == method) & (sweep.rows["budget"] == label)
                               & (sweep.rows["parent_steps"] == parent)]
            if not len(match):
                cells.append("not run")
                continue
            row = match.iloc[0]
            values = [_savings_cell(row, savings_column("flops", basis)).split(" [")[0] for basis in bases]
            cells.append(values[0] if len(set(values)) == 1 and not values[0].endswith("%") else " / ".join(values))
        rows.append([str(parent), *cells])
    return text_table(["parent steps", *budgets], rows)


# --------------------------------------------------------------------------- csv frames


def break_even_frame(sweep: Sweep, rows: list[BreakEvenRow]) -> pd.DataFrame:
    """breakeven.csv: one row per (method, parent, basis): the crossings (up to every one) and the cell's words."""
    records = []
    for row in rows:
        record = {"method": row.method, "parent_steps": row.parent_steps, "basis": row.basis,
                  "kind": row.result.kind, "crossings": len(row.result.crossings),
                  "text": break_even_cell(row, sweep), "not_measured": "; ".join(row.skipped),
                  "contended": "; ".join(row.contended),
                  "band_low_flops": row.result.band[0] if row.result.band else math.nan,
                  "band_high_flops": row.result.band[1] if row.result.band else math.nan}
        for index, crossing in enumerate(row.result.crossings, 1):
            record.update({f"crossing_{index}_flops": crossing.at,
                           f"crossing_{index}_ratio": crossing.at / sweep.plan.reference_flops,
                           f"crossing_{index}_steps": crossing.at / sweep.plan.large_step_flops,
                           f"crossing_{index}_direction": crossing.direction,
                           f"crossing_{index}_bound": crossing.bound,
                           f"crossing_{index}_between": f"{label_of(crossing.low, sweep)}–"
                                                        f"{label_of(crossing.high, sweep)}"})
        records.append(record)
    return pd.DataFrame(records)


def extrapolated_frame(fitted: Extrapolation) -> pd.DataFrame:
    """extrapolated.csv: the fits, their residuals and the extrapolated break-evens, told apart by `table`."""
    return pd.concat([fitted.parameters.assign(table="fit"), fitted.residuals.assign(table="residual"),
                      fitted.break_even.assign(table="break_even")], ignore_index=True)


__all__ = ["CONTENDED_MARK", "basis_header", "break_even_cell", "break_even_frame", "break_even_table",
           "break_even_text", "budget_text", "extrapolated_frame", "label_of", "parent_grid_table", "percent",
           "quality_table", "savings_table", "sci", "text_table"]
