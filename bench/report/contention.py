"""Was the machine busy during a run, and is the calibration a measurement? Judged again from the stored records,
so older run directories get the flags where their records allow it.

The comparison's calibration is *unreliable* for a signature (bench/calibration.py) when calibration.csv says so
(rounds that disagree, before and after tables that disagree; a table written before those columns is judged from
its rounds when read), when a phase's `reference_source` says so, or when a phase of the signature ran faster than
FASTEST_PLAUSIBLE_SLOWDOWN x its calibrated step in any run (`slowdown`). Reference time computed from it reads
"unreliable: calibration".

A phase is *contended* (threshold and minimum steps in bench/calibration.py) by one judgement:
- where its calibration is reliable: calibration.contention_verdict of the `slowdown` the clock stored, the same
  function on the same number that wrote phases.csv's `contended`, so the two agree;
- where it is unreliable or absent (records without a `slowdown`, torchrun, a calibration found unreliable only
  after the run judged itself; phases.csv's verdict is then set aside, and the report says whose): its train step
  time (train_s / steps) against the fastest phase of the same signature in any run of the comparison (`signature`
  column; in records without one, the phases flagged `plain_large`, which all train the same LARGE model), more
  than CONTENTION_THRESHOLD x it over at least MIN_JUDGED_STEPS steps.
A run is contended when any of its judged phases is; it is not judged (NA) when none of its phases could be.
Wall time follows contention, and so do energy (an estimate from wall time, or a measurement of a device or CPU
package that other work shares) and the dollars derived from either; FLOPs and reference time do not.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.calibration import (
    CALIBRATION_FILE,
    CONTENTION_THRESHOLD,
    FASTEST_PLAUSIBLE_SLOWDOWN,
    MIN_JUDGED_STEPS,
    SPREAD_TOLERANCE,
    UNRELIABLE_MARK,
    CalibrationTable,
    contention_verdict,
    too_fast_reason,
    unreliable_reasons,
)
from bench.errors import BenchError
from bench.report.read import RunData

TIME_KEYS = ("train_s", "energy_kwh", "cost_cloud_usd", "cost_energy_usd")
"""Savings that follow wall time; shown "unreliable: contended" when a run behind them was contended."""
UNRELIABLE = "unreliable: contended"
REFERENCE_KEYS = ("reference_s",)
"""Savings computed from the calibration; shown "unreliable: calibration" when a run behind them used an unreliable
one."""
UNRELIABLE_CALIBRATION = "unreliable: calibration"
SET_ASIDE_NAMED = 4
"""How many of the phases whose phases.csv verdict the report sets aside it names."""
BY_CALIBRATION, BY_FASTEST_RUN = "calibration", "fastest run"
"""What a phase's contention was judged against (judged_phases' `judged_by`)."""


def _numbers(phases: pd.DataFrame, column: str) -> pd.Series:
    if column not in phases.columns:
        return pd.Series(math.nan, index=phases.index)
    return pd.to_numeric(phases[column], errors="coerce")


def _texts(phases: pd.DataFrame, column: str) -> pd.Series:
    if column not in phases.columns:
        return pd.Series("", index=phases.index)
    return phases[column].fillna("").astype(str)


def _flags(phases: pd.DataFrame, column: str) -> pd.Series:
    """A phases.csv flag as booleans, NA where empty or absent, whatever type pandas read it as."""
    words = _texts(phases, column).str.strip().str.lower()
    return pd.Series([True if word in ("true", "1", "1.0", "yes") else False if word in ("false", "0", "0.0", "no")
                      else pd.NA for word in words], index=phases.index, dtype="boolean")


def _group(phases: pd.DataFrame) -> pd.Series:
    """The key phases are compared across runs by: the signature of a one-signature phase, else 'plain LARGE'."""
    keys = pd.Series(None, index=phases.index, dtype=object)
    keys[_flags(phases, "plain_large").fillna(False).astype(bool)] = "plain LARGE"
    if "signature" in phases.columns:
        signature = phases["signature"].astype("string")
        single = signature.notna() & (signature.str.len() > 0) & ~signature.str.contains("+", regex=False)
        keys[single] = signature[single]
    return keys


def read_table(data: RunData) -> tuple[CalibrationTable | None, str]:
    """The comparison's calibration table (None when absent or unreadable) and, when unreadable, why."""
    path = data.path / CALIBRATION_FILE
    if not path.exists():
        return None, ""
    try:
        return CalibrationTable.load(path), ""
    except BenchError as error:
        return None, str(error)


def _own_problem(source: str, slowdown: float) -> str:
    """Why a phase's own record says its calibration is no measurement ("" when it does not)."""
    reasons = [*unreliable_reasons(source), too_fast_reason(slowdown) or ""]
    return next((reason for reason in reasons if reason), "")


def _calibration_problems(data: RunData, table: CalibrationTable | None,
                          frames: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Per run folder, per phase: why its calibration is no measurement ("" where it is one): what its own record
    says, else what the table says of one of its signatures, else what another phase of one of them proved."""
    by_signature = dict(table.unreliable()) if table is not None else {}
    for folder, frame in frames.items():
        for phase, signatures, problem in zip(frame["phase"], frame["signatures"], frame["own_problem"], strict=True):
            for signature in signatures if problem else []:
                by_signature.setdefault(signature, f"{folder} {phase}: {problem}")
    return {folder: [problem or next((by_signature[s] for s in signatures if s in by_signature), "")
                     for signatures, problem in zip(frame["signatures"], frame["own_problem"], strict=True)]
            for folder, frame in frames.items()}


def judged_phases(data: RunData) -> dict[str, pd.DataFrame]:
    """Per run folder: phase, steps, step_s, load_avg, slowdown (vs calibration), relative (vs the fastest run of
    the same signature), calibration_problem ("" where the calibration is a measurement), stored (phases.csv's
    `contended`), judged_by, ratio (the slowdown or relative judged) and contended (boolean, NA where not judged)."""
    frames = {}
    for record in data.runs:
        if record.phases is None or not {"steps", "train_s"} <= set(record.phases.columns):
            continue
        phases = record.phases
        steps, slowdown = _numbers(phases, "steps"), _numbers(phases, "slowdown")
        frames[record.folder] = pd.DataFrame({
            "phase": phases["phase"].astype(str), "steps": steps, "step_s": _numbers(phases, "train_s") / steps,
            "load_avg": _numbers(phases, "load_avg"), "slowdown": slowdown, "group": _group(phases),
            "signatures": [[part for part in text.split("+") if part] for text in _texts(phases, "signature")],
            "reference_source": _texts(phases, "reference_source"),
            "own_problem": [_own_problem(source, value)
                            for source, value in zip(_texts(phases, "reference_source"), slowdown, strict=True)],
            "stored": _flags(phases, "contended")})
    for folder, problems in _calibration_problems(data, read_table(data)[0], frames).items():
        frames[folder]["calibration_problem"] = problems
    enough = {folder: frame[frame["steps"] >= MIN_JUDGED_STEPS] for folder, frame in frames.items()}
    pooled = pd.concat([frame[["group", "step_s"]] for frame in enough.values() if len(frame)]
                       or [pd.DataFrame(columns=["group", "step_s"])])
    pooled = pooled.dropna(subset=["group", "step_s"])
    counts = pooled.groupby("group")["step_s"].count()
    fastest = pooled.groupby("group")["step_s"].min()[counts >= 2]
    for frame in frames.values():
        frame["relative"] = frame["step_s"] / frame["group"].map(fastest).astype(float)
        judged_by, ratio, contended = [], [], []
        for row in frame.itertuples():
            verdict = contention_verdict(row.slowdown, row.steps, not row.calibration_problem)
            if verdict is not None:
                judged_by.append(BY_CALIBRATION), ratio.append(row.slowdown), contended.append(verdict)
            elif row.steps >= MIN_JUDGED_STEPS and not math.isnan(row.relative):
                judged_by.append(BY_FASTEST_RUN), ratio.append(row.relative)
                contended.append(bool(row.relative > CONTENTION_THRESHOLD))
            else:
                judged_by.append(None), ratio.append(math.nan), contended.append(pd.NA)
        frame["judged_by"], frame["ratio"] = judged_by, ratio
        frame["contended"] = pd.array(contended, dtype="boolean")
    return frames


def run_contention(data: RunData) -> dict[str, dict]:
    """Per run folder: `contended` (NA when not judged), `slowdown` (the worst judged phase's, vs calibration or
    the fastest run), `contended_phases` ('train ×2.4 (load 7.5)', ...), `calibration_reliable` (NA where the run
    used no comparison calibration) and `calibration_problem` (why not, of its first phase that says)."""
    frames = judged_phases(data)
    result = {}
    for record in data.runs:
        frame = frames.get(record.folder)
        row = {"contended": pd.NA, "slowdown": math.nan, "contended_phases": "", "calibration_reliable": pd.NA,
               "calibration_problem": ""}
        if frame is not None and frame["contended"].notna().any():
            judged = frame[frame["contended"].notna()]
            row["contended"] = bool(judged["contended"].any())
            row["slowdown"] = float(judged["ratio"].max())
            row["contended_phases"] = ", ".join(
                f"{phase.phase} ×{phase.ratio:.1f}"
                + (" vs the fastest run" if phase.judged_by == BY_FASTEST_RUN else "")
                + ("" if math.isnan(phase.load_avg) else f" (load {phase.load_avg:.1f})")
                for phase in judged.itertuples() if phase.contended)
        if frame is not None and (frame["reference_source"].str.contains("comparison calibration").any()
                                  or frame["calibration_problem"].astype(bool).any()):
            problems = frame[frame["calibration_problem"].astype(bool)]
            row["calibration_reliable"] = not len(problems)
            row["calibration_problem"] = "; ".join(f"{phase.phase}: {phase.calibration_problem}"
                                                   for phase in problems.itertuples())
        result[record.folder] = row
    return result


def _reliability_sentence(data: RunData, table: CalibrationTable | None) -> str:
    """Where the calibration is no measurement, what that spoils and which phases.csv verdicts are set aside."""
    frames = judged_phases(data)
    problems = {problem for frame in frames.values() for problem in frame["calibration_problem"] if problem}
    unreliable = table.unreliable() if table is not None else {}
    if not problems and not unreliable:
        return ""
    reasons = list(dict.fromkeys([*unreliable.values(), *sorted(problems)]))
    text = (f" The calibration is not a measurement for {len(unreliable)} of {len(table.before)} phase signature(s)"
            if table is not None and unreliable else " The calibration is not a measurement for some phases")
    text += (f" (first: {reasons[0]}; rounds, or the tables before and after the runs, must agree within "
             f"{SPREAD_TOLERANCE:.0%}, and no run may be more than {1 / FASTEST_PLAUSIBLE_SLOWDOWN:g}x faster than "
             f"calibrated): reference time computed from it reads \"{UNRELIABLE_CALIBRATION}\", and contention there "
             "is judged against the fastest run of the same phase signature instead.")
    set_aside = [f"{folder} {phase}" for folder, frame in frames.items()
                 for phase, stored, problem in zip(frame["phase"], frame["stored"], frame["calibration_problem"],
                                                   strict=True) if problem and not pd.isna(stored)]
    if set_aside:
        named = ", ".join(set_aside[:SET_ASIDE_NAMED]) + (
            f" and {len(set_aside) - SET_ASIDE_NAMED} more" if len(set_aside) > SET_ASIDE_NAMED else "")
        text += (f" phases.csv's `contended` of {len(set_aside)} phase(s) ({named}) was judged while the run trained, "
                 "against a calibration found unreliable since, and is set aside.")
    return text


def calibration_summary(data: RunData) -> tuple[CalibrationTable | None, str]:
    """The comparison's calibration table (None when absent or unreadable) and a sentence on how reference time
    was made and how far it is a measurement, from calibration.csv and the phases' `reference_source`."""
    sources = sorted({str(value).split(UNRELIABLE_MARK)[0] for record in data.runs if record.phases is not None
                      and "reference_source" in record.phases.columns
                      for value in record.phases["reference_source"].dropna()})  # reasons: _reliability_sentence
    table, problem = read_table(data)
    if table is not None:
        rounds = min((len(timing.rounds) for timing in table.before.values()), default=0)
        retaken = sum(len(timing.rounds) > rounds for timing in table.before.values())
        text = (f"Reference time comes from the comparison's calibration table ({CALIBRATION_FILE}): "
                f"{len(table.before)} phase signature(s) timed on {table.device} ({table.dtype}) before the first run, "
                f"{rounds} interleaved rounds of {table.repeats} steps each"
                + (f" (more for {retaken} whose rounds disagreed)" if retaken else "")
                + ", the minimum of the round medians; a phase's reference time is its steps × its signature's step "
                "time, the same in every run.")
    elif sources:
        text = ("Reference time was calibrated inside each run at the start of each phase"
                f"{' (calibration.csv unreadable (' + problem + '))' if problem else ''}: the same phase can get "
                "different reference step times in different runs when the machine was shared.")
    else:
        text = ("Reference time was calibrated inside each run at the start of each phase (records written before "
                "the comparison's calibration table): the same phase can get different reference step times in "
                "different runs when the machine was shared.")
    text += _reliability_sentence(data, table)
    if sources and sources != ["comparison calibration"]:
        text += " Sources in phases.csv: " + "; ".join(sources) + "."
    return table, text


def drift_sentence(table: CalibrationTable | None) -> str | None:
    """What the after-table says about the machine's speed during the comparison, when there is one."""
    if table is None or not table.after:
        return None
    moved = table.drift()
    if not moved:
        return (f"The calibration after the last run agrees with the first within {SPREAD_TOLERANCE:.0%} "
                f"({len(table.after)} signatures): the machine ran at the same speed at both ends of the comparison.")
    changes = sorted(change for _, change in moved)
    median = changes[len(changes) // 2]
    return (f"The calibration after the last run differs from the one before the first beyond their spread for "
            f"{len(moved)} of {len(table.after)} phase signatures (more than {SPREAD_TOLERANCE:.0%} even when timed "
            f"again; median change {100 * median:+.0f}%): the machine's speed changed during the comparison (other "
            "work, thermal or frequency limits). Reference time uses the table made before the first run, which is "
            "therefore no measurement for them; wall time compares runs made at different speeds.")


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
