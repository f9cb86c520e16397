"""The one training loop. It runs the phases a method yields until the budget is spent.

Read top to bottom: `Budget` (what every method gets), `OptimConfig` / `LoopConfig` (how it
trains), `train_phases` (the loop), and the helpers it uses. The loop knows no method by name:
a phase says which model trains, which parameters, on what loss; collectors observe the phases.

Fairness rules it enforces: the same batches (a pure function of seed and step) and the same eval
cadence for every method; every step is charged its executed FLOPs; the learning-rate schedule
(warmup, then linear decay) ends exactly at the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench.collectors import CollectorSet
from bench.collectors.clock import median_step_seconds
from bench.collectors.flops import count_executed_step
from bench.errors import BenchError
from bench.phases import Phase

Batch = dict[str, torch.Tensor]
BUDGET_UNITS = ("flops", "tokens", "seconds")


@dataclass(frozen=True)
class Budget:
    """How much every method may spend: FLOPs (default), tokens, or seconds of training.

    A seconds budget is turned into steps with a calibrated step time, so that the schedule can
    still end exactly at the budget.
    """

    unit: str
    value: float

    def __post_init__(self):
        if self.unit not in BUDGET_UNITS:
            raise BenchError(f"unknown budget unit {self.unit!r}; use one of {', '.join(BUDGET_UNITS)}")
        if not (self.value > 0 and math.isfinite(self.value)):
            raise BenchError(f"the budget must be a positive number, got {self.value:g} {self.unit}")


@dataclass
class OptimConfig:
    """AdamW and the schedule, shared by every method (phases with their own `lr` excepted)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.06
    grad_clip: float = 1.0

    def lr_at(self, progress: float) -> float:
        """Linear warmup over the first `warmup_fraction` of the budget, then linear decay to 0 at it."""
        if progress < self.warmup_fraction:
            return self.lr * progress / self.warmup_fraction
        return self.lr * max(0.0, 1.0 - progress) / (1.0 - self.warmup_fraction)


@dataclass
class LoopConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_points: int = 20  # eval every budget/eval_points, the same cadence for every method
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None  # torch.bfloat16 on GPU
    micro_batch: int | None = None  # gradient-accumulation chunk size (rows), None = whole batch
    progress_bar: bool = True
    label: str = ""  # shown in the progress bar, e.g. "ligo s0"


@dataclass
class RunResult:
    curve: list[dict]
    phases: list[dict]
    final_model: torch.nn.Module
    final_val_loss: float
    diverged: str | None = None  # the reason, when a loss became NaN or infinite


class BatchSource:
    """What the loop needs from the data: the step's batch and the fixed validation batches."""

    def __init__(self, batch: Callable[[int], Batch], validation: list[Batch], tokens_per_step: int):
        self.batch = batch
        self.validation = validation
        self.tokens_per_step = tokens_per_step


class Ledger:
    """Running totals of the run: budget spent, global step, tokens, FLOPs, next eval point."""

    def __init__(self, budget: Budget, eval_points: int):
        self.budget = budget
        self.eval_every = budget.value / eval_points
        self.spent = 0.0
        self.step = 0
        self.tokens = 0
        self.flops = 0.0
        self.next_eval = self.eval_every

    @property
    def progress(self) -> float:
        return min(1.0, self.spent / self.budget.value)

    def eval_due(self) -> bool:
        return self.spent >= self.next_eval - 1e-9 * self.budget.value

    def passed_eval(self) -> None:
        while self.eval_due():
            self.next_eval += self.eval_every


def train_phases(
    phases: Iterator[Phase], budget: Budget, data: BatchSource, config: LoopConfig, collectors: CollectorSet,
    init_only: bool = False,
) -> RunResult:
    """Train each phase the method yields; with `init_only`, only the phases that fit the grown
    model's initialisation, stopping at the first other phase, whose model is the result."""
    ledger = Ledger(budget, config.eval_points)
    curve: list[dict] = []
    phase_rows: list[dict] = []
    phase, optimizer = None, None
    while True:
        with collectors.window("overhead"):  # building a phase is growth surgery or materialisation
            built = next(phases, None)
        if built is None:
            break
        phase = built
        if init_only and not phase.fits_init:
            for module in (phase.model, phase.eval_model):
                module.to(config.device)
            _evaluate(phase, ledger, data, config, collectors, curve, train_loss=math.nan)
            return RunResult(curve, phase_rows, phase.eval_model, curve[-1]["val_loss"])
        optimizer = _optimizer_for(phase, optimizer, config.optim)
        row, diverged = _train_phase(phase, optimizer, ledger, data, config, collectors, curve)
        phase_rows.append(row)
        if diverged:
            return RunResult(curve, _mark_plain_large(phase_rows, phase.eval_model), phase.eval_model, math.nan,
                             diverged=diverged)
    if phase is None:
        raise ValueError("the method yielded no phase")
    if phase.share is not None or phase.steps is not None:
        raise ValueError(f"phase {phase.name!r} is the last one, so it must take the rest of the budget "
                         "(no share, no fixed steps)")
    return RunResult(curve, _mark_plain_large(phase_rows, phase.eval_model), phase.eval_model, curve[-1]["val_loss"])


def _parameter_count(parameters) -> int:
    return sum(parameter.numel() for parameter in parameters)


def _mark_plain_large(rows: list[dict], final_model: torch.nn.Module) -> list[dict]:
    """`plain_large` in every phase row: plain training (Phase.plain) of a model of the final model's size."""
    final = _parameter_count(final_model.parameters())
    for row in rows:
        row["plain_large"] = row.pop("plain") and row["parameters"] == final
    return rows


def _train_phase(phase: Phase, optimizer: torch.optim.AdamW, ledger: Ledger, data: BatchSource, config: LoopConfig,
                 collectors: CollectorSet, curve: list[dict]) -> tuple[dict, str | None]:
    """Train one phase to its share of the budget; (its phases.csv row, divergence reason or None)."""
    for module in (phase.model, phase.eval_model, *phase.extra_forward):
        module.to(config.device)
    phase.prepare()
    steps_before, flops_before, tokens_before = ledger.step, ledger.flops, ledger.tokens
    with collectors.window("overhead"), autocast(config):
        first_chunk = micro_batches(to_device(data.batch(ledger.step), config.device), config.micro_batch)[0]
        plan = StepCosts(phase, ledger, data, config).plan()
        collectors.start_phase(phase, first_chunk, len(plan))
    _evaluate(phase, ledger, data, config, collectors, curve, train_loss=math.nan)

    bar = tqdm(total=len(plan), desc=f"{config.label} {phase.name}".strip(), disable=not config.progress_bar,
               leave=False, dynamic_ncols=True)
    diverged, local_step = None, 0
    while local_step < len(plan) and not diverged:
        losses = []
        with collectors.window("train"):  # one window per stretch between eval points
            while local_step < len(plan):
                flops, units = plan[local_step]
                lr = _phase_lr(phase, local_step, len(plan), config.optim, ledger.progress)
                loss = _optimizer_step(phase, optimizer, lr, data.batch(ledger.step), local_step, ledger.progress,
                                       config)
                losses.append(loss)
                ledger.step, ledger.tokens = ledger.step + 1, ledger.tokens + data.tokens_per_step
                ledger.flops, ledger.spent = ledger.flops + flops, ledger.spent + units
                local_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if not math.isfinite(loss):
                    diverged = f"loss became {loss} at step {ledger.step} (phase {phase.name})"
                    break
                if ledger.eval_due():
                    break
        if not diverged:
            _evaluate(phase, ledger, data, config, collectors, curve, train_loss=sum(losses) / len(losses))
            ledger.passed_eval()
    bar.close()
    phase.zero_grad()
    row = {"phase": phase.name, "steps": ledger.step - steps_before, "tokens": ledger.tokens - tokens_before,
           "flops_executed": ledger.flops - flops_before, "extra_forwards": len(phase.extra_forward),
           "parameters": _parameter_count(phase.model.parameters()),
           "trainable_parameters": _parameter_count(phase.trainable), "plain": phase.plain, "settings": phase.settings}
    return collectors.end_phase(row["steps"], row), diverged


class StepCosts:
    """Executed FLOPs and budget units per step, counted once per distinct phase variant."""

    def __init__(self, phase: Phase, ledger: Ledger, data: BatchSource, config: LoopConfig):
        self.phase, self.ledger, self.data, self.config = phase, ledger, data, config
        self._flops: dict = {}
        self._seconds: dict = {}

    def flops(self, local_step: int) -> float:
        key = self.phase.variant(local_step) if self.phase.variant else None
        if key not in self._flops:
            batch = self.data.batch(self.ledger.step + local_step)
            self._flops[key] = step_flops(self.phase, batch, self.config, local_step)
        return self._flops[key]

    def units(self, local_step: int, flops: float) -> float:
        unit = self.ledger.budget.unit
        if unit == "flops":
            return flops
        if unit == "tokens":
            return float(self.data.tokens_per_step)
        key = self.phase.variant(local_step) if self.phase.variant else None
        if key not in self._seconds:
            self._seconds[key] = step_seconds(self.phase, self.data.batch(self.ledger.step), self.config, local_step)
        return self._seconds[key]

    def plan(self) -> list[tuple[float, float]]:
        """(flops, budget units) of each step the phase will take, fixed before it starts."""
        phase = self.phase
        budget = self.ledger.budget.value
        left = budget - self.ledger.spent
        if phase.steps is not None:
            plan = [self._step(i) for i in range(phase.steps)]
            if sum(units for _, units in plan) > left * (1 + 1e-6):
                raise BenchError(f"the budget is too small for phase {phase.name!r}: its {phase.steps} steps "
                                 f"need more than the {left:.3g} {self.ledger.budget.unit} left")
            return plan
        target = left if phase.share is None else min(left, phase.share * budget)
        plan, spent = [], 0.0
        while True:
            flops, units = self._step(len(plan))
            if spent + units / 2 > target:  # stop at the step count nearest to the phase's share
                break
            plan.append((flops, units))
            spent += units
        if not plan:
            raise BenchError(f"the budget is too small for phase {phase.name!r}: its share "
                             f"({target:.3g} {self.ledger.budget.unit}) buys less than one step")
        return plan

    def _step(self, local_step: int) -> tuple[float, float]:
        flops = self.flops(local_step)
        return flops, self.units(local_step, flops)


def _optimizer_for(phase: Phase, previous: torch.optim.AdamW | None, optim: OptimConfig) -> torch.optim.AdamW:
    """A fresh AdamW per phase (no weight decay on biases and LayerNorm weights, the 1-D tensors),
    unless the phase keeps the previous one."""
    if phase.keep_optimizer:
        kept = {id(p) for group in previous.param_groups for p in group["params"]} if previous else set()
        if kept != {id(p) for p in phase.trainable}:
            raise ValueError(f"phase {phase.name!r} keeps the optimizer but trains other parameters")
        return previous
    decay = [p for p in phase.trainable if p.ndim >= 2]
    no_decay = [p for p in phase.trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=phase.lr or optim.lr, betas=optim.betas,
                             eps=optim.eps)


def _phase_lr(phase: Phase, local_step: int, phase_steps: int, optim: OptimConfig, progress: float) -> float:
    """The run's schedule, unless the phase brings its own (peak `lr`, warmup, decay to 0 at its end)."""
    if phase.lr is None:
        return optim.lr_at(progress)
    if local_step < phase.warmup_steps:
        return phase.lr * (local_step + 1) / phase.warmup_steps
    return phase.lr * (phase_steps - local_step) / max(1, phase_steps - phase.warmup_steps)


def _optimizer_step(phase: Phase, optimizer, lr: float, batch: Batch, local_step: int, progress: float,
                    config: LoopConfig) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    phase.model.train()
    batch = to_device(batch, config.device)
    chunks = micro_batches(batch, config.micro_batch)
    total = 0.0
    for chunk in chunks:
        with autocast(config):
            loss = phase.loss(chunk, local_step, progress) / len(chunks)
        loss.backward()
        total += loss.item()
    if config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(phase.trainable, config.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def _evaluate(phase: Phase, ledger: Ledger, data: BatchSource, config: LoopConfig, collectors: CollectorSet,
              curve: list[dict], train_loss: float) -> None:
    """Mean validation loss of the phase's model; logged at the ledger's point, never charged."""
    with collectors.window("eval"):
        phase.model.eval()
        phase.eval_model.eval()
        losses = []
        for batch in data.validation:
            with autocast(config):
                losses.append(phase.evaluate(to_device(batch, config.device)).item())
        val_loss = sum(losses) / len(losses)
    row = {"step": ledger.step, "tokens": ledger.tokens, "flops": ledger.flops, "phase": phase.name,
           "train_loss": train_loss, "val_loss": val_loss}
    curve.append(collectors.snapshot(row))


def micro_batches(batch: Batch, micro_batch: int | None) -> list[Batch]:
    rows = batch["input_ids"].shape[0]
    if not micro_batch or micro_batch >= rows:
        return [batch]
    return [{key: value[start:start + micro_batch] for key, value in batch.items()}
            for start in range(0, rows, micro_batch)]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def autocast(config: LoopConfig):
    if config.autocast_dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(config.device.type, dtype=config.autocast_dtype)


def step_flops(phase: Phase, batch: Batch, config: LoopConfig, local_step: int = 0) -> float:
    """Executed FLOPs of one training step of `phase`, counted by running it: its first micro-batch,
    scaled by the rows of the whole batch (micro-batches differ only in which positions are masked,
    as whole steps do)."""
    chunks = micro_batches(to_device(batch, config.device), config.micro_batch)
    rows = batch["input_ids"].shape[0] / chunks[0]["input_ids"].shape[0]
    return float(count_executed_step(phase, chunks[0], local_step)) * rows


def step_seconds(phase: Phase, batch: Batch, config: LoopConfig, local_step: int = 0) -> float:
    """Seconds one training step of `phase` (as its local step `local_step`) takes here: the median of a
    few timed steps."""
    phase.prepare()
    for module in (phase.model, phase.eval_model, *phase.extra_forward):
        module.to(config.device)
    chunks = micro_batches(to_device(batch, config.device), config.micro_batch)
    return median_step_seconds(phase, chunks[0], step=local_step) * len(chunks)
