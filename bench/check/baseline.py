"""The baseline the CI gate judges a run against: writing it from a run directory, loading and validating it.

A baseline (JSON, written by `write_baseline` from a run directory) records the pair, budget, seeds, a
hardware fingerprint and, per method: whether it reached the target, and each judged quantity's
expected value (mean over seeds) with a tolerance.

Tolerance = max(floor, s / √n): one standard error of the baseline's mean over its n seeds (s the sample
standard deviation over every finished seed; a savings value of a seed that never reached τ counts as the
report gives it: censored at the budget, or absent in records from before censoring). CI reruns the same
seeds, and a seeded CPU run reproduces bit for bit, so any movement of a hardware-independent quantity is a
code change; the gate lets through what merely re-drawing the seeds would typically move, and no more.
(Three standard errors of a difference of means, the test for fresh seeds, came to ±50 points of FLOPs
savings at 3 seeds: a gate that could not fail.) The floors keep rounding from failing a run and are wider
for the noisy, hardware-bound quantities.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import read_json, write_json
from bench.report import COUNTED_STATE, Report, analyse
from bench.report.read import unfinished

BASELINE_FORMAT = "growbench-baseline/1"


@dataclass(frozen=True)
class Quantity:
    column: str  # the column in Report.table (mean) and Report.runs (per seed)
    label: str
    floor: float  # the narrowest tolerance, in the column's unit (savings: a fraction, 0.02 = 2 points)
    higher_is_better: bool
    hardware_dependent: bool
    is_savings: bool = True
    follows_wall_time: bool = False  # measured while the steps ran, so contention spoils it (reference time: not)
    follows_calibration: bool = False  # computed from the calibration table, so an unreliable one spoils it


QUANTITIES = (
    Quantity("savings_flops", "FLOPs savings", 0.02, True, False),
    Quantity("final_val_loss", "final val loss", 0.02, False, False, is_savings=False),
    Quantity("savings_reference_s", "reference-time savings", 0.05, True, True, follows_calibration=True),
    Quantity("savings_train_s", "wall-time savings", 0.10, True, True, follows_wall_time=True),
    Quantity("savings_energy_kwh", "energy savings", 0.15, True, True, follows_wall_time=True),
)

HARDWARE_KEYS = ("cpu_model", "cpu_cores", "torch_threads", "gpu_count", "gpu_model")
"""The entries of the manifest's hardware (bench.hardware.hardware_fingerprint) that decide whether times and
energy are comparable; software versions and the driver are recorded there but do not split baselines."""


def time_contended(row) -> bool:
    """Whether the report found a run of this method (or of scratch) contended: its wall time measured other work."""
    value = row.get("time_contended")
    return value is not None and not pd.isna(value) and bool(value)


def reference_unreliable(row) -> bool:
    """Whether a run of this method (or of scratch) used an unreliable calibration: its reference time is no
    measurement."""
    value = row.get("reference_unreliable")
    return value is not None and not pd.isna(value) and bool(value)


def hardware_fingerprint(hardware: dict | None) -> str:
    hardware = hardware or {}
    picked = {key: hardware[key] for key in HARDWARE_KEYS if key in hardware}
    return json.dumps(picked or hardware, sort_keys=True, default=str)


# --------------------------------------------------------------------------- writing a baseline


def _seed_values(report: Report, method: str, quantity: Quantity) -> np.ndarray:
    """The per-seed values behind the table's mean: every finished seed's value (savings of a seed that never
    reached τ are censored at the budget in the report; older reports left them NaN, and NaN is dropped)."""
    runs = report.runs[(report.runs["method"] == method) & (report.runs["state"] == COUNTED_STATE)]
    values = runs[quantity.column].to_numpy(float)
    return values[~np.isnan(values)]


def _tolerance(values: np.ndarray, floor: float) -> float:
    if len(values) < 2:
        return floor
    return max(floor, float(np.std(values, ddof=1)) / math.sqrt(len(values)))


def _json_number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def complete(report: Report, allow_incomplete: bool, what: str) -> list[str]:
    """The runs of the comparison that have not finished; BenchError unless `allow_incomplete`: a gate or a
    baseline judges complete comparisons, or says which runs it went without."""
    missing = unfinished(report.data)
    if missing and not allow_incomplete:
        raise BenchError(f"{what}: {report.run_dir} has {len(missing)} unfinished run(s): {', '.join(missing)}; "
                         "finish them (bench compare --resume) or pass --allow-incomplete")
    return missing


def make_baseline(report: Report, allow_incomplete: bool = False) -> dict:
    missing = complete(report, allow_incomplete, "cannot write a baseline")
    no_run = report.table.loc[report.table["n_done"] == 0, "method"].tolist()
    if no_run:
        raise BenchError(f"cannot write a baseline from {report.run_dir}: no finished run of {', '.join(no_run)}")
    if math.isnan(report.target):
        raise BenchError(f"cannot write a baseline from {report.run_dir}: it has no target (no finished scratch run)")
    methods = {}
    for _, row in report.table.iterrows():
        quantities = {}
        reached = not pd.isna(row["reached"]) and bool(row["reached"])
        for quantity in QUANTITIES:
            values = _seed_values(report, row["method"], quantity)
            value = row[quantity.column] if reached or not quantity.is_savings else None  # not reached: no number
            quantities[quantity.column] = {"value": _json_number(value),
                                           "tolerance": _tolerance(values, quantity.floor),
                                           "seeds": len(values)}
        methods[row["method"]] = {"reached": None if pd.isna(row["reached"]) else bool(row["reached"]),
                                  "n_done": int(row["n_done"]), "n_reached": int(row["n_reached"]),
                                  "time_contended": time_contended(row),
                                  "reference_unreliable": reference_unreliable(row), "quantities": quantities}
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
        "unfinished_runs": missing,  # written with --allow-incomplete: the runs it went without
    }


def write_baseline(run_dir: Path, out: Path, allow_incomplete: bool = False) -> dict:
    """Write the baseline of the run in `run_dir` to `out` (JSON) and return it."""
    baseline = make_baseline(analyse(run_dir), allow_incomplete)
    write_json(Path(out), baseline)
    return baseline


# --------------------------------------------------------------------------- loading a baseline


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
