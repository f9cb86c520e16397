"""The audit of a run's books (`audit`, also run by `check` on every checked run).

For every finished run under runs/ (the parent's pretraining has its own budget and is not audited),
  budget     the phases' flops_executed add up to the budget's FLOPs within the run's dearest step;
  analytic   flops_analytic is within 5% of flops_executed in every phase where it is available;
  extra fwd  a phase that runs extra forward passes (extra_forwards > 0, e.g. KI's teacher) costs more per
             step than plain LARGE training: the run's own plain_large phase, else scratch's (same seed
             where there is one);
  charged    every phase that trains (steps > 0) is charged some FLOPs.
Each check that fails is a row with verdict BOOKS, and the gate fails. A check the records cannot answer
(a budget in tokens, records from before a column existed) is "n/a (why)", never a pass or a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.check.rows import BOOKS, OK, _columns
from bench.report import COUNTED_STATE, REFERENCE_METHOD, read_run_dir

ANALYTIC_TOLERANCE = 0.05  # flops_analytic may differ from flops_executed by this fraction of it


@dataclass
class AuditRow:
    """One check of one run's books (phases.csv against the manifest's budget and against itself)."""

    run: str  # the run's folder under runs/, e.g. "ki-s0"
    phase: str  # the phase checked; "(all)" for the budget, which is over every phase
    audit: str  # budget | analytic FLOPs | extra forwards | charged
    expected: str  # what the books should show
    recorded: str  # what they show
    verdict: str  # ok | BOOKS | n/a (why)
    detail: str = ""  # the numbers behind a BOOKS verdict, in words


AUDITS = ("budget", "analytic FLOPs", "extra forwards", "charged")


def _flops(value: float) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.4g}"


def _numbers(phases: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(phases[column], errors="coerce") if column in phases.columns else \
        pd.Series(math.nan, index=phases.index)


def _flags(phases: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column as written by pandas (True/False, 1/0), missing cells False."""
    if column not in phases.columns:
        return pd.Series(False, index=phases.index)
    return phases[column].map(lambda cell: str(cell).strip().lower() in ("true", "1", "1.0", "yes"))


def budget_flops(budget) -> tuple[float | None, str]:
    """The budget in FLOPs, or None and why not (a budget in tokens, seconds or steps has no FLOPs total)."""
    if not isinstance(budget, dict):
        return None, "no budget object in the manifest"
    flops = budget.get("flops")
    if isinstance(flops, (int, float)) and not isinstance(flops, bool) and flops > 0:
        return float(flops), ""
    value = budget.get("value")
    if budget.get("unit") == "flops" and isinstance(value, (int, float)) and value > 0:
        return float(value), ""
    return None, f"budget in {budget.get('unit', 'an unknown unit')}"


def _per_step(phases: pd.DataFrame) -> pd.Series:
    steps, flops = _numbers(phases, "steps"), _numbers(phases, "flops_executed")
    return (flops / steps).where(steps > 0)


def _audit_budget(folder: str, phases: pd.DataFrame, budget: float | None, why: str) -> AuditRow:
    row = AuditRow(folder, "(all)", "budget", "", "", OK)
    if budget is None:
        row.verdict = f"n/a ({why})"
        return row
    flops = _numbers(phases, "flops_executed")
    per_step = _per_step(phases)
    step = float(per_step.max()) if per_step.notna().any() else 0.0  # the run's dearest step
    row.expected = f"{_flops(budget)} ±{_flops(step)} (one step)"
    if flops.isna().any():
        missing = ", ".join(phases.loc[flops.isna(), "phase"].astype(str))
        row.recorded, row.verdict = "n/a", BOOKS
        row.detail = f"no flops_executed in phase(s) {missing}: the run's total is unknown"
        return row
    total = float(flops.sum())
    row.recorded = _flops(total)
    off = total - budget
    if abs(off) > step + 1e-9 * budget:
        row.verdict = BOOKS
        row.detail = (f"flops_executed adds up to {_flops(total)}, {'over' if off > 0 else 'under'} the budget "
                      f"{_flops(budget)} by {_flops(abs(off))}"
                      + (f" = {abs(off) / step:.2f} of its dearest step ({_flops(step)})" if step > 0 else ""))
    return row


def _audit_analytic(folder: str, phases: pd.DataFrame) -> list[AuditRow]:
    if "flops_analytic" not in phases.columns:
        return [AuditRow(folder, "(all)", "analytic FLOPs", "", "", "n/a (no flops_analytic column)")]
    rows = []
    executed, analytic = _numbers(phases, "flops_executed"), _numbers(phases, "flops_analytic")
    for index, name in phases["phase"].astype(str).items():
        row = AuditRow(folder, name, "analytic FLOPs", f"{_flops(executed[index])} ±{ANALYTIC_TOLERANCE:.0%}",
                       _flops(analytic[index]), OK)
        if pd.isna(analytic[index]):
            row.verdict = "n/a (analytic not available)"
        elif pd.isna(executed[index]) or abs(analytic[index] - executed[index]) > ANALYTIC_TOLERANCE * abs(
                executed[index]):
            row.verdict = BOOKS
            off = (f"{(analytic[index] - executed[index]) / executed[index]:+.1%}"
                   if executed[index] else "executed is 0")
            row.detail = (f"flops_analytic {_flops(analytic[index])} vs flops_executed {_flops(executed[index])}: "
                          f"{off}, beyond ±{ANALYTIC_TOLERANCE:.0%}")
        rows.append(row)
    return rows


def _plain_step_cost(phases: pd.DataFrame | None, require_flag: bool) -> tuple[float, str] | None:
    """(FLOPs per step, phase name) of the first phase that trains plain LARGE; None when there is none."""
    if phases is None or "phase" not in phases.columns:
        return None
    per_step = _per_step(phases)
    plain = _flags(phases, "plain_large") if (require_flag or "plain_large" in phases.columns) else \
        pd.Series(True, index=phases.index)
    plain &= ~(_numbers(phases, "extra_forwards").fillna(0) > 0) & per_step.notna()
    if not plain.any():
        return None
    first = plain[plain].index[0]
    return float(per_step[first]), str(phases.loc[first, "phase"])


def _audit_extra_forwards(record, phases: pd.DataFrame, scratch: list) -> list[AuditRow]:
    if "extra_forwards" not in phases.columns:
        return [AuditRow(record.folder, "(all)", "extra forwards", "", "",
                         "n/a (no extra_forwards column: records from before it)")]
    rows = []
    extra, per_step = _numbers(phases, "extra_forwards").fillna(0), _per_step(phases)
    for index in phases.index[extra > 0]:
        name = str(phases.loc[index, "phase"])
        row = AuditRow(record.folder, name, "extra forwards", "", _flops(per_step[index]) + "/step", OK)
        if pd.isna(per_step[index]):
            row.verdict = "n/a (no steps)"
            rows.append(row)
            continue
        counterpart = _plain_step_cost(phases, require_flag=True)
        where = f"its own {counterpart[1]}" if counterpart else ""
        if counterpart is None:
            ordered = sorted(scratch, key=lambda other: other.seed != record.seed)  # the same seed first
            for other in ordered:
                counterpart = _plain_step_cost(other.phases, require_flag=False)
                if counterpart:
                    where = f"{other.folder} {counterpart[1]}"
                    break
        if counterpart is None:
            row.verdict = "n/a (no plain LARGE phase to compare with)"
        else:
            row.expected = f"> {_flops(counterpart[0])}/step ({where})"
            if not per_step[index] > counterpart[0]:
                row.verdict = BOOKS
                row.detail = (f"{name} runs {int(extra[index])} extra forward(s) per step but is charged "
                              f"{_flops(per_step[index])} FLOPs/step, no more than plain LARGE training "
                              f"({where}: {_flops(counterpart[0])}/step)")
        rows.append(row)
    return rows


def _audit_charged(folder: str, phases: pd.DataFrame) -> list[AuditRow]:
    if "steps" not in phases.columns:
        return [AuditRow(folder, "(all)", "charged", "", "", "n/a (no steps column)")]
    rows = []
    steps, flops = _numbers(phases, "steps"), _numbers(phases, "flops_executed")
    for index in phases.index[steps > 0]:
        name = str(phases.loc[index, "phase"])
        row = AuditRow(folder, name, "charged", "> 0", _flops(flops[index]), OK)
        if not flops[index] > 0:
            row.verdict = BOOKS
            row.detail = f"{name} trains {int(steps[index])} step(s) but is charged {_flops(flops[index])} FLOPs"
        rows.append(row)
    return rows


def audit_data(data) -> list[AuditRow]:
    """The books of every finished run in `data` (bench.report.read_run_dir's RunData)."""
    budget, why = budget_flops(data.manifest.get("budget"))
    finished = [record for record in data.runs if record.state == COUNTED_STATE]
    scratch = [record for record in finished if record.method == REFERENCE_METHOD]
    rows = []
    for record in finished:
        phases = record.phases
        if phases is None or "phase" not in phases.columns or phases.empty:
            rows.append(AuditRow(record.folder, "(all)", "budget", "phases.csv", "none", BOOKS,
                                 "a finished run without phases.csv: nothing it spent is on the books"))
            continue
        phases = phases.reset_index(drop=True)
        rows.append(_audit_budget(record.folder, phases, budget, why))
        rows += _audit_analytic(record.folder, phases)
        rows += _audit_extra_forwards(record, phases, scratch)
        rows += _audit_charged(record.folder, phases)
    return rows


def audit(run_dir: Path) -> list[AuditRow]:
    """The books of every finished run in `run_dir`, no baseline needed; BenchError when it cannot be read."""
    return audit_data(read_run_dir(Path(run_dir)))


def format_audit(rows: list[AuditRow]) -> str:
    """BOOKS rows in full; the checks that passed, and those the records could not answer, counted."""
    runs = len({row.run for row in rows})
    failures = [row for row in rows if row.verdict == BOOKS]
    lines = [f"books: {len(failures)} failure(s) over {runs} finished run(s)"]
    if failures:
        headers = ["run", "phase", "audit", "expected", "recorded", "verdict", "detail"]
        lines += ["", _columns(headers, [[getattr(row, name) for name in AuditRow.__dataclass_fields__]
                                         for row in failures]), ""]
    for audit_name in AUDITS:
        mine = [row for row in rows if row.audit == audit_name]
        passed = sum(row.verdict == OK for row in mine)
        counts: dict[str, int] = {}
        for row in mine:
            if row.verdict.startswith("n/a"):
                counts[row.verdict] = counts.get(row.verdict, 0) + 1
        parts = [f"{passed} ok"] + [f"{count} {verdict}" for verdict, count in counts.items()]
        if any(row.verdict == BOOKS for row in mine):
            parts.insert(0, f"{sum(row.verdict == BOOKS for row in mine)} BOOKS")
        lines.append(f"  {audit_name}: " + ", ".join(parts))
    return "\n".join(lines)
