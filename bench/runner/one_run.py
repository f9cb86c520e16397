"""One run: a method's phases trained under the budget with every collector observing, then recorded.

Under torchrun, rank 0 announces each run it trains (bench/distributed.py) and the other ranks train their part
of it through `follow_run`, writing nothing."""

from __future__ import annotations

import math
from pathlib import Path

from bench import distributed
from bench.calibration import CalibrationTable
from bench.checkpoint import Checkpointing, Checkpoints, remove_checkpoints
from bench.collectors import CollectorSet, RunInfo, make_collectors
from bench.distributed import PhaseSource, TrainJob
from bench.records import DIVERGED, DONE, RunDir
from bench.runner.prepare import Prepared
from bench.train import Budget, LoopConfig, RunResult, train_phases

__all__ = ["Checkpointing", "follow_run", "record_run", "train_run"]


def train_run(phases: PhaseSource, budget: Budget, prepared: Prepared, seed: int, loop: LoopConfig, folder: Path,
              prices: dict, country: str = "WLD", init_only: bool = False,
              calibration: CalibrationTable | None = None, checkpoint: Checkpointing | None = None) -> RunResult:
    """With `checkpoint`, the run saves checkpoints into its folder and, with `checkpoint.resume`, continues
    from the one it finds there (an unreadable one is warned about and the run starts over)."""
    job = TrainJob(phases, budget, prepared, seed, loop, prices, country, init_only, calibration, checkpoint)
    distributed.lead(job)
    result = _train(job, folder, Checkpoints(checkpoint, identity={"seed": seed}))
    result.checkpoint = checkpoint
    return result


def follow_run(job: TrainJob) -> None:
    """A follower rank's part of a run rank 0 trains: no folder, no checkpoints of its own (rank 0's are shared)."""
    _train(job, None, Checkpoints(None))


def _train(job: TrainJob, folder: Path | None, checkpoints: Checkpoints) -> RunResult:
    loop, rows = job.loop, job.prepared.config.batch_size // distributed.world().size
    accumulation = math.ceil(rows / (loop.micro_batch or rows))
    collectors = CollectorSet(make_collectors(RunInfo(loop.device, folder, job.prices, job.country, accumulation,
                                                      job.calibration)))
    try:
        return train_phases(job.phases(), job.budget, job.prepared.source(job.seed), loop, collectors, job.init_only,
                            checkpoints)
    finally:
        collectors.close()


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
