"""The one training loop. It runs the phases a method yields until the budget is spent.

Read top to bottom: `Budget` (what every method gets), `OptimConfig` / `LoopConfig` (how it
trains), `train_phases` (the loop), and the helpers it uses. The loop knows no method by name:
a phase says which model trains, which parameters, on what loss; collectors observe the phases.

Fairness rules it enforces: the same batches (a pure function of seed and step) and the same eval
cadence for every method; every step is charged its executed FLOPs; the learning-rate schedule
(warmup, then linear decay) ends exactly at the budget.

Nothing lost: with `Checkpoints` (bench/checkpoint.py) the loop saves its state at every eval point and every
so many seconds, and a killed run continues from there to the result it would have had.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch

from bench.checkpoint import Checkpointing, Checkpoints, Saved
from bench.collectors import CollectorSet
from bench.collectors.clock import median_step_seconds
from bench.collectors.flops import count_executed_step
from bench.errors import BenchError
from bench.logs import RunProgress
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
    checkpoint: Checkpointing | None = None  # where the run kept its checkpoints (removed once it is recorded)


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


@dataclass
class LoopState:
    """What the loop carries from step to step besides the models and the optimizer: what a checkpoint holds
    (bench/checkpoint.py), with the RNG streams and the collectors' running totals, to continue from there."""

    ledger: Ledger
    curve: list[dict] = field(default_factory=list)
    phase_rows: list[dict] = field(default_factory=list)
    phase_index: int = 0  # the training phase's place in the method's sequence
    plan: StepPlan | None = None  # the training phase's steps and their costs
    local_step: int = 0  # its steps done
    losses: list[float] = field(default_factory=list)  # train losses since the last eval point
    phase_start: tuple[int, int, float] = (0, 0, 0.0)  # ledger step, tokens, FLOPs when the phase started


def train_phases(
    phases: Iterator[Phase], budget: Budget, data: BatchSource, config: LoopConfig, collectors: CollectorSet,
    init_only: bool = False, checkpoints: Checkpoints | None = None,
) -> RunResult:
    """Train each phase the method yields; with `init_only`, only the phases that fit the grown
    model's initialisation, stopping at the first other phase, whose model is the result.

    With `checkpoints`, the loop saves its state at eval points and every so many seconds, and continues
    from a saved one: the method's phases are built again from the start, those that had finished get their
    trained state (no training), and the one that was training continues at its saved step."""
    checkpoints = checkpoints or Checkpoints(None)
    state = LoopState(Ledger(budget, config.eval_points))
    saved = checkpoints.load(state, identity={"budget": [budget.unit, budget.value],
                                              "eval_points": config.eval_points,
                                              "tokens_per_step": data.tokens_per_step})
    progress = RunProgress(config.label, config.progress_bar, spent_at_start=state.ledger.progress)
    phase, optimizer = None, None
    for index in itertools.count():
        with collectors.window("overhead"):  # building a phase is growth surgery or materialisation
            built = next(phases, None)
        if built is None:
            break
        phase = built
        if init_only and not phase.fits_init:
            for module in (phase.model, phase.eval_model):
                module.to(config.device)
            _evaluate(phase, state, data, config, collectors, train_loss=math.nan)
            return RunResult(state.curve, state.phase_rows, phase.eval_model, state.curve[-1]["val_loss"])
        optimizer = _optimizer_for(phase, optimizer, config.optim)
        _to_device(phase, config.device)
        state.phase_index = index
        if saved and index < saved.phase_index:  # trained before the checkpoint: its trained state, no training
            saved.restore_finished(phase, state)
            continue
        row, diverged = _train_phase(phase, optimizer, state, data, config, collectors, checkpoints, progress,
                                     saved if saved and index == saved.phase_index else None)
        state.phase_rows.append(row)
        if diverged:
            return RunResult(state.curve, _mark_plain_large(state.phase_rows, phase.eval_model), phase.eval_model,
                             math.nan, diverged=diverged)
    if phase is None:
        raise ValueError("the method yielded no phase")
    if phase.share is not None or phase.steps is not None:
        raise ValueError(f"phase {phase.name!r} is the last one, so it must take the rest of the budget "
                         "(no share, no fixed steps)")
    return RunResult(state.curve, _mark_plain_large(state.phase_rows, phase.eval_model), phase.eval_model,
                     state.curve[-1]["val_loss"])


def _parameter_count(parameters) -> int:
    return sum(parameter.numel() for parameter in parameters)


def _mark_plain_large(rows: list[dict], final_model: torch.nn.Module) -> list[dict]:
    """`plain_large` in every phase row: plain training (Phase.plain) of a model of the final model's size."""
    final = _parameter_count(final_model.parameters())
    for row in rows:
        row["plain_large"] = row.pop("plain") and row["parameters"] == final
    return rows


def _to_device(phase: Phase, device: torch.device) -> None:
    """The phase's modules on the device, and only its trainable parameters trainable."""
    for module in (phase.model, phase.eval_model, *phase.extra_forward):
        module.to(device)
    phase.prepare()


def _train_phase(phase: Phase, optimizer: torch.optim.AdamW, state: LoopState, data: BatchSource,
                 config: LoopConfig, collectors: CollectorSet, checkpoints: Checkpoints, progress: RunProgress,
                 saved: Saved | None = None) -> tuple[dict, str | None]:
    """Train one phase to its share of the budget (from where `saved` left it); (its phases.csv row, divergence
    reason or None)."""
    ledger = state.ledger
    with collectors.window("overhead"), autocast(config):
        if saved is None:
            state.plan = StepCosts(phase, ledger, data, config).plan()
            state.local_step, state.losses, state.phase_start = 0, [], (ledger.step, ledger.tokens, ledger.flops)
        else:  # the rest of `state` came with the checkpoint
            state.plan = saved.plan(phase)
        first_batch = to_device(data.batch(state.phase_start[0]), config.device)
        collectors.start_phase(phase, micro_batches(first_batch, config.micro_batch)[0], len(state.plan))
        if saved is not None:
            saved.restore_phase(phase, optimizer, collectors)  # weights, AdamW, collectors' totals, RNG streams
    if saved is None:
        _evaluate(phase, state, data, config, collectors, train_loss=math.nan)

    plan = state.plan
    progress.start_phase(phase.name, len(plan), state.local_step)
    diverged = None
    while state.local_step < len(plan) and not diverged:
        with collectors.window("train"):  # one window per stretch between eval points (and checkpoints)
            while state.local_step < len(plan):
                flops, units = plan[state.local_step]
                lr = _phase_lr(phase, state.local_step, len(plan), config.optim, ledger.progress)
                loss = _optimizer_step(phase, optimizer, lr, data.batch(ledger.step), state.local_step,
                                       ledger.progress, config)
                state.losses.append(loss)
                ledger.step, ledger.tokens = ledger.step + 1, ledger.tokens + data.tokens_per_step
                ledger.flops, ledger.spent = ledger.flops + flops, ledger.spent + units
                state.local_step += 1
                progress.step(loss, lr)
                if not math.isfinite(loss):
                    diverged = f"loss became {loss} at step {ledger.step} (phase {phase.name})"
                    break
                if checkpoints.due(phase, state.local_step) or ledger.eval_due():
                    break
        if diverged:
            break
        at_eval = ledger.eval_due() or state.local_step == len(plan)
        if at_eval:
            train_loss = sum(state.losses) / len(state.losses)
            _evaluate(phase, state, data, config, collectors, train_loss)
            progress.eval_point(ledger.step, ledger.progress, state.curve[-1]["val_loss"], train_loss)
            ledger.passed_eval()
            state.losses = []
        checkpoints.save(state, phase, optimizer, collectors, at_eval=at_eval)  # at eval points, and when due
    progress.close()
    phase.zero_grad()
    start_step, start_tokens, start_flops = state.phase_start
    row = {"phase": phase.name, "steps": ledger.step - start_step, "tokens": ledger.tokens - start_tokens,
           "flops_executed": ledger.flops - start_flops, "extra_forwards": len(phase.extra_forward),
           "parameters": _parameter_count(phase.model.parameters()),
           "trainable_parameters": _parameter_count(phase.trainable), "plain": phase.plain, "settings": phase.settings}
    return collectors.end_phase(row["steps"], row), diverged


MAX_PHASE_STEPS = 10**8
"""No phase plans more steps than this: a budget that would need more is refused before anything trains (it
would run for years; `--budget-steps 1e12` is a typo, not a plan)."""


class StepPlan:
    """(flops, budget units) of each step of a phase, fixed before it starts: one cost per variant key, so a
    plan takes no memory whatever its length."""

    def __init__(self, steps: int, costs: dict[Hashable, tuple[float, float]],
                 variant: Callable[[int], Hashable] | None = None):
        self.steps, self.costs, self.variant = steps, costs, variant

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, local_step: int) -> tuple[float, float]:
        if not 0 <= local_step < self.steps:
            raise IndexError(f"step {local_step} of a {self.steps}-step plan")
        return self.costs[self.variant(local_step) if self.variant else None]

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return (self[step] for step in range(self.steps))

    def units(self) -> float:
        """Budget units of all the steps."""
        if self.variant is None:
            return self.steps * self.costs[None][1]
        return math.fsum(units for _, units in self)


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

    def plan(self) -> StepPlan:
        """The steps the phase will take and what each costs, fixed before it starts: its fixed `steps`, else
        the step count whose cost is nearest to its share of the budget (or to what is left of it)."""
        phase, unit = self.phase, self.ledger.budget.unit
        budget = self.ledger.budget.value
        left = budget - self.ledger.spent
        if phase.steps is not None:
            self._refuse_beyond_limit(phase.steps)
            plan = self._costs(phase.steps)
            if plan.units() > left * (1 + 1e-6):
                raise BenchError(f"the budget is too small for phase {phase.name!r}: its {phase.steps} steps "
                                 f"need more than the {left:.3g} {unit} left")
            return plan
        target = left if phase.share is None else min(left, phase.share * budget)
        steps = self._steps_within(target) if phase.variant is None else self._variant_steps_within(target)
        if steps == 0:
            raise BenchError(f"the budget is too small for phase {phase.name!r}: its share "
                             f"({target:.3g} {unit}) buys less than one step")
        return self._costs(steps)

    def _steps_within(self, target: float) -> int:
        """Steps of a phase whose steps all cost the same: the count nearest to `target`, computed (each step
        is taken while the units spent before it plus half its own stay within `target`)."""
        units = self._step(0)[1]
        if not units > 0:
            raise BenchError(f"phase {self.phase.name!r}: a step costs {units} {self.ledger.budget.unit}")
        steps = max(0, math.floor((target - units / 2) / units) + 1)
        self._refuse_beyond_limit(steps)
        while steps > 0 and (steps - 1) * units + units / 2 > target:  # the division's rounding, both ways
            steps -= 1
        while steps * units + units / 2 <= target:
            steps += 1
        return steps

    def _variant_steps_within(self, target: float) -> int:
        """The same count for a phase whose steps differ (variants): step by step, refused past the limit
        (first estimated from the step that costs most among the first ones)."""
        most = max(self._step(step)[1] for step in range(min(100, MAX_PHASE_STEPS)))
        self._refuse_beyond_limit(math.floor(target / most))
        steps, spent = 0, 0.0
        while True:
            units = self._step(steps)[1]
            if spent + units / 2 > target:
                return steps
            spent += units
            steps += 1
            self._refuse_beyond_limit(steps)

    def _costs(self, steps: int) -> StepPlan:
        if self.phase.variant is None:
            return StepPlan(steps, {None: self._step(0)})
        costs = {}
        for step in range(steps):
            key = self.phase.variant(step)
            if key not in costs:
                costs[key] = self._step(step)
        return StepPlan(steps, costs, self.phase.variant)

    def _refuse_beyond_limit(self, steps: int) -> None:
        if steps > MAX_PHASE_STEPS:
            raise BenchError(f"phase {self.phase.name!r} would take {steps:.3g} steps, more than growbench plans "
                             f"({MAX_PHASE_STEPS:.0e}): the budget ({self.ledger.budget.value:.3g} "
                             f"{self.ledger.budget.unit}) is far too large")

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
def _evaluate(phase: Phase, state: LoopState, data: BatchSource, config: LoopConfig, collectors: CollectorSet,
              train_loss: float) -> None:
    """Mean validation loss of the phase's model; logged at the ledger's point, never charged."""
    with collectors.window("eval"):
        phase.model.eval()
        phase.eval_model.eval()
        losses = []
        for batch in data.validation:
            with autocast(config):
                losses.append(phase.evaluate(to_device(batch, config.device)).item())
        val_loss = sum(losses) / len(losses)
    ledger = state.ledger
    row = {"step": ledger.step, "tokens": ledger.tokens, "flops": ledger.flops, "phase": phase.name,
           "train_loss": train_loss, "val_loss": val_loss}
    state.curve.append(collectors.snapshot(row))


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
