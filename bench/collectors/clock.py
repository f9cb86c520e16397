"""Wall-clock time by window kind, device-hours, a reproducible reference time and contention, per phase.

`train_s` is what training steps took (the GPU synchronised at every window edge); `eval_s` and
`overhead_s` (building the phase — growth surgery, LiGO's materialisation —, phase set-up, checkpoint
I/O, FLOP counting, calibration) are logged apart and not charged; a phase's overhead includes the
work that built it, since a phase's clock starts when the previous phase ends.

`reference_s` is the phase's steps x a calibrated step time (No Train No Gain's "reference system time"),
forward + backward of the step's micro-batches. In a comparison the step time comes from the comparison's
calibration table (bench/calibration.py; `RunInfo.calibration`), looked up by the step's phase signature, so
the same signature costs the same reference seconds in every run (`reference_source` "comparison
calibration"). Without a table (`bench pretrain`, `bench grow`, the parent) or for a signature the table
lacks, the phase is calibrated here, at its start ("phase calibration": without the optimizer update, since
it must not change the weights). A phase whose steps vary (bert2BERT's sampled sub-models) is charged each
step its own variant's time; `signature` lists its variants' signatures joined by "+".

A table value that is no measurement (its rounds disagreed, calibration.py) is still charged, and the phase's
`reference_source` says "comparison calibration, unreliable: <why>"; so it does when the phase's train steps ran
faster than calibration.FASTEST_PLAUSIBLE_SLOWDOWN x the calibrated full step, which only a slow calibration
explains.

Contention: `load_avg` is the mean 1-minute load average at the end of the phase's train windows;
`slowdown` = measured train step time / the table's full step time (forward, backward and update) for the
phase's steps; `contended` = calibration.contention_verdict(slowdown, steps): above CONTENTION_THRESHOLD, judged
over at least MIN_JUDGED_STEPS steps (empty when not judged: no table value, too few steps, or an unreliable
calibration).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from bench import distributed
from bench.calibration import (
    contention_verdict,
    marked_unreliable,
    phase_signature,
    too_fast_reason,
    unreliable_reasons,
)
from bench.collectors import WINDOW_KINDS, Collector, register_collector
from bench.hardware import rng_preserved, synchronize
from bench.phases import Phase


def median_step_seconds(phase: Phase, batch: dict[str, torch.Tensor], repeats: int = 3, step: int = 0) -> float:
    """Median wall time of `repeats` forward + backward passes of `phase` (as its local step `step`)
    after one warm-up pass. Gradients are dropped and the RNG restored, so training is unaffected."""
    device = batch["input_ids"].device
    times = []
    with rng_preserved(device):
        for attempt in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            phase.forward_backward(batch, step, 0.0)
            phase.zero_grad()
            synchronize(device)
            if attempt:  # the first pass warms caches and allocators up
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@register_collector("clock")
class ClockCollector(Collector):
    """Seconds per window kind, device-hours of training and reference time, per phase and cumulative.

    device_hours: GPU-hours on a GPU (one device per process); on a CPU, core-hours = train_s x the threads torch
    uses. `device_kind` says which. Under torchrun (`combine`): the slowest rank's seconds, and the device-hours of
    every rank's devices over them (a rank that waits for the others still holds its device).
    """

    order = 20

    def __init__(self, run):
        super().__init__(run)
        self._started = time.perf_counter()
        self._total = dict.fromkeys(WINDOW_KINDS, 0.0)
        self._phase = dict.fromkeys(WINDOW_KINDS, 0.0)  # reset when a phase ends, so building the next counts
        # (reference seconds, calibrated full step seconds: forward, backward, update) by variant key, the phase's
        # variant (None: one key, None) and its planned steps
        self._times: dict = {None: (0.0, math.nan)}
        self._variant, self._planned = None, 1
        self._signature, self._reference_source, self._loads = "", "", []
        self._reference_done = 0.0  # reference seconds of finished phases
        self._steps_done = 0  # optimizer steps of finished phases
        if run.device.type == "cuda":
            self._device_kind, self._devices = "gpu-hours", 1
        else:
            self._device_kind, self._devices = "cpu-core-hours", torch.get_num_threads()

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        table = self.run.calibration
        times, signatures, sources = {}, [], set()
        for key, run in phase.steps_by_variant(max(steps, 1)).items():
            signature = phase_signature(phase, batch, run[0])
            timing = table.get(signature) if table is not None else None
            if timing is not None:
                times[key] = (timing.step_s, timing.full_step_s)
                sources.add(marked_unreliable("comparison calibration", timing.unreliable_reason))
            else:
                times[key] = (median_step_seconds(phase, batch, step=run[0]) * self.run.accumulation, math.nan)
                sources.add("phase calibration" + (" (signature not in the comparison's table)" if table else ""))
            signatures.append(signature)
        self._times, self._variant, self._planned = times, phase.variant, max(steps, 1)
        self._signature = "+".join(sorted(set(signatures)))
        self._reference_source = " + ".join(sorted(sources))
        self._loads = []

    def _step_times(self, steps: int) -> list[tuple[float, float]]:
        """(reference, full) seconds of the phase's first `steps` steps (steps past the plan at the last one's)."""
        variant = self._variant
        planned = [self._times[variant(step) if variant else None] for step in range(min(steps, self._planned))]
        last = self._times[variant(self._planned - 1) if variant else None]
        return planned + [last] * (steps - len(planned))

    def _uniform(self) -> bool:
        return len({seconds for seconds, _ in self._times.values()}) == 1

    def _reference(self, steps: int) -> float:
        """Reference seconds of the phase's first `steps` steps. A phase of one step time is charged steps x
        that time exactly."""
        if self._uniform():
            return steps * next(iter(self._times.values()))[0]
        return math.fsum(seconds for seconds, _ in self._step_times(steps))

    def _calibrated_full(self, steps: int) -> float:
        """Mean calibrated full step time of the phase's first `steps` steps (NaN when one is not in the table)."""
        if len({full for _, full in self._times.values()}) == 1 and steps:
            return next(iter(self._times.values()))[1]
        full = [full for _, full in self._step_times(steps)]
        return math.fsum(full) / len(full) if full else math.nan

    @contextlib.contextmanager
    def window(self, kind: str) -> Iterator[None]:
        synchronize(self.run.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.run.device)
            elapsed = time.perf_counter() - start
            self._total[kind] += elapsed
            self._phase[kind] += elapsed
            if kind == "train":
                with contextlib.suppress(OSError, AttributeError):  # no load average on some systems
                    self._loads.append(os.getloadavg()[0])

    def combine(self, columns: list[dict[str, Any]]) -> dict[str, Any]:
        combined = dict(columns[0])
        for key in ("train_s", "eval_s", "overhead_s", "wall_s"):
            if key in combined:  # a phase's row has no wall time
                combined[key] = max(column[key] for column in columns)
        combined["devices"] = sum(column["devices"] for column in columns)
        combined["device_hours"] = combined["train_s"] * combined["devices"] / 3600
        if "slowdown" in combined:  # a phase's end: judged by its slowest rank
            slowdowns = [column["slowdown"] for column in columns if math.isfinite(column["slowdown"])]
            combined["slowdown"] = max(slowdowns) if slowdowns else math.nan
            judged = [column["contended"] for column in columns if column["contended"] is not None]
            combined["contended"] = any(judged) if judged else None
            loads = [column["load_avg"] for column in columns if math.isfinite(column["load_avg"])]
            combined["load_avg"] = statistics.fmean(loads) if loads else math.nan
        return combined

    def _device_hours(self, train_s: float) -> float:
        return train_s * self._devices / 3600

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row["step"]` counts optimizer steps since the run started."""
        reference = self._reference_done + self._reference(row["step"] - self._steps_done)
        return {
            "train_s": self._total["train"],
            "eval_s": self._total["eval"],
            "overhead_s": self._total["overhead"],
            "reference_s": reference,
            "wall_s": time.perf_counter() - self._started,
            "device_hours": self._device_hours(self._total["train"]),
            "device_kind": self._device_kind,
            "devices": self._devices,
        }

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        reference = self._reference(steps)
        self._reference_done += reference
        self._steps_done += steps
        uniform = self._uniform()
        # not judged against the calibration under torchrun: a step there also waits for the all-reduce, which the
        # calibration (one process) does not time
        compared = steps and not distributed.world().distributed
        slowdown = (self._phase["train"] / steps / self._calibrated_full(steps)) if compared else math.nan
        source = marked_unreliable(self._reference_source, too_fast_reason(slowdown) or "")
        row = {
            "train_s": self._phase["train"],
            "eval_s": self._phase["eval"],
            "overhead_s": self._phase["overhead"],
            "reference_s": reference,
            # the table's value itself for a phase of one step time; the mean over variants otherwise
            "reference_step_s": self._step_times(1)[0][0] if uniform or not steps else reference / steps,
            "reference_source": source,
            "signature": self._signature,
            "load_avg": statistics.fmean(self._loads) if self._loads else math.nan,
            "slowdown": slowdown,
            "contended": contention_verdict(slowdown, steps, not unreliable_reasons(source)),
            "device_hours": self._device_hours(self._phase["train"]),
            "device_kind": self._device_kind,
            "devices": self._devices,
        }
        self._phase = dict.fromkeys(WINDOW_KINDS, 0.0)
        return row

    def state_dict(self) -> dict[str, Any]:
        """Seconds so far (run and phase, by window kind), wall time, the finished phases' reference time, and
        the phase's step times (as they were measured when it started)."""
        return {"total": dict(self._total), "phase": dict(self._phase), "wall_s": time.perf_counter() - self._started,
                "reference_done": self._reference_done, "steps_done": self._steps_done, "loads": list(self._loads),
                "times": dict(self._times), "signature": self._signature,
                "reference_source": self._reference_source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._total, self._phase = dict(state["total"]), dict(state["phase"])
        self._started = time.perf_counter() - state["wall_s"]
        self._reference_done, self._steps_done = state["reference_done"], state["steps_done"]
        self._loads, self._times = list(state["loads"]), dict(state["times"])
        self._signature, self._reference_source = state["signature"], state["reference_source"]
