"""A phase's step plan: how many steps it takes and what each costs (executed FLOPs and budget units), fixed
before it starts, and the measurements it is built from (`step_flops`, `step_seconds`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING

from bench.collectors.clock import median_step_seconds
from bench.collectors.flops import count_executed_step
from bench.distributed import world
from bench.errors import BenchError
from bench.phases import Phase
from bench.step import Batch, autocast, micro_batches, rank_rows, to_device

if TYPE_CHECKING:
    from bench.train import BatchSource, Ledger, LoopConfig


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
    """Executed FLOPs and budget units per step, counted once per distinct phase variant (on the phase's first
    batch: every batch scores as many predictions, see `step_flops`)."""

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


def step_flops(phase: Phase, batch: Batch, config: LoopConfig, local_step: int = 0) -> float:
    """Executed FLOPs of one training step of `phase`, counted by running it: its first micro-batch,
    scaled by the rows of the whole batch. Exact for every micro-batch and every step of the phase: micro-batches
    and steps differ only in which positions are scored, never in how many (every position but the last for
    causal LM; for masked LM the same count in every row, `bench.data.batches.mask_tokens`), and the MLM head,
    which runs on the scored positions only, is the one part whose cost depends on the batch."""
    chunks = micro_batches(to_device(batch, config.device), config.micro_batch)
    rows = batch["input_ids"].shape[0] / chunks[0]["input_ids"].shape[0]
    return float(count_executed_step(phase, chunks[0], local_step)) * rows


def step_seconds(phase: Phase, batch: Batch, config: LoopConfig, local_step: int = 0) -> float:
    """Seconds one training step of `phase` (as its local step `local_step`) takes here, in the run's dtype and on
    this process's rows of the batch: the median of a few timed steps."""
    phase.prepare()
    for module in (phase.model, phase.eval_model, *phase.extra_forward):
        module.to(config.device)
    chunks = micro_batches(to_device(rank_rows(batch, world()), config.device), config.micro_batch)
    with autocast(config):
        return median_step_seconds(phase, chunks[0], step=local_step) * len(chunks)
