"""Was the machine busy during a run? Judged again from the stored records, so older run directories get the
flags where their records allow it.

A phase is *contended* (threshold and minimum steps in bench/calibration.py) when, over at least MIN_JUDGED_STEPS
steps, its measured train step time (train_s / steps) is more than CONTENTION_THRESHOLD x
- its calibrated full step (the `slowdown` the clock stored, from the comparison's calibration table), or
- the fastest phase of the same signature in any run of the comparison (`signature` column; in records without
  one, the phases flagged `plain_large`, which all train the same LARGE model). This needs no calibration table,
  and it catches a calibration that was itself made on a busy machine.
A run is contended when any of its judged phases is; it is not judged (NA) when none of its phases could be.
Wall time follows contention, and so do energy (an estimate from wall time, or a measurement of a device or CPU
package that other work shares) and the dollars derived from either; FLOPs and reference time do not.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.calibration import CALIBRATION_FILE, CONTENTION_THRESHOLD, MIN_JUDGED_STEPS, CalibrationTable
from bench.errors import BenchError
from bench.report.read import RunData

TIME_KEYS = ("train_s", "energy_kwh", "cost_cloud_usd", "cost_energy_usd")
"""Savings that follow wall time; shown "unreliable: contended" when a run behind them was contended."""
UNRELIABLE = "unreliable: contended"


def _numbers(phases: pd.DataFrame, column: str) -> pd.Series:
    if column not in phases.columns:
        return pd.Series(math.nan, index=phases.index)
    return pd.to_numeric(phases[column], errors="coerce")


def _group(phases: pd.DataFrame) -> pd.Series:
    """The key phases are compared across runs by: the signature of a one-signature phase, else 'plain LARGE'."""
    keys = pd.Series(None, index=phases.index, dtype=object)
    if "plain_large" in phases.columns:
        plain = phases["plain_large"].map(lambda value: str(value).strip().lower() in ("true", "1", "1.0", "yes"))
        keys[plain] = "plain LARGE"
    if "signature" in phases.columns:
        signature = phases["signature"].astype("string")
        single = signature.notna() & (signature.str.len() > 0) & ~signature.str.contains("+", regex=False)
        keys[single] = signature[single]
    return keys


def judged_phases(data: RunData) -> dict[str, pd.DataFrame]:
    """Per run folder: phase, steps, step_s, load_avg, slowdown (vs calibration), relative (vs the fastest run of
    the same signature), contended (boolean, NA where not judged)."""
    frames = {}
    for record in data.runs:
        if record.phases is None or not {"steps", "train_s"} <= set(record.phases.columns):
            continue
        phases = record.phases
        steps = _numbers(phases, "steps")
        frames[record.folder] = pd.DataFrame({
            "phase": phases["phase"].astype(str), "steps": steps, "step_s": _numbers(phases, "train_s") / steps,
            "load_avg": _numbers(phases, "load_avg"), "slowdown": _numbers(phases, "slowdown"),
            "group": _group(phases)})
    enough = {folder: frame[frame["steps"] >= MIN_JUDGED_STEPS] for folder, frame in frames.items()}
    pooled = pd.concat([frame for frame in enough.values() if len(frame)] or [pd.DataFrame(columns=["group"])])
    pooled = pooled.dropna(subset=["group", "step_s"])
    counts = pooled.groupby("group")["step_s"].count()
    fastest = pooled.groupby("group")["step_s"].min()[counts >= 2]
    for frame in frames.values():
        frame["relative"] = frame["step_s"] / frame["group"].map(fastest).astype(float)
        worst = frame[["slowdown", "relative"]].max(axis=1, skipna=True)
        judged = (frame["steps"] >= MIN_JUDGED_STEPS) & worst.notna()
        frame["contended"] = pd.array([bool(value > CONTENTION_THRESHOLD) if ok else pd.NA
                                       for value, ok in zip(worst, judged, strict=True)], dtype="boolean")
    return frames


def run_contention(data: RunData) -> dict[str, dict]:
    """Per run folder: `contended` (NA when not judged), `slowdown` (the worst judged phase's, vs calibration or
    the fastest run), `contended_phases` ('train x2.4 (load 7.5)', ...)."""
    frames = judged_phases(data)
    result = {}
    for record in data.runs:
        frame = frames.get(record.folder)
        row = {"contended": pd.NA, "slowdown": math.nan, "contended_phases": ""}
        if frame is not None and frame["contended"].notna().any():
            judged = frame[frame["contended"].notna()]
            worst = judged[["slowdown", "relative"]].max(axis=1, skipna=True)
            row["contended"] = bool(judged["contended"].any())
            row["slowdown"] = float(worst.max())
            row["contended_phases"] = ", ".join(
                f"{phase.phase} ×{value:.1f}" + ("" if math.isnan(phase.load_avg) else f" (load {phase.load_avg:.1f})")
                for (_, phase), value in zip(judged.iterrows(), worst, strict=True) if phase.contended)
        result[record.folder] = row
    return result


def calibration_summary(data: RunData) -> tuple[CalibrationTable | None, str]:
    """The comparison's calibration table (None when absent or unreadable) and a sentence on how reference time
    was made, from calibration.csv and the phases' `reference_source`."""
    sources = sorted({str(value) for record in data.runs if record.phases is not None
                      and "reference_source" in record.phases.columns
                      for value in record.phases["reference_source"].dropna()})
    path = data.path / CALIBRATION_FILE
    table, problem = None, ""
    if path.exists():
        try:
            table = CalibrationTable.load(path)
        except BenchError as error:
            problem = f" ({error})"
    if table is not None:
        rounds = max((len(timing.rounds) for timing in table.before.values()), default=0)
        text = (f"Reference time comes from the comparison's calibration table ({CALIBRATION_FILE}): "
                f"{len(table.before)} phase signature(s) timed on {table.device} ({table.dtype}) before the first run, "
                f"{rounds} interleaved rounds of {table.repeats} steps each, the minimum of the round medians; a "
                "phase's reference time is its steps × its signature's step time, the same in every run.")
    elif sources:
        text = ("Reference time was calibrated inside each run at the start of each phase"
                f"{' (calibration.csv unreadable' + problem + ')' if problem else ''}: the same phase can get "
                "different reference step times in different runs when the machine was shared.")
    else:
        text = ("Reference time was calibrated inside each run at the start of each phase (records written before "
                "the comparison's calibration table): the same phase can get different reference step times in "
                "different runs when the machine was shared.")
    if sources and sources != ["comparison calibration"]:
        text += " Sources in phases.csv: " + "; ".join(sources) + "."
    return table, text


def drift_sentence(table: CalibrationTable | None) -> str | None:
    """What the after-table says about the machine's speed during the comparison, when there is one."""
    if table is None or not table.after:
        return None
    moved = table.drift()
    if not moved:
        return (f"The calibration after the last run agrees with the first within their spread "
                f"({len(table.after)} signatures): the machine ran at the same speed at both ends of the comparison.")
    changes = sorted(change for _, change in moved)
    median = changes[len(changes) // 2]
    return (f"The calibration after the last run differs from the one before the first beyond their spread for "
            f"{len(moved)} of {len(table.after)} phase signatures (median change {100 * median:+.0f}%): the machine's "
            "speed changed during the comparison (other work, thermal or frequency limits). Reference time uses "
            "the table made before the first run; wall time compares runs made at different speeds.")


def energy_sentence(methods: set[str]) -> str:
    """How far energy can be trusted, from the energy_method labels of the runs."""
    text = " ".join(sorted(methods)).lower()
    parts = []
    if any(word in text for word in ("tdp", "estimate", "heuristic")):
        parts.append("Energy marked as estimated (codecarbon's TDP × load model, the RAM heuristic) is computed "
                     "from wall time, so it inherits wall time's contention.")
    if any(word in text for word in ("nvml", "rapl", "measured", "powermetrics")):
        parts.append("Energy measured by a counter (NVML for the GPU, RAPL for the CPU package) is a measurement, "
                     "but of the whole device or package: on a shared machine it includes the other work's energy.")
    return " ".join(parts) or "The runs recorded no energy method."
