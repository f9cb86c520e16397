"""One calibration table per comparison: the reference step time of every phase signature, and what
contention means.

Reference time (accounting.md, "Time") is a phase's steps x a step time measured on a quiet machine. Measured
inside each run, at whatever moment the run starts, the same phase gets different step times in different runs
whenever the machine is shared. So `bench compare` times every distinct phase *signature* its methods will run
once, before the first run, in the runs' device and dtype, and again after the last run:

- signature: what decides a step's cost (as `collectors/flops.py` keys its counts): the model class, every
  parameter's name, shape, dtype and whether it trains, the extra forward models, the loss function, the
  micro-batch shape and the step's variant key (bert2BERT's sampled depth). Phases of different methods that
  compute the same thing (plain training of LARGE in scratch, stackbert, KI, LiGO, ...) share one.
- how: the phases are built by running each method's generator on the real parent without training (a
  method whose phases vary by seed is walked for every seed), and each phase's plan is made as the loop makes
  it, to know which variants will run. Then every signature is timed in `rounds` interleaved rounds (each
  round: one warm-up step, then `repeats` timed steps; the round's median), and its value is the minimum of
  the round medians (min-of-medians: contention only ever slows a step down). `spread` = (max - min) / min of
  the round medians.
- what: `step_s`, forward + backward of the step's micro-batches (the reference step, as
  `clock.median_step_seconds` times it), and `full_step_s`, the same plus gradient clipping and the AdamW
  update (on the throwaway phases, at learning rate 0): what a training step should take here, the
  denominator of a phase's `slowdown`.

A value is a measurement only where its rounds agree (all within SPREAD_TOLERANCE of the fastest; else
RETAKE_ROUNDS more, and `rounds` of them must) and its after value agrees with it (else timed again, minimum over
both); otherwise `reliable` is False with an `unreliable_reason` (calibration.csv). A run whose train steps beat
FASTEST_PLAUSIBLE_SLOWDOWN x the calibrated full step proves it wrong too (clock.py says so in phases.csv).

A phase is `contended` (`contention_verdict`, the one judgement phases.csv and the report share) when its
measured train step time is more than CONTENTION_THRESHOLD x its calibrated full step (over at least
MIN_JUDGED_STEPS steps: the first steps of a phase carry one-off costs), and not judged against an unreliable
calibration. The ratio stays near 1 while the machine's load is what it was at calibration (1.1-1.3 measured on a
2-core VM; the loop adds batch building and bookkeeping to the calibrated step); other work arriving on the same
cores makes it 2-15 (tests/test_calibration.py's burner).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from bench.hardware import rng_preserved, synchronize
from bench.phases import Phase
from bench.records import atomic_path

CALIBRATION_FILE = "calibration.csv"
ROUNDS = 3
REPEATS = 3
CONTENTION_THRESHOLD = 1.5
"""A phase whose train step took more than this x its calibrated full step ran on a busy machine."""
MIN_JUDGED_STEPS = 5
"""Phases with fewer steps are not judged: their one-off first-step costs dominate."""
SPREAD_TOLERANCE = 0.25
"""Round medians of a signature agree, and so do its before and after values, when they lie within this fraction
of the fastest. Measured on a quiet 2-core VM (bert-nano:bert-micro, scratch + stackbert + bert2bert: 5 signatures,
3 rounds of 3 steps, timed 11 times): spreads up to 0.17 (a 6.5 ms step; 0.04 and under for most), the same
signature's value from one calibration to the next within 0.08. A loaded machine gave spreads up to 5.2 and a
12x before/after difference."""
RETAKE_ROUNDS = 3
"""Rounds added to the signatures whose rounds disagree."""
FASTEST_PLAUSIBLE_SLOWDOWN = 0.5
"""A phase's train step below this x its calibrated full step is impossible under a sound calibration (the loop does
the calibrated step's work and more: 1.1-1.3x on a quiet machine): the calibration of its signature was slow."""
BEFORE, AFTER = "before", "after"
COLUMNS = ("when", "signature", "step_s", "full_step_s", "spread", "device", "dtype", "repeats", "seconds", "label",
           "phases")
"""calibration.csv's required columns; round_1_s, round_2_s, ... (the round medians of step_s) sit after `spread`."""
RELIABILITY_COLUMNS = ("reliable", "unreliable_reason")
"""calibration.csv's last columns; a table written before them is judged from its rounds when loaded."""
UNRELIABLE_MARK = ", unreliable: "
"""What follows a label (phases.csv's `reference_source`) before each reason its number rests on no measurement."""


def marked_unreliable(label: str, reason: str) -> str:
    """`label`, followed by ", unreliable: <reason>" when there is a reason."""
    return f"{label}{UNRELIABLE_MARK}{reason}" if reason else label


def unreliable_reasons(label: str) -> list[str]:
    """The reasons `marked_unreliable` added to `label` (none for a label of a measurement)."""
    return [part.split(" + ")[0] for part in str(label).split(UNRELIABLE_MARK)[1:]]


def contention_verdict(slowdown: float, steps: int, calibration_reliable: bool = True) -> bool | None:
    """Whether a phase ran on a busy machine: `slowdown` (train step / calibrated full step) above
    CONTENTION_THRESHOLD over at least MIN_JUDGED_STEPS steps. None where not judged: too few steps, no calibrated
    step, an unreliable calibration, or a slowdown below FASTEST_PLAUSIBLE_SLOWDOWN (which makes it unreliable)."""
    judged = steps >= MIN_JUDGED_STEPS and math.isfinite(slowdown) and calibration_reliable
    return bool(slowdown > CONTENTION_THRESHOLD) if judged and too_fast_reason(slowdown) is None else None


def too_fast_reason(slowdown: float) -> str | None:
    """Why a phase's `slowdown` proves its calibration wrong, or None when it does not (0: no train time measured)."""
    return (f"the train steps ran {1 / slowdown:.2g}x faster than calibrated (slowdown {slowdown:.2g}, below "
            f"{FASTEST_PLAUSIBLE_SLOWDOWN:g})") if 0 < slowdown < FASTEST_PLAUSIBLE_SLOWDOWN else None


def rounds_disagreement(rounds: list[float], needed: int) -> str:
    """Why round medians make no measurement ("" when they do): fewer than `needed` of them (at most all) lie
    within SPREAD_TOLERANCE of the fastest."""
    fastest = min(rounds)
    agreeing = sum(value <= (1 + SPREAD_TOLERANCE) * fastest for value in rounds)
    if agreeing >= min(needed, len(rounds)):
        return ""
    return (f"rounds disagree: {agreeing} of {len(rounds)} within {SPREAD_TOLERANCE:.0%} of the fastest "
            f"({fastest:.3g} s), spread {(max(rounds) - fastest) / fastest:.2g}")


# --------------------------------------------------------------------------- signature


def _loss_name(phase: Phase) -> str:
    loss = phase.loss
    return f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', type(loss).__qualname__)}"


def phase_signature(phase: Phase, batch: dict[str, torch.Tensor], step: int = 0) -> str:
    """A stable 12-hex-digit key of what decides the cost of `phase`'s step `step` on micro-batch `batch`."""
    trainable = {id(p) for p in phase.trainable}
    params = [(name, list(p.shape), str(p.dtype), id(p) in trainable) for name, p in phase.model.named_parameters()]
    extra = [(type(model).__qualname__, [list(p.shape) for p in model.parameters()]) for model in phase.extra_forward]
    variant = phase.variant(step) if phase.variant is not None else None
    shape = list(batch["input_ids"].shape) if "input_ids" in batch else None
    identity = [type(phase.model).__qualname__, params, extra, _loss_name(phase), shape, repr(variant)]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def describe(phase: Phase, batch: dict[str, torch.Tensor], step: int = 0) -> str:
    """The signature in words, for calibration.csv."""
    total = sum(p.numel() for p in phase.model.parameters())
    trained = sum(p.numel() for p in phase.trainable)
    loss = _loss_name(phase)
    text = (f"{type(phase.model).__name__}, {total / 1e6:.3g}M parameters, {trained / 1e6:.3g}M trained, "
            f"loss {'the default LM loss' if '.Phase.__post_init__.' in loss else loss}, "
            f"{len(phase.extra_forward)} extra forward, micro-batch {'x'.join(map(str, batch['input_ids'].shape))}")
    if phase.variant is not None:
        text += f", variant {phase.variant(step)!r}"
    return text


# --------------------------------------------------------------------------- the table


@dataclass
class Timing:
    signature: str
    rounds: list[float]  # per round: median seconds of the reference step (forward + backward)
    full_step_s: float  # min over rounds of the median full step (+ clipping and the update)
    label: str = ""
    phases: list[str] = field(default_factory=list)  # method/phase[variant] names that run this signature
    unreliable_reason: str = ""  # why the value is no measurement; "" when it is one

    @property
    def reliable(self) -> bool:
        return not self.unreliable_reason

    @property
    def step_s(self) -> float:
        return min(self.rounds)

    @property
    def spread(self) -> float:
        return (max(self.rounds) - min(self.rounds)) / min(self.rounds)


@dataclass
class CalibrationTable:
    """Step times by signature, timed before the first run (`before`, what every run uses) and after the last."""

    before: dict[str, Timing]
    after: dict[str, Timing] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "fp32"
    repeats: int = REPEATS
    seconds: float = math.nan  # what the before calibration took
    after_seconds: float = math.nan  # and the after one (this session's; not stored in calibration.csv)

    def get(self, signature: str) -> Timing | None:
        return self.before.get(signature)

    @property
    def reliable(self) -> bool:
        """Whether every value the runs use (the before table) is a measurement."""
        return all(timing.reliable for timing in self.before.values())

    def unreliable(self) -> dict[str, str]:
        """Why, by signature, a before value is no measurement."""
        return {signature: timing.unreliable_reason for signature, timing in self.before.items()
                if not timing.reliable}

    def save(self, path: Path) -> None:
        """calibration.csv, atomically: one row per (when, signature); floats as repr, so they reload exactly."""
        rounds = max((len(timing.rounds) for timing in [*self.before.values(), *self.after.values()]), default=0)
        header = [*COLUMNS[:5], *(f"round_{i + 1}_s" for i in range(rounds)), *COLUMNS[5:], *RELIABILITY_COLUMNS]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for when, timings in ((BEFORE, self.before), (AFTER, self.after)):
                for timing in timings.values():
                    cells = [repr(value) for value in timing.rounds] + [""] * (rounds - len(timing.rounds))
                    writer.writerow([when, timing.signature, repr(timing.step_s), repr(timing.full_step_s),
                                     repr(timing.spread), *cells, self.device, self.dtype, self.repeats,
                                     repr(self.seconds), timing.label, "; ".join(timing.phases), timing.reliable,
                                     timing.unreliable_reason])

    @classmethod
    def load(cls, path: Path) -> CalibrationTable:
        """The table in `path`; BenchError (one line naming the file) when it is not one."""
        table = cls({})
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"no column(s) {', '.join(sorted(missing))}")
            for row in rows:
                when, signature = row["when"], row["signature"]
                rounds = [float(row[key]) for key in row if key.startswith("round_") and row[key] not in ("", None)]
                full = float(row["full_step_s"])
                if not rounds or not all(value > 0 for value in [*rounds, full]) or when not in (BEFORE, AFTER):
                    raise ValueError(f"bad row for signature {signature!r}")
                timings = table.before if when == BEFORE else table.after
                timings[signature] = Timing(signature, rounds, full, row["label"],
                                            [name for name in row["phases"].split("; ") if name],
                                            _stored_reason(row, rounds))
                table.device, table.dtype, table.repeats = row["device"], row["dtype"], int(row["repeats"])
                if when == BEFORE:
                    table.seconds = float(row["seconds"])
            table.mark_drift()  # whatever the rows say: a disagreeing after value makes the before one no measurement
        except FileNotFoundError:
            raise BenchError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError, AttributeError) as error:
            raise BenchError(f"{path} is not a calibration table ({type(error).__name__}: {error}); delete it to "
                             "recalibrate") from None
        return table

    def drift(self) -> list[tuple[str, float]]:
        """(signature, after / before - 1) of every signature whose after value differs from its before value by
        more than SPREAD_TOLERANCE (of the faster of the two)."""
        moved = []
        for signature, before in self.before.items():
            after = self.after.get(signature)
            if after is not None and max(after.step_s, before.step_s) > (1 + SPREAD_TOLERANCE) * min(
                    after.step_s, before.step_s):
                moved.append((signature, after.step_s / before.step_s - 1))
        return moved

    def mark_drift(self) -> None:
        """Mark unreliable the before value of every signature in `drift()` (once)."""
        for signature, change in self.drift():
            before, after = self.before[signature], self.after[signature]
            reason = (f"before and after the runs disagree: {before.step_s:.3g} s before the first run, "
                      f"{after.step_s:.3g} s after the last ({change:+.0%})")
            if reason not in before.unreliable_reason:
                before.unreliable_reason = "; ".join(filter(None, [before.unreliable_reason, reason]))


def _stored_reason(row: dict, rounds: list[float]) -> str:
    """A calibration.csv row's `unreliable_reason`; for a row written before the column, judged from its rounds."""
    if row.get(RELIABILITY_COLUMNS[0]) in (None, ""):
        return rounds_disagreement(rounds, len(rounds))
    if row[RELIABILITY_COLUMNS[0]] not in ("True", "False"):
        raise ValueError(f"bad `reliable` for signature {row['signature']!r}")
    reason = row.get(RELIABILITY_COLUMNS[1]) or ""
    if (row[RELIABILITY_COLUMNS[0]] == "True") == bool(reason):
        raise ValueError(f"`reliable` and `unreliable_reason` disagree for signature {row['signature']!r}")
    return reason


# --------------------------------------------------------------------------- building and timing the phases


@dataclass
class _Entry:
    phase: Phase
    chunk: dict[str, torch.Tensor]
    step: int
    accumulation: int
    label: str
    phases: list[str]


@contextlib.contextmanager
def _on_device(phase: Phase, device: torch.device) -> Iterator[None]:
    """The phase's modules on `device` for the block; back on the CPU after it when `device` is a GPU, so that
    only one calibration phase holds accelerator memory at a time."""
    modules = (phase.model, phase.eval_model, *phase.extra_forward)
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        if device.type != "cpu":
            for module in modules:
                module.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _walk(method_name: str, phases: Iterator[Phase], budget, data, loop, entries: dict[str, _Entry],
          costs: dict) -> bool:
    """Register every (phase, variant) signature `phases` yields; True when a phase has variants (then another
    seed may draw other ones). The generator is run to its end without training. Phases up to the last one
    with variants are planned as the loop plans them (which steps the phase takes decides which variants run),
    with each signature's step cost counted once per calibration (`costs`), not once per phase."""
    from bench.distributed import world
    from bench.step import autocast, micro_batches, rank_rows, to_device
    from bench.step_plan import StepCosts
    from bench.train import Ledger

    class Costs(StepCosts):
        def _step(self, local_step: int) -> tuple[float, float]:
            key = (phase_signature(self.phase, chunk, local_step), self.ledger.budget.unit)
            if key not in costs:
                costs[key] = super()._step(local_step)
            return costs[key]

    built = list(phases)
    planned = max((index + 1 for index, phase in enumerate(built) if phase.variant is not None), default=0)
    ledger = Ledger(budget, loop.eval_points)
    for index, phase in enumerate(built):
        with _on_device(phase, loop.device), autocast(loop):
            phase.prepare()
            chunks = micro_batches(to_device(rank_rows(data.batch(ledger.step), world()), loop.device),
                                   loop.micro_batch)
            chunk = chunks[0]
            plan = Costs(phase, ledger, data, loop).plan() if index < planned else [(0.0, 0.0)]
        chunk = {key: value.cpu() for key, value in chunk.items()}
        ledger.step += len(plan)
        ledger.spent += sum(units for _, units in plan)
        for key, run in phase.steps_by_variant(len(plan)).items():
            signature = phase_signature(phase, chunk, run[0])
            name = f"{method_name}/{phase.name}" + ("" if key is None else f"[{key}]")
            entry = entries.setdefault(signature, _Entry(phase, chunk, run[0], len(chunks),
                                                         describe(phase, chunk, run[0]), []))
            if name not in entry.phases:
                entry.phases.append(name)
    return planned > 0


def _time(entry: _Entry, loop, repeats: int) -> tuple[float, float]:
    """Median seconds of `repeats` reference steps and full steps of the entry, after one warm-up step."""
    from bench.step import autocast, new_optimizer, to_device

    phase, device = entry.phase, loop.device
    reference, full = [], []
    with _on_device(phase, device):
        phase.prepare()
        chunk = to_device(entry.chunk, device)
        optimizer = new_optimizer(phase.trainable, device, lr=0.0, weight_decay=0.0)  # the update's work, no change
        for attempt in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            with autocast(loop):
                phase.forward_backward(chunk, entry.step, 0.0)
            synchronize(device)
            middle = time.perf_counter()
            if loop.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(phase.trainable, loop.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if attempt:  # the first step warms caches, allocators and the optimizer's state up
                reference.append((middle - start) * entry.accumulation)
                full.append((middle - start) * entry.accumulation + time.perf_counter() - middle)
        del optimizer
        phase.zero_grad()
    return statistics.median(reference), statistics.median(full)


def calibrate(methods: dict[str, Any], context: Callable[[Any, int], Any], seeds: int, budget,
              source: Callable[[int], Any], loop, rounds: int | None = None, repeats: int | None = None,
              echo: Callable[[str], None] = print) -> CalibrationTable:
    """The calibration table of a comparison: every phase signature `methods` will run (built by each method's
    generator on `context(method, seed)`, planned on `source(seed)` under `budget`), timed in `rounds`
    interleaved rounds (default ROUNDS) of `repeats` (REPEATS) timed steps, RETAKE_ROUNDS more for the signatures
    whose rounds disagree (then marked unreliable unless `rounds` of them agree). A method whose phases cannot be
    built is left out with a message: its runs fail or calibrate on their own."""
    rounds, repeats = rounds or ROUNDS, repeats or REPEATS
    started = time.perf_counter()
    entries: dict[str, _Entry] = {}
    costs: dict = {}
    with rng_preserved(loop.device):
        for name, method in methods.items():
            for seed in range(seeds):
                try:
                    varies = _walk(name, method.phases(context(method, seed)), budget, source(seed), loop, entries,
                                   costs)
                except BenchError:
                    raise  # bad input (a setting, a budget too small for a phase): the run would stop on it too
                except Exception as error:  # noqa: BLE001 — the run will meet (and report) the same problem
                    echo(f"calibration: cannot build the phases of {name} s{seed} ({type(error).__name__}: "
                         f"{error}); its runs calibrate their own phases")
                    break
                if not varies:
                    break  # the same phases for every seed
        order = list(entries)
        timings: dict[str, tuple[list[float], list[float]]] = {signature: ([], []) for signature in order}

        def time_rounds(signatures: list[str], count: int) -> None:
            for round_index in range(count):  # interleaved, each round starting one signature further on
                start = round_index % len(signatures)
                for signature in signatures[start:] + signatures[:start]:
                    reference, full = _time(entries[signature], loop, repeats)
                    timings[signature][0].append(reference)
                    timings[signature][1].append(full)

        if order:
            time_rounds(order, rounds)
        disagreeing = [signature for signature in order if rounds_disagreement(timings[signature][0], rounds)]
        if disagreeing:
            echo(f"calibration: the rounds of {len(disagreeing)} phase signature(s) disagree by more than "
                 f"{SPREAD_TOLERANCE:.0%}; {RETAKE_ROUNDS} more rounds")
            time_rounds(disagreeing, RETAKE_ROUNDS)
    table = CalibrationTable(
        {signature: Timing(signature, timings[signature][0], min(timings[signature][1]), entries[signature].label,
                           entries[signature].phases, rounds_disagreement(timings[signature][0], rounds))
         for signature in order},
        device=str(loop.device), dtype=str(loop.autocast_dtype or torch.float32).removeprefix("torch."),
        repeats=repeats)
    table.seconds = time.perf_counter() - started
    return table



# --------------------------------------------------------------------------- the comparison's table on disk


def comparison_table(path: Path, resume: bool, calibrated: Callable[[], CalibrationTable],
                     echo: Callable[[str], None] = print) -> CalibrationTable:
    """The comparison's table: on --resume the one at `path` (a corrupt one is bad input, BenchError naming the
    file: the finished runs used it), else `calibrated()`, saved atomically before the first run. A session
    killed while calibrating left no file, so its --resume calibrates afresh."""
    if resume and path.exists():
        table = CalibrationTable.load(path)
        echo(f"calibration: {path} reused ({len(table.before)} phase signatures)")
        return table
    table = calibrated()
    table.save(path)
    echo(f"calibration: {len(table.before)} phase signatures timed in {table.seconds:.1f} s -> {path}"
         + _unreliable_note(table))
    return table


def _unreliable_note(table: CalibrationTable) -> str:
    unreliable = table.unreliable()
    if not unreliable:
        return ""
    return (f"; unreliable for {len(unreliable)} of them (first: {next(iter(unreliable.values()))}): the machine was "
            "busy; reference time and contention there are marked unreliable")


def recalibrate_after(table: CalibrationTable, path: Path, calibrated: Callable[[], CalibrationTable],
                      echo: Callable[[str], None] = print) -> None:
    """The same signatures timed again after the last run, saved next to the first table. Those whose after value
    differs from the before one by more than SPREAD_TOLERANCE are timed again (a second calibration; the minimum
    over both), and the before value of any that still differ is marked unreliable."""
    after = calibrated()
    table.after, table.after_seconds = after.before, after.seconds
    moved = table.drift()
    if moved:
        echo(f"calibration after the last run: {len(moved)} signature(s) differ from the first table by more than "
             f"{SPREAD_TOLERANCE:.0%}; timing them again")
        again = calibrated()
        table.after_seconds += again.seconds
        for signature, _ in moved:
            first, more = table.after[signature], again.before.get(signature)
            if more is not None:
                rounds = first.rounds + more.rounds
                table.after[signature] = Timing(signature, rounds, min(first.full_step_s, more.full_step_s),
                                                first.label, first.phases, rounds_disagreement(rounds, ROUNDS))
        table.mark_drift()
    table.save(path)
    moved = table.drift()
    echo(f"calibration after the last run: {len(table.after)} signatures in {table.after_seconds:.1f} s"
         + (f"; {len(moved)} differ from the first table by more than {SPREAD_TOLERANCE:.0%}" if moved else "")
         + _unreliable_note(table))


def manifest_entry(table: CalibrationTable) -> dict:
    """What the manifest says about the table (`rounds`: the fewest any signature got, the ones asked for unless
    every signature was timed again)."""
    rounds = min((len(timing.rounds) for timing in table.before.values()), default=0)
    after = None if math.isnan(table.after_seconds) else table.after_seconds
    return {"file": CALIBRATION_FILE, "signatures": len(table.before), "rounds": rounds, "repeats": table.repeats,
            "seconds": table.seconds, "after_seconds": after, "device": table.device,
            "dtype": table.dtype, "contention_threshold": CONTENTION_THRESHOLD, "min_judged_steps": MIN_JUDGED_STEPS,
            "reliable": table.reliable, "unreliable": table.unreliable(), "spread_tolerance": SPREAD_TOLERANCE,
            "fastest_plausible_slowdown": FASTEST_PLAUSIBLE_SLOWDOWN}
