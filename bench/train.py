"""The one training loop. It runs the phases a method yields until the budget is spent.

Read top to bottom: `Budget` (what every method gets), `OptimConfig` / `LoopConfig` (how it
trains), `train_phases` (the loop), and the helpers it uses. The loop knows no method by name:
a phase says which model trains, which parameters, on what loss; collectors observe the phases.

Fairness rules it enforces: the same batches (a pure function of seed and step) and the same eval
cadence for every method; every step is charged its executed FLOPs; the learning-rate schedule
(warmup, then linear decay) ends exactly at the budget.

Nothing lost: with `Checkpoints` (bench/checkpoint.py) the loop saves its state at every eval point and every
so many seconds, and a killed run continues from there to the result it would have had. A stop signal (SIGTERM,
SIGHUP, SIGUSR1: bench/stopping.py) ends the loop at a step boundary, after a checkpoint at that step: one process
stops after the step it is on, torchrun's ranks at the next point where they read their losses (every step on a CPU,
at most `read_every` steps on a GPU), all at the same step.

The step itself (bench/step.py) does not wait for the GPU: train losses stay on the device until a read point
(every `read_every` steps, eval points, a phase's end), where they are read once and, under torchrun, agreed
between the ranks (bench/distributed.py): a non-finite loss on any rank stops every rank there, and rank 0's plan
and checkpoint decisions are every rank's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from bench import distributed, stopping
from bench.checkpoint import Checkpointing, Checkpoints, Saved
from bench.collectors import CollectorSet
from bench.distributed import World
from bench.errors import BenchError, Stopped
from bench.logs import RunProgress
from bench.objective import with_scored_positions
from bench.phases import Phase, Schedule
from bench.step import Batch, LossMeter, StepBatches, StepLoss, autocast, new_optimizer, optimizer_step, to_device
from bench.step_plan import MAX_PHASE_STEPS, StepCosts, StepPlan, step_flops, step_seconds

__all__ = ["MAX_PHASE_STEPS", "StepCosts", "StepPlan", "step_flops", "step_seconds"]  # the plan, from bench.step_plan
BUDGET_UNITS = ("flops", "tokens", "seconds")
RUN_SCHEDULE = Schedule()  # the run's own warmup and peak


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

    def lr_at(self, progress: float, schedule: Schedule = RUN_SCHEDULE) -> float:
        """Linear warmup over the first `warmup_fraction` of the budget (or the schedule's own warmup), then linear
        decay to 0 at it, peaking at `lr` (times the schedule's `lr_scale`)."""
        warmup = self.warmup_fraction if schedule.warmup is None else schedule.warmup
        peak = self.lr * schedule.lr_scale
        if progress < warmup:
            return peak * progress / warmup
        return peak * max(0.0, 1.0 - progress) / (1.0 - warmup)


@dataclass
class LoopConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_points: int = 20  # eval every budget/eval_points, the same cadence for every method
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None  # torch.bfloat16 on GPU
    micro_batch: int | None = None  # gradient-accumulation chunk size (rows of a process's slice), None = whole slice
    progress_bar: bool = True
    label: str = ""  # shown in the progress bar, e.g. "ligo s0"
    read_every: int | None = None  # steps between reads of the train loss (a sync); None: 1 on a CPU, 50 on a GPU

    @property
    def steps_between_reads(self) -> int:
        return self.read_every or (1 if self.device.type == "cpu" else 50)


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

    def __init__(self, batch: Callable[[int], Batch], validation: list[Batch], tokens_per_step: int,
                 causal: bool = False):
        self.batch = batch
        self.validation = validation
        self.tokens_per_step = tokens_per_step
        self.causal = causal  # which predictions the loss scores: next tokens (causal LM), or masked ones


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
    loss_sum: float = 0.0  # train losses since the last eval point, summed
    loss_steps: int = 0  # ... over this many steps
    phase_start: tuple[int, int, float] = (0, 0, 0.0)  # ledger step, tokens, FLOPs when the phase started
    boundary: dict = field(default_factory=dict)  # the phase's validation loss at its start and after its first 1%


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
    world = distributed.world()
    state = LoopState(Ledger(budget, config.eval_points))
    saved = distributed.broadcast(checkpoints.load({"budget": [budget.unit, budget.value],
                                                    "eval_points": config.eval_points,
                                                    "tokens_per_step": data.tokens_per_step}))
    if saved is not None:
        saved.restore_loop(state)
    batches = StepBatches(data.batch, data.causal, config.micro_batch, config.device, world)
    validation = [with_scored_positions(batch, data.causal) for batch in data.validation] if world.leader else []
    progress = RunProgress(config.label, config.progress_bar and world.leader, spent_at_start=state.ledger.progress)
    run = _Run(state, data, batches, validation, config, collectors, checkpoints, progress, world)
    try:
        with stopping.deferred(f"training {config.label or 'the run'}"):
            result = run.phases(phases, init_only, saved)
            run.agree_on_stop(flagged=True)  # a signal after the last read: every rank ends alike, after this run
            return result
    finally:
        batches.close()


@dataclass
class _Run:
    """What one run's phases share while the loop trains them."""

    state: LoopState
    data: BatchSource
    batches: StepBatches
    validation: list[Batch]
    config: LoopConfig
    collectors: CollectorSet
    checkpoints: Checkpoints
    progress: RunProgress
    world: World

    def phases(self, phases: Iterator[Phase], init_only: bool, saved: Saved | None) -> RunResult:
        state, config, collectors = self.state, self.config, self.collectors
        phase, previous = None, None
        for index in itertools.count():
            # building a phase is growth surgery or materialisation, in the run's dtype (LiGO's grown weights are
            # those its bf16 operator phase computed)
            with collectors.window("overhead"), autocast(config):
                built = next(phases, None)
            if built is None:
                break
            phase = built
            if init_only and not phase.fits_init:
                for module in (phase.model, phase.eval_model):
                    module.to(config.device)
                self.evaluate(phase, train_loss=math.nan)
                return RunResult(state.curve, state.phase_rows, phase.eval_model, state.curve[-1]["val_loss"])
            _to_device(phase, config.device)
            optimizer = _optimizer_for(phase, previous, config.optim, config.device)
            previous = (phase, optimizer)
            state.phase_index = index
            if saved and index < saved.phase_index:  # trained before the checkpoint: its trained state, no training
                saved.restore_finished(phase, state)
                continue
            row, diverged = self.train_phase(phase, optimizer, saved if saved and index == saved.phase_index else None)
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

    def train_phase(self, phase: Phase, optimizer: torch.optim.AdamW,
                    saved: Saved | None = None) -> tuple[dict, str | None]:
        """Train one phase to its share of the budget (from where `saved` left it); (its phases.csv row, divergence
        reason or None)."""
        state, config, collectors, world = self.state, self.config, self.collectors, self.world
        ledger = state.ledger
        with collectors.window("overhead"), autocast(config):
            if saved is None:
                plan = StepCosts(phase, ledger, self.data, config).plan() if world.leader else None
                state.plan = _shared_plan(plan, phase)  # rank 0 plans, every rank takes the same steps
                state.local_step, state.loss_sum, state.loss_steps = 0, 0.0, 0
                state.phase_start = (ledger.step, ledger.tokens, ledger.flops)
                state.boundary = {}
            else:  # the rest of `state` came with the checkpoint
                state.plan = saved.plan(phase)
            collectors.start_phase(phase, self.batches.example(state.phase_start[0]), len(state.plan))
            if saved is not None:
                saved.restore_phase(phase, optimizer, collectors)  # weights, AdamW, collectors' totals, RNG streams
        if saved is None:
            state.boundary["val_loss_start"] = self.evaluate(phase, train_loss=math.nan)

        plan, loss_of, meter = state.plan, StepLoss.of(phase, config.device, world), LossMeter(config.device)
        early_step = early_steps(len(plan))
        stop_at_any_step = not world.distributed  # torchrun's ranks can only agree where they read their losses
        self.progress.start_phase(phase.name, len(plan), state.local_step)
        diverged, save = None, False
        while state.local_step < len(plan) and not diverged:
            phase.model.train()
            with collectors.window("train"):  # one window per stretch between eval points (and checkpoints)
                while state.local_step < len(plan):
                    flops, units = plan[state.local_step]
                    lr = _phase_lr(phase, state.local_step, len(plan), config.optim, ledger.progress)
                    loss = optimizer_step(loss_of, phase.trainable, optimizer, lr, self.batches.get(ledger.step),
                                          state.local_step, ledger.progress, config, world, ledger.step + 1)
                    ledger.step, ledger.tokens = ledger.step + 1, ledger.tokens + self.data.tokens_per_step
                    ledger.flops, ledger.spent = ledger.flops + flops, ledger.spent + units
                    state.local_step += 1
                    meter.add(loss, ledger.step)
                    at_eval = ledger.eval_due() or state.local_step == len(plan)
                    at_early = state.local_step == early_step
                    stop_due = stop_at_any_step and stopping.requested() is not None
                    if not (at_eval or at_early or stop_due or state.local_step % config.steps_between_reads == 0):
                        continue
                    wanted = world.leader and self.checkpoints.wanted(phase, state.local_step, at_eval)
                    # rank 0's checkpoint decision and any rank's stop signal go to every rank
                    reading = meter.read(world, flag=wanted or stopping.requested() is not None)
                    state.loss_sum, state.loss_steps = state.loss_sum + reading.loss_sum, state.loss_steps + reading.steps
                    self.progress.advance(reading.steps, reading.loss_sum / reading.steps, lr)
                    if not reading.finite:
                        diverged = (f"loss became {_non_finite(reading.loss_sum)} at step {reading.first_bad_step} "
                                    f"(phase {phase.name})")
                        break
                    save = reading.flagged
                    if save or at_eval or at_early:
                        break
            if diverged:
                break
            if state.local_step == early_step and "val_loss_after_1pct" not in state.boundary:
                with collectors.window("eval"):
                    state.boundary["val_loss_after_1pct"] = self.validation_loss(phase)
            if ledger.eval_due() or state.local_step == len(plan):
                self.evaluate(phase, state.loss_sum / state.loss_steps)
                self.progress.eval_point(ledger.step, ledger.progress, state.curve[-1]["val_loss"],
                                         state.loss_sum / state.loss_steps)
                ledger.passed_eval()
                state.loss_sum, state.loss_steps = 0.0, 0
            stop = self.agree_on_stop(save)
            if save or stop:  # at eval points, when one is due, and before stopping
                self.checkpoints.save(state, phase, optimizer, collectors)
            if stop:
                self.progress.close()
                raise Stopped(stop, f"after step {ledger.step} of {config.label or 'the run'} ({phase.name}: "
                                    f"{state.local_step} of {len(plan)} steps), "
                                    + ("its checkpoint written" if self.checkpoints.enabled else "no checkpoint kept"),
                              curve=list(state.curve))
        self.progress.close()
        phase.zero_grad()
        start_step, start_tokens, start_flops = state.phase_start
        row = {"phase": phase.name, "steps": ledger.step - start_step, "tokens": ledger.tokens - start_tokens,
               "flops_executed": ledger.flops - start_flops, "extra_forwards": len(phase.extra_forward),
               "parameters": _parameter_count(phase.model.parameters()),
               "trainable_parameters": _parameter_count(phase.trainable), "plain": phase.plain,
               "val_loss_start": state.boundary.get("val_loss_start", math.nan),
               "val_loss_after_1pct": state.boundary.get("val_loss_after_1pct", math.nan),
               "steps_1pct": early_step, "settings": phase.settings}
        return collectors.end_phase(row["steps"], row), diverged

    def agree_on_stop(self, flagged: bool) -> int | None:
        """The stop signal every rank stops on now, or None. Call it on every rank alike, with `flagged` the read's
        flag (False: no rank had a signal when the losses were read)."""
        if not flagged:
            return None
        if not self.world.distributed:
            return stopping.requested()
        number = int(distributed.max_over_ranks(
            torch.tensor(stopping.requested() or 0, dtype=torch.int64, device=self.config.device)).item())
        if number:
            stopping.agree(number)
        return number or None

    def evaluate(self, phase: Phase, train_loss: float) -> float:
        """Validation loss of the phase's model (rank 0's; the others' curve is not kept), logged as a curve row at the
        ledger's point, never charged."""
        ledger = self.state.ledger
        with self.collectors.window("eval"):
            val_loss = self.validation_loss(phase)
        row = {"step": ledger.step, "tokens": ledger.tokens, "flops": ledger.flops, "phase": phase.name,
               "train_loss": train_loss, "val_loss": val_loss}
        self.state.curve.append(self.collectors.snapshot(row))
        return val_loss

    @torch.no_grad()
    def validation_loss(self, phase: Phase) -> float:
        """Mean loss of the phase's model over the fixed validation batches, on rank 0 (NaN on the others); the
        caller times it as eval."""
        if not self.world.leader:
            return math.nan
        phase.model.eval()
        phase.eval_model.eval()
        losses = []
        for batch in self.validation:
            with autocast(self.config):
                losses.append(phase.evaluate(to_device(batch, self.config.device)).float())
        return sum(torch.stack(losses).tolist()) / len(losses)  # one read of the device


def early_steps(phase_steps: int) -> int:
    """The phase's first 1% of steps (at least one): where phases.csv's `val_loss_after_1pct` is taken, to show what
    a surgery and a schedule cost right after a phase boundary."""
    return max(1, math.ceil(phase_steps / 100))


def _non_finite(value: float) -> str:
    return "nan" if math.isnan(value) else str(value)


def _shared_plan(plan: StepPlan | None, phase: Phase) -> StepPlan:
    """Rank 0's plan of the phase, on every rank (its variant function is each rank's own copy)."""
    steps, costs = distributed.broadcast((plan.steps, plan.costs) if plan is not None else None)
    return StepPlan(steps, costs, phase.variant)


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


def _optimizer_for(phase: Phase, previous: tuple[Phase, torch.optim.AdamW] | None, optim: OptimConfig,
                   device: torch.device) -> torch.optim.AdamW:
    """A new AdamW for the phase (no weight decay on biases and LayerNorm weights, the 1-D tensors; fused on CUDA);
    with `optimizer="carry"`, every parameter it trains that the previous phase trained too keeps its state."""
    decay = [p for p in phase.trainable if p.ndim >= 2]
    no_decay = [p for p in phase.trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = new_optimizer([g for g in groups if g["params"]], device, lr=phase.lr or optim.lr, betas=optim.betas,
                              eps=optim.eps)
    if phase.optimizer == "carry" and previous is not None:
        for parameter, before in _carried(phase, *previous).items():
            optimizer.state[parameter] = {key: value.clone() for key, value in before.items()}
    return optimizer


def _carried(phase: Phase, previous_phase: Phase, previous: torch.optim.AdamW) -> dict[torch.nn.Parameter, dict]:
    """The previous AdamW's state of each parameter `phase` trains that maps one to one onto a parameter the previous
    phase trained: the same tensor, or (after a surgery built a new model) the one of the same name, shape and
    values."""
    by_name = dict(previous_phase.model.named_parameters())
    trains = {id(parameter) for parameter in phase.trainable}
    carried = {}
    for name, parameter in phase.model.named_parameters():
        if id(parameter) not in trains:
            continue
        before = parameter if parameter in previous.state else by_name.get(name)
        if before is None or before not in previous.state or before.shape != parameter.shape:
            continue
        if before is parameter or torch.equal(before.detach(), parameter.detach()):
            carried[parameter] = previous.state[before]
    return carried


def _phase_lr(phase: Phase, local_step: int, phase_steps: int, optim: OptimConfig, progress: float) -> float:
    """The run's schedule as the phase follows it, unless the phase brings its own (peak `lr`, warmup, decay to 0 at
    its end)."""
    if phase.lr is None:
        return optim.lr_at(progress, phase.schedule)
    if local_step < phase.warmup_steps:
        return phase.lr * (local_step + 1) / phase.warmup_steps
    return phase.lr * (phase_steps - local_step) / max(1, phase_steps - phase.warmup_steps)
