"""The baseline the CI gate judges a run against: writing it from a run directory (and reproductions of it),
loading and validating it.

A baseline (JSON, written by `write_baseline` from a run directory) records the pair, budget, seeds, a
hardware fingerprint and, per method: whether it reached the target, and each judged quantity's
expected value (mean over seeds) with a tolerance.

Hardware-independent quantities (FLOPs savings, final validation loss; reached must agree): tolerance =
max(floor, REPRODUCTION_MARGIN x reproduction noise). CI re-runs the baseline's own seeds, so what can move these
between two runs of the same code is not the seed-to-seed spread but float arithmetic: summation order across
torch thread counts, CPUs and BLAS paths. `bench baseline RUN --reproduction DIR ...` measures it: each DIR is the
same comparison run again with one such thing changed (another thread count; initial weights moved by
1e-7 x N(0, 1), tests/perturbed_bench.py), and a quantity's reproduction noise is the largest |difference| of its
value between RUN and a reproduction. Without reproductions the noise is not measured (null) and the tolerance is
the floor, which keeps rounding from failing a run. The seed spread (s / √n over the n finished seeds: what
re-drawing the seeds would move the mean by) is recorded beside it as information only: the report's intervals show
it, the gate does not judge by it (it came to ±13.5 points of stackbert's FLOPs savings on the gate's comparison, so
a 10-point regression passed).

Hardware-dependent quantities (reference-time, wall-time and energy savings): tolerance = max(floor, s / √n), judged
on the current run's interval (bench/check/__init__.py), since one run's wall time on a shared machine moves by
10–20 points; their floors are wider.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import read_json, write_json
from bench.report import COUNTED_STATE, Report, analyse
from bench.report.read import unfinished

BASELINE_FORMAT = "growbench-baseline/2"
SEED_SPREAD_FORMAT = "growbench-baseline/1"
"""Baselines written before reproduction noise: every tolerance is max(floor, s / √n). `check` still judges them,
as they are, and says so."""

REPRODUCTION_MARGIN = 3.0
"""Tolerance / reproduction noise. The noise is the largest of a few differences (two in
scripts/gate_reproduction.sh), a small sample of how far a run on other hardware may land: were the differences
Gaussian, a third one would exceed twice the largest of two 13% of the time, three times it 6% (Monte Carlo). A
run on the baseline's own hardware and thread count reproduces bit for bit, so the margin is paid only where the
arithmetic differs; the floors dominate wherever the noise is below a third of them."""

PERTURBATION_ENTRY = "initial_weights_perturbation"
"""The manifest entry a perturbed comparison carries (tests/perturbed_bench.py): what it changed, for `differs`."""

SAME_COMPARISON = ("pair", "budget", "seeds", "methods", "parent", "data.tokens", "data.validation", "train.optim",
                   "train.eval_points")
"""The manifest entries a reproduction must share with the run it reproduces (dotted: an entry inside one)."""

TOLERANCE_RULE = (f"hardware-independent quantities (FLOPs savings, final val loss): max(floor, {REPRODUCTION_MARGIN:g}"
                  " x reproduction noise), the noise being the largest |difference| of the quantity between this run "
                  "and a reproduction of it (the floor where none was measured), reached must agree; hardware-dependent "
                  "quantities: max(floor, std over seeds / sqrt(n)), judged on the run's 95% interval")


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
    Quantity("savings_flops", "FLOPs savings", 0.01, True, False),
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


def _seed_standard_error(values: np.ndarray) -> float | None:
    """s / √n over the finished seeds' values; None with fewer than two."""
    return float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) >= 2 else None


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


def _entry(manifest: dict, dotted: str):
    value = manifest
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _leaves(value, prefix: str) -> list[tuple[str, str]]:
    """(dotted key, JSON text) of every leaf of a manifest entry."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{prefix}.{key}")]
    return [(prefix, json.dumps(value, sort_keys=True, default=str))]


def _reached(row) -> bool | None:
    return None if pd.isna(row["reached"]) else bool(row["reached"])


def _judged_value(row, quantity: Quantity) -> float | None:
    """The value the gate judges: the table's mean over seeds; no savings where the method does not reach τ."""
    if quantity.is_savings and not _reached(row):
        return None
    return _json_number(row[quantity.column])


def _check_reproduction(report: Report, reproduction: Report) -> None:
    """BenchError unless `reproduction` is a complete run of the same comparison whose methods reach τ where the
    run's do: a method whose reaching flips between two runs of the same code cannot be judged by the gate."""
    if reproduction.run_dir.resolve() == report.run_dir.resolve():
        raise BenchError(f"--reproduction {reproduction.run_dir} is the run itself: give another run of the comparison")
    complete(reproduction, False, f"--reproduction {reproduction.run_dir}")
    ours = {leaf: text for key in SAME_COMPARISON for leaf, text in _leaves(_entry(report.manifest, key), key)}
    theirs = {leaf: text for key in SAME_COMPARISON for leaf, text in _leaves(_entry(reproduction.manifest, key), key)}
    differ = [leaf for leaf in sorted(ours.keys() | theirs.keys()) if ours.get(leaf) != theirs.get(leaf)]
    if differ:
        shown = "; ".join(f"{leaf} {theirs.get(leaf, '(none)')} (the run: {ours.get(leaf, '(none)')})"
                          for leaf in differ[:3])
        raise BenchError(f"--reproduction {reproduction.run_dir} is not the same comparison as {report.run_dir}: "
                         f"{shown}{f' and {len(differ) - 3} more' if len(differ) > 3 else ''}")
    their_table = reproduction.table.set_index("method")
    for _, row in report.table.iterrows():
        method = row["method"]
        if _reached(row) != _reached(their_table.loc[method]):
            raise BenchError(f"--reproduction {reproduction.run_dir}: {method} reaches the target in "
                             f"{'the run' if _reached(row) else 'the reproduction'} and not in the other: its reaching "
                             "lies within reproduction noise, so the gate cannot judge it (choose a budget where it is "
                             "clear of the target)")


def _initial_weights(manifest: dict) -> str:
    perturbation = manifest.get(PERTURBATION_ENTRY)
    return f"+ {perturbation['scale']:g} x N(0, 1), seeded" if isinstance(perturbation, dict) else "as built"


def _differences(report: Report, reproduction: Report) -> list[str]:
    """What the reproduction changed, as far as the manifests record it: hardware, versions, a perturbation."""
    ours, theirs = report.manifest, reproduction.manifest
    versions = sorted({*(ours.get("versions") or {}), *(theirs.get("versions") or {})})
    keys = [*(f"hardware.{key}" for key in HARDWARE_KEYS), *(f"versions.{key}" for key in versions)]
    differs = [f"{key.split('.', 1)[1]} {_entry(ours, key)} -> {_entry(theirs, key)}" for key in keys
               if _entry(ours, key) != _entry(theirs, key)]
    if _initial_weights(ours) != _initial_weights(theirs):
        differs.append(f"initial weights {_initial_weights(ours)} -> {_initial_weights(theirs)}")
    return differs or ["nothing the manifests record"]


def _reproduction_noise(report: Report, reproductions: Sequence[Report]) -> dict[tuple[str, str], float]:
    """(method, column) -> the largest |difference| of the judged value between the run and a reproduction, for
    every hardware-independent quantity with a value (savings of a method that reaches τ, every final loss)."""
    noise: dict[tuple[str, str], float] = {}
    for reproduction in reproductions:
        theirs = reproduction.table.set_index("method")
        for _, row in report.table.iterrows():
            for quantity in QUANTITIES:
                if quantity.hardware_dependent:
                    continue
                ours, other = _judged_value(row, quantity), _judged_value(theirs.loc[row["method"]], quantity)
                if ours is not None and other is not None:
                    key = (row["method"], quantity.column)
                    noise[key] = max(noise.get(key, 0.0), abs(ours - other))
    return noise


def make_baseline(report: Report, allow_incomplete: bool = False, reproductions: Sequence[Report] = ()) -> dict:
    missing = complete(report, allow_incomplete, "cannot write a baseline")
    no_run = report.table.loc[report.table["n_done"] == 0, "method"].tolist()
    if no_run:
        raise BenchError(f"cannot write a baseline from {report.run_dir}: no finished run of {', '.join(no_run)}")
    if math.isnan(report.target):
        raise BenchError(f"cannot write a baseline from {report.run_dir}: it has no target (no finished scratch run)")
    for reproduction in reproductions:
        _check_reproduction(report, reproduction)
    noise = _reproduction_noise(report, reproductions)
    methods = {}
    for _, row in report.table.iterrows():
        quantities = {}
        for quantity in QUANTITIES:
            values = _seed_values(report, row["method"], quantity)
            spread = _seed_standard_error(values)
            measured = None if quantity.hardware_dependent else noise.get((row["method"], quantity.column))
            if quantity.hardware_dependent:
                tolerance = max(quantity.floor, spread or 0.0)
            else:
                tolerance = max(quantity.floor, REPRODUCTION_MARGIN * (measured or 0.0))
            quantities[quantity.column] = {"value": _judged_value(row, quantity), "tolerance": tolerance,
                                           "reproduction_noise": measured, "seed_standard_error": spread,
                                           "seeds": len(values)}
        methods[row["method"]] = {"reached": _reached(row),
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
        "tolerance_rule": TOLERANCE_RULE,
        "margin": REPRODUCTION_MARGIN,
        "floors": {quantity.column: quantity.floor for quantity in QUANTITIES},
        "reproductions": [{"run_dir": reproduction.run_dir.name,
                           "torch_threads": _entry(reproduction.manifest, "hardware.torch_threads"),
                           "differs": _differences(report, reproduction)} for reproduction in reproductions],
        "methods": methods,
        "unfinished_runs": missing,  # written with --allow-incomplete: the runs it went without
    }


def write_baseline(run_dir: Path, out: Path, allow_incomplete: bool = False,
                   reproductions: Sequence[Path] = ()) -> dict:
    """Write the baseline of the run in `run_dir` to `out` (JSON) and return it; with `reproductions` (run
    directories of the same comparison, run again with another thread count or a perturbed initialisation), the
    hardware-independent tolerances come from how far they moved."""
    baseline = make_baseline(analyse(run_dir), allow_incomplete, [_reproduction(path) for path in reproductions])
    write_json(Path(out), baseline)
    return baseline


def _reproduction(path: Path) -> Report:
    """A --reproduction DIR analysed; what is wrong with it named after the flag."""
    try:
        return analyse(path)
    except BenchError as error:
        raise BenchError(f"--reproduction {path}: {error}") from error


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
    if baseline.get("format") not in (BASELINE_FORMAT, SEED_SPREAD_FORMAT):
        return f"format is {baseline.get('format')!r}, expected {BASELINE_FORMAT!r} (or the older {SEED_SPREAD_FORMAT!r})"
    current = baseline["format"] == BASELINE_FORMAT
    for key in ("pair", "budget", "hardware_fingerprint", "methods", *(("margin", "reproductions") if current else ())):
        if key not in baseline:
            return f"it lacks {key!r}"
    if current and not isinstance(baseline["reproductions"], list):
        return "'reproductions' must be a list"
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
            if current and ("reproduction_noise" not in entry
                            or not isinstance(entry["reproduction_noise"], (int, float, type(None)))):
                return f"method {method!r}, {name!r}: needs a numeric or null 'reproduction_noise'"
    return None
