"""One run: a method's phases trained under the budget with every collector observing, then recorded."""

from __future__ import annotations

import math
from pathlib import Path

from bench.calibration import CalibrationTable
from bench.collectors import CollectorSet, RunInfo, make_collectors
from bench.records import DIVERGED, DONE, RunDir
from bench.runner.prepare import Prepared
from bench.train import Budget, LoopConfig, RunResult, train_phases


def train_run(phases, budget: Budget, prepared: Prepared, seed: int, loop: LoopConfig, folder: Path,
           prices: dict, country: str = "WLD", init_only: bool = False,
           calibration: CalibrationTable | None = None) -> RunResult:
    accumulation = math.ceil(prepared.config.batch_size / (loop.micro_batch or prepared.config.batch_size))
    collectors = CollectorSet(make_collectors(RunInfo(loop.device, folder, prices, country, accumulation,
                                                      calibration)))
    try:
        return train_phases(phases, budget, prepared.source(seed), loop, collectors, init_only)
    finally:
        collectors.close()


def record_run(run: RunDir, result: RunResult, prepared: Prepared, **status) -> None:
    run.write_curve(result.curve)
    run.write_phases(result.phases)
    if result.diverged:
        run.set_status(DIVERGED, reason=result.diverged, **status)
        return
    run.save_model(result.final_model, prepared.tokenizer)
    run.set_status(DONE, reason=None, final_val_loss=result.final_val_loss, **status)


