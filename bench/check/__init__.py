"""The CI gate: compare a run with a committed baseline, both ways, and audit the run's books.

Judged always, in both directions (hardware-independent): reached / not reached, FLOPs savings, final
validation loss. A move the worse way beyond the tolerance is a REGRESSION; a move the better way beyond it
fails too, as "improved — refresh the baseline with `bench baseline`" (accounting.md, "CI gate"): an
unexplained improvement is as likely a dropped charge as a better method, so whoever made it says so by
refreshing the baseline in the same change. Their tolerance is what two runs of the same code differ by
(reproduction noise, with a margin; floors where none was measured: baseline.py), not the seed spread: CI
re-runs the baseline's own seeds.
Judged only when the hardware fingerprint matches: reference-time, wall-time and energy savings, and those on
the interval: they regress only when the current run's whole 95% interval over seeds lies below the
baseline's band (max(floor, s / √n)), since one run's wall time on a shared 2-core machine moves by 10–20
points. Moving the better way beyond the tolerance is reported as "improved" and never fails.
Every checked run's books are audited too (books.py); a check that fails there fails the gate.

Layout: baseline.py (the baseline and its tolerances: writing, loading, validating it), books.py (the audit
of a run's books), rows.py (the verdicts and the table they print in); this module judges a run against its
baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.check.baseline import (
    QUANTITIES,
    SEED_SPREAD_FORMAT,
    Quantity,
    complete,
    hardware_fingerprint,
    load_baseline,
    reference_unreliable,
    time_contended,
    write_baseline,
)
from bench.check.books import AuditRow, audit, audit_data, format_audit
from bench.check.rows import BOOKS, FAILING, IMPROVED, IMPROVED_FAILS, OK, REGRESSION, _columns
from bench.errors import BenchError
from bench.report import REFERENCE_METHOD, analyse

__all__ = ["BOOKS", "IMPROVED_FAILS", "QUANTITIES", "AuditRow", "CheckResult", "CheckRow", "audit", "check",
           "format_audit", "write_baseline"]


@dataclass
class CheckRow:
    method: str
    quantity: str
    baseline: str
    tolerance: str
    now: str
    change: str
    verdict: str  # ok | REGRESSION | improved — refresh … (fails) | improved (hardware-bound) | skipped | n/a


@dataclass
class CheckResult:
    ok: bool  # False on a regression, an improvement of a hardware-independent quantity, or a BOOKS row
    text: str
    notes: list[str] = field(default_factory=list)
    rows: list[CheckRow] = field(default_factory=list)  # the comparison with the baseline
    books: list[AuditRow] = field(default_factory=list)  # the audit of the run's books

    @property
    def failures(self) -> list[CheckRow | AuditRow]:
        return [row for row in (*self.rows, *self.books) if row.verdict in FAILING]



def _format(quantity: Quantity, value: float | None) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{100 * value:.1f}%" if quantity.is_savings else f"{value:.4f}"


def _format_change(quantity: Quantity, change: float) -> str:
    return f"{100 * change:+.1f} pts" if quantity.is_savings else f"{change:+.4f}"


def _judge(quantity: Quantity, expected: dict, now: float, method: str,
           interval: tuple[float, float] | None = None) -> CheckRow:
    """ok / improved / REGRESSION of `now` against the baseline. With `interval` (the current run's 95%
    interval over seeds), a noisy quantity regresses only when the whole interval lies beyond the band.
    A hardware-independent quantity that improved beyond the tolerance fails (IMPROVED_FAILS)."""
    base, tolerance = expected["value"], expected["tolerance"]
    row = CheckRow(method, quantity.label, _format(quantity, base), "±" + _format_change(quantity, tolerance)[1:],
                   _format(quantity, now), "", OK)
    if base is None:
        row.verdict = "n/a (not in baseline)"
    elif pd.isna(now):
        row.verdict = "n/a (not measured now)"
    else:
        change = now - base
        row.change = _format_change(quantity, change)
        low, high = interval if interval is not None and not pd.isna(interval[0]) else (now, now)
        worst, best = (low, high) if quantity.higher_is_better else (high, low)
        sign = 1 if quantity.higher_is_better else -1
        improved = IMPROVED if quantity.hardware_dependent else IMPROVED_FAILS
        row.verdict = (REGRESSION if sign * (best - base) < -tolerance
                       else improved if sign * (worst - base) > tolerance else OK)
    return row


def _method_rows(method: str, expected: dict, current: pd.Series, same_hardware: bool) -> list[CheckRow]:
    if current["n_done"] == 0:
        return [CheckRow(method, "finished runs", str(expected.get("n_done", "?")), "", "0", "", REGRESSION)]
    if method == REFERENCE_METHOD:  # the target is scratch's own mean: only its loss says anything
        loss = next(quantity for quantity in QUANTITIES if quantity.column == "final_val_loss")
        return [_judge(loss, expected["quantities"][loss.column], current[loss.column], method)]
    reached_now = None if pd.isna(current["reached"]) else bool(current["reached"])
    reached_then = expected["reached"]

    def word(reached):
        return "n/a" if reached is None else "reached" if reached else "not reached"

    verdict = ("n/a (no target)" if reached_now is None or reached_then is None
               else OK if reached_now == reached_then else IMPROVED_FAILS if reached_now else REGRESSION)
    rows = [CheckRow(method, "reaches target", word(reached_then), "", word(reached_now), "", verdict)]
    for quantity in QUANTITIES:
        expected_quantity = expected["quantities"].get(quantity.column)
        if expected_quantity is None:
            continue
        if quantity.hardware_dependent and not same_hardware:
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "", "skipped (other hardware)"))
        elif quantity.follows_wall_time and (time_contended(current) or expected.get("time_contended", False)):
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "",
                                 "skipped (contended: the machine ran other work)"))
        elif quantity.follows_calibration and (reference_unreliable(current)
                                               or expected.get("reference_unreliable", False)):
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "",
                                 "skipped (unreliable calibration)"))
        elif quantity.is_savings and not (reached_now and reached_then):
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "", "n/a (target not reached)"))
        else:
            interval = ((current.get(f"{quantity.column}_lo"), current.get(f"{quantity.column}_hi"))
                        if quantity.hardware_dependent else None)
            rows.append(_judge(quantity, expected_quantity, current[quantity.column], method, interval))
    return rows


def _table_text(rows: list[CheckRow]) -> str:
    return _columns(["method", "quantity", "baseline", "tolerance", "now", "change", "verdict"],
                    [[getattr(row, name) for name in CheckRow.__dataclass_fields__] for row in rows])


def check(run_dir: Path, baseline_path: Path, allow_incomplete: bool = False) -> CheckResult:
    """Judge the run in `run_dir` against the baseline and audit its books; ok is False when anything
    regressed, a hardware-independent quantity improved beyond its tolerance, or the books do not add up."""
    baseline = load_baseline(baseline_path)
    report = analyse(run_dir)
    unfinished_runs = complete(report, allow_incomplete, "the gate judges complete comparisons")
    manifest = report.manifest
    if baseline["pair"] != manifest["pair"]:
        raise BenchError(f"baseline {baseline_path} is for pair {baseline['pair']}, the run is {manifest['pair']}")
    budget_then, budget_now = baseline["budget"], manifest["budget"]
    if not isinstance(budget_then, dict) or not isinstance(budget_now, dict) or (
            (budget_then.get("unit"), budget_then.get("value")) != (budget_now.get("unit"), budget_now.get("value"))):
        raise BenchError(f"baseline {baseline_path} has budget {budget_then}, the run has {budget_now}")
    table = report.table.set_index("method")
    missing = [method for method in baseline["methods"] if method not in table.index]
    if missing:
        raise BenchError(f"the run in {run_dir} lacks method(s) {', '.join(missing)} that baseline {baseline_path} has")

    notes = [f"Incomplete (--allow-incomplete): judged without {', '.join(unfinished_runs)}."] \
        if unfinished_runs else []
    same_hardware = baseline["hardware_fingerprint"] == hardware_fingerprint(manifest.get("hardware"))
    if not same_hardware:
        notes.append(f"Hardware differs from the baseline's ({baseline['hardware_fingerprint']} vs "
                     f"{hardware_fingerprint(manifest.get('hardware'))}): judged only hardware-independent "
                     "quantities (reached, FLOPs savings, final loss); time and energy skipped.")
    if baseline["format"] == SEED_SPREAD_FORMAT:
        notes.append(f"Baseline {baseline_path} is of the older format {SEED_SPREAD_FORMAT}: its tolerances are the "
                     "seed spread's (max(floor, s / sqrt(n))), not reproduction noise; write it again with "
                     "`bench baseline RUN --out F --reproduction DIR ...`.")
    if baseline.get("seeds") != manifest.get("seeds"):
        notes.append(f"Seeds differ: baseline {baseline.get('seeds')}, this run {manifest.get('seeds')}.")
    new_methods = [method for method in table.index if method not in baseline["methods"]]
    if new_methods:
        notes.append(f"Not in the baseline, not judged: {', '.join(new_methods)}.")
    rows = [row for method, expected in baseline["methods"].items()
            for row in _method_rows(method, expected, table.loc[method], same_hardware)]
    books = audit_data(report.data)
    regressions = sum(row.verdict == REGRESSION for row in rows)
    improved = sum(row.verdict == IMPROVED_FAILS for row in rows)
    noisy_improved = sum(row.verdict == IMPROVED for row in rows)
    failures = sum(row.verdict == BOOKS for row in books)
    summary = (f"{regressions} regression(s), {improved} improvement(s) beyond tolerance"
               + (" (refresh the baseline with `bench baseline` if they are meant)" if improved else "")
               + f", {failures} books failure(s); {len(rows)} quantities compared against {baseline_path}"
               + (f"; {noisy_improved} hardware-bound improvement(s), not failures" if noisy_improved else ""))
    text = "\n\n".join([summary, _table_text(rows), format_audit(books), *(f"note: {note}" for note in notes)])
    return CheckResult(not (regressions or improved or failures), text, notes, rows, books)
