"""Reading a run directory (manifest.json, runs/*/{curve,phases}.csv + status.json, parent/) into records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import DONE, FINISHED, RunDir, read_json, run_name

COSTS: dict[str, str] = {
    "flops": "FLOPs",
    "train_s": "train time",
    "reference_s": "reference time",
    "energy_kwh": "energy",
    "cost_cloud_usd": "cloud $",
    "cost_energy_usd": "energy $",
}
"""The costs savings are computed for (curve.csv column -> what it is called in the report). Dollars come two
ways (accounting.md): cloud = device-hours × price; energy = kWh × PUE × $/kWh for owned hardware."""

TOTALS = (*COSTS, "co2_kg")
PHASE_COLUMNS = {"flops": "flops_executed", "train_s": "train_s", "reference_s": "reference_s",
                 "energy_kwh": "energy_kwh", "cost_cloud_usd": "cost_cloud_usd", "cost_energy_usd": "cost_energy_usd",
                 "co2_kg": "co2_kg"}
"""Where each total lives in phases.csv (used when the curve lacks the column, and for the bill)."""

LABEL_COLUMNS = {"flops_convention": "FLOPs", "device_kind": "device-hours", "energy_method": "energy",
                 "carbon_source": "carbon intensity", "cost_cloud_price": "cloud price",
                 "cost_energy_price": "electricity price", "mfu_peak_source": "MFU peak"}
"""phases.csv columns that say how a number was obtained; report.md lists every value found."""

CURVE_REQUIRED = ("step", "tokens", "flops", "train_s", "phase", "train_loss", "val_loss")
NUMERIC_COLUMNS = {"val_loss", "train_loss", "mfu", *TOTALS, *PHASE_COLUMNS.values()}
BOOLEAN_COLUMNS = ("plain_large",)
"""phases.csv flags; `plain_large` marks a phase that trains every parameter of the final LARGE model with the plain
LM loss and no extra forward passes. Runs written before it existed lack the column."""
COUNTED_STATE = DONE  # only finished runs count; the others are listed with their state
NOT_STARTED = "not started"  # a run the manifest plans that has no folder yet (another job may train it)
REFERENCE_METHOD = "scratch"  # the baseline of every saving; its own "savings" only show its seed spread


# --------------------------------------------------------------------------- reading the run directory


@dataclass
class RunRecord:
    """One run folder (or the parent folder) as stored."""

    method: str
    seed: int | None
    state: str
    reason: str | None
    folder: str
    curve: pd.DataFrame | None
    phases: pd.DataFrame | None
    final_val_loss: float

    @property
    def counted(self) -> bool:
        return self.state == COUNTED_STATE

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass
class RunData:
    path: Path
    manifest: dict
    runs: list[RunRecord]
    parent: RunRecord | None


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise BenchError(f"{path} must hold a JSON object")
    return data


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise BenchError(f"{path} is not a readable CSV file ({error})") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(missing)}")
    for column in NUMERIC_COLUMNS & set(frame.columns):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in set(BOOLEAN_COLUMNS) & set(frame.columns):
        frame[column] = _as_boolean(frame[column])
    return frame


def _as_boolean(values: pd.Series) -> pd.Series:
    """True/False/1/0/yes/no in any case; anything else (an empty cell) is NA, never False."""
    words = {"true": True, "1": True, "1.0": True, "yes": True, "false": False, "0": False, "0.0": False, "no": False}
    return values.map(lambda value: words.get(str(value).strip().lower(), pd.NA)).astype("boolean")


def _read_record(folder: Path, method_from_folder: dict[str, str]) -> RunRecord:
    status_path = folder / "status.json"
    status = _read_object(status_path) if status_path.exists() else {"state": "unknown", "reason": "no status.json"}
    RunDir(folder).verify()  # a finished run's files must still be the ones it wrote
    stem, _, seed_text = folder.name.rpartition("-s")
    method = status.get("method") or method_from_folder.get(stem, stem)
    seed = status.get("seed", int(seed_text) if seed_text.isdigit() else None)
    state = str(status.get("state", "unknown"))
    curve_path, phases_path = folder / "curve.csv", folder / "phases.csv"
    curve = _read_csv(curve_path, CURVE_REQUIRED) if curve_path.exists() else None
    phases = _read_csv(phases_path, ("phase",)) if phases_path.exists() else None
    if state == COUNTED_STATE and (curve is None or curve["val_loss"].notna().sum() == 0):
        raise BenchError(f"run {folder} is marked done but has no curve.csv with validation losses")
    final = status.get("final_val_loss")
    if not isinstance(final, (int, float)) and curve is not None and curve["val_loss"].notna().any():
        final = curve["val_loss"].dropna().iloc[-1]
    return RunRecord(method, seed, state, status.get("reason"), folder.name, curve, phases,
                     float(final) if isinstance(final, (int, float, np.floating)) else math.nan)


def read_run_dir(run_dir: Path) -> RunData:
    """The run directory as records; BenchError when it is missing or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"run directory {run_dir} does not exist")
    manifest = _read_object(run_dir / "manifest.json")
    for key in ("pair", "budget", "methods"):
        if key not in manifest:
            raise BenchError(f"manifest {run_dir / 'manifest.json'} lacks {key!r}")
    if not isinstance(manifest["methods"], dict):
        raise BenchError(f"manifest {run_dir / 'manifest.json'}: 'methods' must map method names to settings")
    runs_dir = run_dir / "runs"
    if not runs_dir.is_dir():
        raise BenchError(f"run directory {run_dir} has no runs/ folder")
    method_from_folder = {name.replace(":", "_"): name for name in manifest["methods"]}
    runs = [_read_record(folder, method_from_folder) for folder in sorted(runs_dir.iterdir()) if folder.is_dir()]
    if not runs:
        raise BenchError(f"run directory {run_dir} has no runs yet (runs/ is empty)")
    on_disk = {record.folder for record in runs}
    seeds = manifest.get("seeds") if isinstance(manifest.get("seeds"), list) else []
    runs += [RunRecord(method, seed, NOT_STARTED, None, run_name(method, seed), None, None, math.nan)
             for method in manifest["methods"] for seed in seeds if run_name(method, seed) not in on_disk]
    parent = _read_record(run_dir / "parent", {}) if (run_dir / "parent").is_dir() else None
    if parent is not None:
        parent.method, parent.seed = "parent", None
    return RunData(run_dir, manifest, runs, parent)


def unfinished(data: RunData) -> list[str]:
    """The runs the manifest plans that have not finished (running, failed, not started), as "name (state)"."""
    return [f"{record.folder} ({record.state})" for record in data.runs if not record.finished]


def method_order(data: RunData) -> list[str]:
    """Scratch first, then the manifest's order, then methods found only on disk."""
    seen = list(dict.fromkeys([REFERENCE_METHOD, *data.manifest["methods"]]))
    seen = [method for method in seen if method in data.manifest["methods"]]
    return seen + sorted({record.method for record in data.runs} - set(seen))
