"""Model FLOPs utilisation: executed FLOPs / (train seconds x devices x peak FLOP/s), per phase and cumulative.

The peak is the one table's (bench/hardware.py, `PEAK_FLOPS`) for the GPU and the math the run's matrix products
use (bf16 autocast, TF32 or strict float32), read in `start_phase`, where the loop's autocast is on. On a CPU it is
a matmul peak measured once per process on every thread torch uses (so a CPU phase counts as one device here,
whatever its core-hours). Where no peak is known, `mfu` is NaN and `mfu_peak_source` says "unavailable: <why>";
never 0.

Columns: `mfu` (phases.csv and curve.csv), `mfu_peak_flops` (per device) and `mfu_peak_source` (phases.csv).
The numerator is `flops_executed` (the loop's counted FLOPs, `flops` in the curve), the denominator the clock's
`train_s`: time outside training windows (eval, surgery, checkpoints) is not in it.

An MFU above 100% is impossible: a measured CPU peak is then measured again (once per run; the first measurement
was made on a busy machine), and a value still above it is refused as a measurement: `mfu` NaN, and
`mfu_peak_source` "unreliable: above the peak (<source>)" (bench/hardware.py's ABOVE_PEAK).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench import distributed
from bench.collectors import Collector, register_collector
from bench.hardware import ABOVE_PEAK, resolve_peak, run_math
from bench.phases import Phase


def mfu(flops: float | None, train_s: float | None, devices: int, peak: float | None) -> float:
    """flops / (train_s x devices x peak), or NaN where a term is missing or no time was spent."""
    if peak is None or flops is None or train_s is None or not train_s > 0 or not devices:
        return math.nan
    return flops / (train_s * devices * peak)


@register_collector("mfu")
class MfuCollector(Collector):
    """MFU against the run's device and math peak (derived from the loop's FLOPs and the clock's train_s)."""

    order = 80  # after flops (10) and clock (20); nothing derives from it

    def __init__(self, run):
        super().__init__(run)
        self._peak: float | None = None
        self._source = "unavailable: no phase started"
        self._math: torch.dtype | str = torch.float32
        self._measured_again = False  # a CPU peak is measured again at most once per run

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        self._math = run_math(self.run.device)
        self._peak, self._source = resolve_peak(self.run.device, self._math)

    def _devices(self, row: dict[str, Any]) -> int:
        # a CPU's measured peak already covers every thread a process uses (one per torchrun rank); a GPU's is per
        # device
        return int(row.get("devices") or 1) if self.run.device.type == "cuda" else distributed.world().size

    def _checked(self, flops: float | None, train_s: float | None, row: dict[str, Any]) -> float:
        """mfu(); where it is above 1 on a CPU, against the peak measured again (once per run)."""
        value = mfu(flops, train_s, self._devices(row), self._peak)
        if value > 1 and self.run.device.type == "cpu" and not self._measured_again:
            self._measured_again = True
            self._peak, self._source = resolve_peak(self.run.device, self._math, again=True)
            value = mfu(flops, train_s, self._devices(row), self._peak)
        return value

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        value = self._checked(row.get("flops"), row.get("train_s"), row)
        return {"mfu": value if value <= 1 else math.nan}

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        value = self._checked(row.get("flops_executed"), row.get("train_s"), row)
        above = value > 1
        return {"mfu": math.nan if above else value, "mfu_peak_flops": math.nan if self._peak is None else self._peak,
                "mfu_peak_source": f"{ABOVE_PEAK} ({self._source})" if above else self._source}
