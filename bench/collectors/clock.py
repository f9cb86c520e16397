"""Wall-clock time by window kind, device-hours, and a reproducible reference time per phase.

`train_s` is what training steps took (the GPU synchronised at every window edge); `eval_s` and
`overhead_s` (building the phase — growth surgery, LiGO's materialisation —, phase set-up, checkpoint
I/O, FLOP counting, this calibration) are logged apart and not charged; a phase's overhead includes the
work that built it, since a phase's clock starts when the previous phase ends. `reference_s` is the
phase's steps x a step time measured once per phase in a calibration pass (No Train No Gain's
"reference system time"): stable from run to run where wall time is not. A phase whose steps vary
(bert2BERT's sampled sub-models) is calibrated once per variant and charged each step its own variant's
time. The calibrated step is forward + backward without the optimizer update, since calibrating must
not change the weights.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

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

    device_hours: GPU-hours on a GPU (one device per process; DDP ranks are summed by the loop); on a CPU,
    core-hours = train_s x the threads torch uses. `device_kind` says which.
    """

    order = 20

    def __init__(self, run):
        super().__init__(run)
        self._started = time.perf_counter()
        self._total = dict.fromkeys(WINDOW_KINDS, 0.0)
        self._phase = dict.fromkeys(WINDOW_KINDS, 0.0)  # reset when a phase ends, so building the next counts
        self._reference_by_step = [0.0]  # reference seconds of the phase's first n steps, n = 0, 1, ...
        self._reference_done = 0.0  # reference seconds of finished phases
        self._steps_done = 0  # optimizer steps of finished phases
        if run.device.type == "cuda":
            self._device_kind, self._devices = "gpu-hours", 1
        else:
            self._device_kind, self._devices = "cpu-core-hours", torch.get_num_threads()

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        seconds_of_step = {}
        for run in phase.steps_by_variant(max(steps, 1)).values():
            seconds = median_step_seconds(phase, batch, step=run[0]) * self.run.accumulation
            seconds_of_step |= dict.fromkeys(run, seconds)
        self._reference_by_step = [0.0]
        for step in range(len(seconds_of_step)):
            self._reference_by_step.append(self._reference_by_step[-1] + seconds_of_step[step])

    def _reference(self, steps: int) -> float:
        """Reference seconds of the phase's first `steps` steps (steps past the plan at the last step's time)."""
        table = self._reference_by_step
        if steps < len(table):
            return table[steps]
        return table[-1] + (steps - len(table) + 1) * (table[-1] - table[-2])

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
        }

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        reference = self._reference(steps)
        self._reference_done += reference
        self._steps_done += steps
        row = {
            "train_s": self._phase["train"],
            "eval_s": self._phase["eval"],
            "overhead_s": self._phase["overhead"],
            "reference_s": reference,
            "reference_step_s": reference / steps if steps else self._reference(1),  # the mean over variants
            "device_hours": self._device_hours(self._phase["train"]),
            "device_kind": self._device_kind,
            "devices": self._devices,
        }
        self._phase = dict.fromkeys(WINDOW_KINDS, 0.0)
        return row
