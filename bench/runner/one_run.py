"""One run: a method's phases trained under the budget with every collector observing, then recorded."""

from __future__ import annotations

import math
from pathlib import Path

from bench.calibration import CalibrationTable
from bench.checkpoint import Checkpointing, Checkpoints, remove_checkpoints
from bench.collectors import CollectorSet, RunInfo, make_collectors
from bench.records import DIVERGED, DONE, RunDir
from bench.runner.prepare import Prepared
from bench.train import Budget, LoopConfig, RunResult, train_phases

__all__ = ["Checkpointing", "record_run", "train_run"]


def train_run(phases, budget: Budget, prepared: Prepared, seed: int, loop: LoopConfig, folder: Path,
           prices: dict, country: str = "WLD", init_only: bool = False,
           calibration: CalibrationTable | None = None, checkpoint: Checkpointing | None = None) -> RunResult:
    """With `checkpoint`, the run saves checkpoints into its folder and, with `checkpoint.resume`, continues
    from the one it finds there (an unreadable one is warned about and the run starts over)."""
    accumulation = math.ceil(prepared.config.batch_size / (loop.micro_batch or prepared.config.batch_size))
    collectors = CollectorSet(make_collectors(RunInfo(loop.device, folder, prices, country, accumulation,
                                                      calibration)))
    checkpoints = Checkpoints(checkpoint, identity={"seed": seed})
    try:
        result = train_phases(phases, budget, prepared.source(seed), loop, collectors, init_only, checkpoints)
    finally:
        collectors.close()
    result.checkpoint = checkpoint
    return result


def record_run(run: RunDir, result: RunResult, prepared: Prepared, **status) -> None:
    """The run's files, then its status; its checkpoints go once it is recorded (unless kept)."""
    run.write_curve(result.curve)
    run.write_phases(result.phases)
    if result.diverged:
        run.set_status(DIVERGED, reason=result.diverged, **status)
    else:
        run.save_model(result.final_model, prepared.tokenizer)
        run.set_status(DONE, reason=None, final_val_loss=result.final_val_loss, **status)
    if result.checkpoint is not None and not result.checkpoint.keep:
        remove_checkpoints(result.checkpoint.folder)
