"""One optimizer step, and what keeps a GPU busy through it.

- `StepBatches`: each step's batch as this process trains it: its rows of the global batch (torchrun), cut into
  micro-batches, each with its scored positions computed on the CPU and its weight, the share of the step's scored
  tokens it holds. On CUDA a background thread builds the next step's batch in pinned memory while this one runs,
  and the copy does not block.
- `optimizer_step`: forward and backward of every micro-batch (through DistributedDataParallel under torchrun,
  gradients synchronised on the last one only), clipping, AdamW (fused on CUDA). Nothing in it waits for the GPU.
- `LossMeter`: the train losses and their finiteness, summed on the device; read (one sync, one all-reduce across
  ranks) only where the loop needs them.

The loss of a step is the sum over its micro-batches (and ranks) of (mean loss x weight): the mean over the global
batch's scored tokens, whatever the number of processes or the micro-batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench import distributed
from bench.distributed import World
from bench.objective import scored_count, with_scored_positions
from bench.phases import Phase

Batch = dict[str, torch.Tensor]


def micro_batches(batch: Batch, micro_batch: int | None) -> list[Batch]:
    rows = batch["input_ids"].shape[0]
    if not micro_batch or micro_batch >= rows:
        return [batch]
    return [{key: value[start:start + micro_batch] for key, value in batch.items()}
            for start in range(0, rows, micro_batch)]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def autocast(config):
    """The loop's mixed precision (`config.autocast_dtype`, bf16 on GPU), or none."""
    if config.autocast_dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(config.device.type, dtype=config.autocast_dtype)


def rank_rows(batch: Batch, world: World) -> Batch:
    """This rank's equal slice of the global batch's rows (the whole batch without torchrun)."""
    if not world.distributed:
        return batch
    rows = batch["input_ids"].shape[0] // world.size
    return {key: value[world.rank * rows:(world.rank + 1) * rows] for key, value in batch.items()}


class StepBatches:
    """The step's micro-batches on the device, each with its loss weight; the next step's prepared ahead on CUDA."""

    def __init__(self, batch: Callable[[int], Batch], causal: bool, micro_batch: int | None, device: torch.device,
                 world: World):
        self.batch, self.causal, self.micro_batch, self.device, self.world = batch, causal, micro_batch, device, world
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="growbench-batches") if device.type == "cuda" else None
        self._ahead: tuple[int, Future] | None = None

    def _prepare(self, step: int) -> list[tuple[Batch, float]]:
        """On the CPU: this rank's micro-batches of step `step`, with scored positions and weights."""
        batch = self.batch(step)
        total = scored_count(batch["labels"], self.causal)
        chunks = [with_scored_positions(chunk, self.causal)
                  for chunk in micro_batches(rank_rows(batch, self.world), self.micro_batch)]
        prepared = []
        for chunk in chunks:  # a batch with nothing to score weighs its micro-batches equally (its loss is NaN)
            weight = len(chunk["scored_targets"]) / total if total else 1 / len(chunks)
            if self._pool is not None:
                chunk = {key: value.pin_memory() for key, value in chunk.items()}
            prepared.append((chunk, weight))
        return prepared

    def get(self, step: int) -> list[tuple[Batch, float]]:
        if self._ahead is not None and self._ahead[0] == step:
            prepared = self._ahead[1].result()
        else:
            prepared = self._prepare(step)
        if self._pool is not None:
            self._ahead = (step + 1, self._pool.submit(self._prepare, step + 1))
        return [(to_device(chunk, self.device), weight) for chunk, weight in prepared]

    def example(self, step: int) -> Batch:
        """The first micro-batch of step `step`, on the device (what collectors look at), nothing prepared ahead."""
        chunk, _ = self._prepare(step)[0]
        return to_device(chunk, self.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _PhaseLoss(nn.Module):
    """A module whose forward *is* the phase's loss, so that DistributedDataParallel sees the forward that uses the
    trainable parameters (the losses call `model.base_model` and the head directly, run KI's teacher, bert2BERT's
    sub-models or LiGO's functional forward: wrapping the model alone would not synchronise them)."""

    def __init__(self, phase: Phase):
        super().__init__()
        self.model = phase.model
        self.phase_loss = phase.loss

    def forward(self, batch: Batch, step: int, progress: float) -> torch.Tensor:
        return self.phase_loss(batch, step, progress)


@dataclass
class StepLoss:
    """How a phase's step computes its loss: the phase's own function, or DDP around it (torchrun)."""

    forward: Callable[[Batch, int, float], torch.Tensor]
    no_sync: Callable[[], contextlib.AbstractContextManager]

    @classmethod
    def of(cls, phase: Phase, device: torch.device, world: World) -> StepLoss:
        if not world.distributed:
            return cls(phase.loss, contextlib.nullcontext)
        owned = {id(parameter) for parameter in phase.model.parameters()}
        if any(id(parameter) not in owned for parameter in phase.trainable):
            raise ValueError(f"phase {phase.name!r} trains parameters outside its model; DDP cannot synchronise them")
        ddp = DistributedDataParallel(
            _PhaseLoss(phase), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=phase.variant is not None)  # bert2BERT's sub-models vary by step
        return cls(ddp, ddp.no_sync)


def new_optimizer(groups: list[dict], device: torch.device, **settings) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on CUDA."""
    return torch.optim.AdamW(groups, fused=device.type == "cuda", **settings)


def optimizer_step(loss_of: StepLoss, trainable: list[nn.Parameter], optimizer: torch.optim.AdamW, lr: float,
                   chunks: list[tuple[Batch, float]], local_step: int, progress: float, config, world: World,
                   global_step: int) -> torch.Tensor:
    """One step over the micro-batches; the step's loss (this rank's part of the global mean) as a device tensor."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = None
    for number, (chunk, weight) in enumerate(chunks):
        last = number == len(chunks) - 1
        with contextlib.nullcontext() if last else loss_of.no_sync(), autocast(config):
            loss = distributed.poisoned_for_test(loss_of.forward(chunk, local_step, progress), global_step) * weight
        (loss * world.size).backward()  # DDP averages gradients over ranks; the weights already sum to 1 over them
        total = loss.detach() if total is None else total + loss.detach()
    if config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


class LossMeter:
    """Train losses summed on the device since the last read, with the first step that was not finite."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.steps = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.total += loss.double()
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.steps += 1

    def read(self, world: World, flag: bool = False) -> Reading:
        """The losses since the last read, summed over ranks (one sync), and whether any rank raised `flag` (rank 0's
        decisions, e.g. a checkpoint is due, travel with it)."""
        packed = torch.stack([self.total, (self.first_bad >= 0).double(),
                              torch.tensor(float(flag), dtype=torch.float64, device=self.device)])
        total, bad, flagged = distributed.sum_over_ranks(packed).tolist()
        first_bad = None
        if bad:
            first = torch.where(self.first_bad >= 0, self.first_bad, torch.iinfo(torch.int64).max)
            first_bad = int(distributed.min_over_ranks(first.clone()).item())
        reading = Reading(total, self.steps, first_bad, flagged > 0)
        self._reset()
        return reading


@dataclass
class Reading:
    loss_sum: float  # the steps' losses, each the mean over its global batch
    steps: int
    first_bad_step: int | None  # the first global step whose loss was not finite on some rank
    flagged: bool

    @property
    def finite(self) -> bool:
        return self.first_bad_step is None and math.isfinite(self.loss_sum)
