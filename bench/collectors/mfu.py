"""Model FLOPs utilisation: executed FLOPs / (train seconds x devices x peak FLOP/s), per phase and cumulative.

The peak is the one table's (bench/hardware.py, `PEAK_FLOPS`) for the GPU and the math the run's matrix products
use (bf16 autocast, TF32 or strict float32), read in `start_phase`, where the loop's autocast is on. On a CPU it is
a matmul peak measured once per process on every thread torch uses (so a CPU phase counts as one device here,
whatever its core-hours). Where no peak is known, `mfu` is NaN and `mfu_peak_source` says "unavailable: <why>";
never 0.

Columns: `mfu` (phases.csv and curve.csv), `mfu_peak_flops` (per device) and `mfu_peak_source` (phases.csv).
The numerator is `flops_executed` (the loop's counted FLOPs, `flops` in the curve), the denominator the clock's
`train_s`: time outside training windows (eval, surgery, checkpoints) is not in it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench import distributed
from bench.collectors import Collector, register_collector
from bench.hardware import resolve_peak, run_math
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

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        self._peak, self._source = resolve_peak(self.run.device, run_math(self.run.device))

    def _devices(self, row: dict[str, Any]) -> int:
        # a CPU's measured peak already covers every thread a process uses (one per torchrun rank); a GPU's is per
        # device
        return int(row.get("devices") or 1) if self.run.device.type == "cuda" else distributed.world().size

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"mfu": mfu(row.get("flops"), row.get("train_s"), self._devices(row), self._peak)}

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        return {"mfu": mfu(row.get("flops_executed"), row.get("train_s"), self._devices(row), self._peak),
                "mfu_peak_flops": math.nan if self._peak is None else self._peak,
                "mfu_peak_source": self._source}
