"""The CI gate: compare a run's savings with a committed baseline and fail on a regression.

A baseline (JSON, written by `write_baseline` from a run directory) records the pair, budget, seeds, a
hardware fingerprint and, per method: whether it reached the target, and each judged quantity's
expected value (mean over seeds) with a tolerance.

Tolerance = max(floor, s / √n): one standard error of the baseline's mean over its n seeds (s the sample
standard deviation). CI reruns the same seeds, and a seeded CPU run reproduces bit for bit, so any movement
of a hardware-independent quantity is a code change; the gate lets through what merely re-drawing the seeds
would typically move, and no more. (Three standard errors of a difference of means, the test for fresh
seeds, came to ±50 points of FLOPs savings at 3 seeds: a gate that could not fail.) The floors keep rounding
from failing a run and are wider for the noisy, hardware-bound quantities.

Judged always (hardware-independent): reached / not reached, FLOPs savings, final validation loss.
Judged only when the hardware fingerprint matches: reference-time, wall-time and energy savings, and those on
the interval (accounting.md): they regress only when the current run's whole 95% interval over seeds lies
below the baseline's band, since one run's wall time on a shared 2-core machine moves by 10–20 points.
Moving the better way beyond the tolerance is reported as "improved", never as a failure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import read_json, write_json
from bench.report import COUNTED_STATE, REFERENCE_METHOD, Report, analyse

BASELINE_FORMAT = "growbench-baseline/1"


@dataclass(frozen=True)
class Quantity:
    column: str  # the column in Report.table (mean) and Report.runs (per seed)
    label: str
    floor: float  # the narrowest tolerance, in the column's unit (savings: a fraction, 0.02 = 2 points)
    higher_is_better: bool
    hardware_dependent: bool
    is_savings: bool = True


QUANTITIES = (
    Quantity("savings_flops", "FLOPs savings", 0.02, True, False),
    Quantity("final_val_loss", "final val loss", 0.02, False, False, is_savings=False),
    Quantity("savings_reference_s", "reference-time savings", 0.05, True, True),
    Quantity("savings_train_s", "wall-time savings", 0.10, True, True),
    Quantity("savings_energy_kwh", "energy savings", 0.15, True, True),
)

HARDWARE_KEYS = ("cpu_model", "cpu_cores", "torch_threads", "gpu_count", "gpu_model")
"""The entries of the manifest's hardware (bench.hardware.hardware_fingerprint) that decide whether times and
energy are comparable; software versions and the driver are recorded there but do not split baselines."""


def hardware_fingerprint(hardware: dict | None) -> str:
    hardware = hardware or {}
    picked = {key: hardware[key] for key in HARDWARE_KEYS if key in hardware}
    return json.dumps(picked or hardware, sort_keys=True, default=str)


# --------------------------------------------------------------------------- writing a baseline


def _seed_values(report: Report, method: str, quantity: Quantity) -> np.ndarray:
    """The per-seed values behind the table's mean: savings over the seeds that reached τ, loss over all done."""
    runs = report.runs[(report.runs["method"] == method) & (report.runs["state"] == COUNTED_STATE)]
    if quantity.is_savings:
        runs = runs[runs["reached"].fillna(False).astype(bool)]
    values = runs[quantity.column].to_numpy(float)
    return values[~np.isnan(values)]


def _tolerance(values: np.ndarray, floor: float) -> float:
    if len(values) < 2:
        return floor
    return max(floor, float(np.std(values, ddof=1)) / math.sqrt(len(values)))


def _json_number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def make_baseline(report: Report) -> dict:
    unfinished = report.table.loc[report.table["n_done"] == 0, "method"].tolist()
    if unfinished:
        raise BenchError(f"cannot write a baseline from {report.run_dir}: no finished run of {', '.join(unfinished)}")
    if math.isnan(report.target):
        raise BenchError(f"cannot write a baseline from {report.run_dir}: it has no target (no finished scratch run)")
    methods = {}
    for _, row in report.table.iterrows():
        quantities = {}
        for quantity in QUANTITIES:
            values = _seed_values(report, row["method"], quantity)
            quantities[quantity.column] = {"value": _json_number(row[quantity.column]),
                                           "tolerance": _tolerance(values, quantity.floor),
                                           "seeds": len(values)}
        methods[row["method"]] = {"reached": None if pd.isna(row["reached"]) else bool(row["reached"]),
                                  "n_done": int(row["n_done"]), "n_reached": int(row["n_reached"]),
                                  "quantities": quantities}
    manifest = report.manifest
    return {
        "format": BASELINE_FORMAT,
        "pair": manifest["pair"],
        "budget": manifest["budget"],
        "seeds": manifest.get("seeds"),
        "hardware": manifest.get("hardware"),
        "hardware_fingerprint": hardware_fingerprint(manifest.get("hardware")),
        "target": _json_number(report.target),
        "tolerance_rule": "max(floor, std over seeds / sqrt(n))",
        "floors": {quantity.column: quantity.floor for quantity in QUANTITIES},
        "methods": methods,
    }


def write_baseline(run_dir: Path, out: Path) -> dict:
    """Write the baseline of the run in `run_dir` to `out` (JSON) and return it."""
    baseline = make_baseline(analyse(run_dir))
    write_json(Path(out), baseline)
    return baseline


# --------------------------------------------------------------------------- checking a run against it


@dataclass
class CheckRow:
    method: str
    quantity: str
    baseline: str
    tolerance: str
    now: str
    change: str
    verdict: str  # ok | improved | REGRESSION | skipped (...) | n/a (...)


@dataclass
class CheckResult:
    ok: bool
    text: str
    notes: list[str] = field(default_factory=list)
    rows: list[CheckRow] = field(default_factory=list)


def load_baseline(path: Path) -> dict:
    """The baseline at `path`, validated; BenchError when it is missing or malformed."""
    baseline = read_json(Path(path))
    problem = _baseline_problem(baseline)
    if problem:
        raise BenchError(f"baseline {path} is malformed: {problem}")
    return baseline


def _baseline_problem(baseline) -> str | None:
    if not isinstance(baseline, dict):
        return "it must hold a JSON object"
    if baseline.get("format") != BASELINE_FORMAT:
        return f"format is {baseline.get('format')!r}, expected {BASELINE_FORMAT!r}"
    for key in ("pair", "budget", "hardware_fingerprint", "methods"):
        if key not in baseline:
            return f"it lacks {key!r}"
    if not isinstance(baseline["methods"], dict) or not baseline["methods"]:
        return "'methods' must map method names to expectations"
    for method, expected in baseline["methods"].items():
        if not isinstance(expected, dict) or not isinstance(expected.get("quantities"), dict):
            return f"method {method!r} has no 'quantities' object"
        if expected.get("reached") not in (True, False, None):
            return f"method {method!r}: 'reached' must be true, false or null"
        for name, entry in expected["quantities"].items():
            if (not isinstance(entry, dict) or not isinstance(entry.get("tolerance"), (int, float))
                    or not isinstance(entry.get("value"), (int, float, type(None)))):
                return f"method {method!r}, {name!r}: needs a numeric 'tolerance' and a numeric or null 'value'"
    return None


def _format(quantity: Quantity, value: float | None) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{100 * value:.1f}%" if quantity.is_savings else f"{value:.4f}"


def _format_change(quantity: Quantity, change: float) -> str:
    return f"{100 * change:+.1f} pts" if quantity.is_savings else f"{change:+.4f}"


def _judge(quantity: Quantity, expected: dict, now: float, method: str,
           interval: tuple[float, float] | None = None) -> CheckRow:
    """ok / improved / REGRESSION of `now` against the baseline. With `interval` (the current run's 95%
    interval over seeds), a noisy quantity regresses only when the whole interval lies beyond the band."""
    base, tolerance = expected["value"], expected["tolerance"]
    row = CheckRow(method, quantity.label, _format(quantity, base), "±" + _format_change(quantity, tolerance)[1:],
                   _format(quantity, now), "", "ok")
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
        row.verdict = ("REGRESSION" if sign * (best - base) < -tolerance
                       else "improved" if sign * (worst - base) > tolerance else "ok")
    return row


def _method_rows(method: str, expected: dict, current: pd.Series, same_hardware: bool) -> list[CheckRow]:
    if current["n_done"] == 0:
        return [CheckRow(method, "finished runs", str(expected.get("n_done", "?")), "", "0", "", "REGRESSION")]
    if method == REFERENCE_METHOD:  # the target is scratch's own mean: only its loss says anything
        loss = next(quantity for quantity in QUANTITIES if quantity.column == "final_val_loss")
        return [_judge(loss, expected["quantities"][loss.column], current[loss.column], method)]
    reached_now = None if pd.isna(current["reached"]) else bool(current["reached"])
    reached_then = expected["reached"]

    def word(reached):
        return "n/a" if reached is None else "reached" if reached else "not reached"

    verdict = ("n/a (no target)" if reached_now is None or reached_then is None
               else "ok" if reached_now == reached_then else "improved" if reached_now else "REGRESSION")
    rows = [CheckRow(method, "reaches target", word(reached_then), "", word(reached_now), "", verdict)]
    for quantity in QUANTITIES:
        expected_quantity = expected["quantities"].get(quantity.column)
        if expected_quantity is None:
            continue
        if quantity.hardware_dependent and not same_hardware:
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "", "skipped (other hardware)"))
        elif quantity.is_savings and not (reached_now and reached_then):
            rows.append(CheckRow(method, quantity.label, _format(quantity, expected_quantity["value"]), "",
                                 _format(quantity, current[quantity.column]), "", "n/a (target not reached)"))
        else:
            interval = ((current.get(f"{quantity.column}_lo"), current.get(f"{quantity.column}_hi"))
                        if quantity.hardware_dependent else None)
            rows.append(_judge(quantity, expected_quantity, current[quantity.column], method, interval))
    return rows


def _table_text(rows: list[CheckRow]) -> str:
    headers = ["method", "quantity", "baseline", "tolerance", "now", "change", "verdict"]
    cells = [[getattr(row, name) for name in CheckRow.__dataclass_fields__] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *cells, strict=True)]
    lines = [headers, ["-" * width for width in widths], *cells]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def check(run_dir: Path, baseline_path: Path) -> CheckResult:
    """Judge the run in `run_dir` against the baseline; ok is False when anything regressed."""
    baseline = load_baseline(baseline_path)
    report = analyse(run_dir)
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

    notes = []
    same_hardware = baseline["hardware_fingerprint"] == hardware_fingerprint(manifest.get("hardware"))
    if not same_hardware:
        notes.append(f"Hardware differs from the baseline's ({baseline['hardware_fingerprint']} vs "
                     f"{hardware_fingerprint(manifest.get('hardware'))}): judged only hardware-independent "
                     "quantities (reached, FLOPs savings, final loss); time and energy skipped.")
    if baseline.get("seeds") != manifest.get("seeds"):
        notes.append(f"Seeds differ: baseline {baseline.get('seeds')}, this run {manifest.get('seeds')}.")
    new_methods = [method for method in table.index if method not in baseline["methods"]]
    if new_methods:
        notes.append(f"Not in the baseline, not judged: {', '.join(new_methods)}.")
    rows = [row for method, expected in baseline["methods"].items()
            for row in _method_rows(method, expected, table.loc[method], same_hardware)]
    regressions = [row for row in rows if row.verdict == "REGRESSION"]
    improved = [row for row in rows if row.verdict == "improved"]
    summary = (f"{len(regressions)} regression(s), {len(improved)} improvement(s) beyond tolerance, "
               f"{len(rows)} quantities compared against {baseline_path}")
    text = "\n\n".join([summary, _table_text(rows), *(f"note: {note}" for note in notes)])
    return CheckResult(not regressions, text, notes, rows)
