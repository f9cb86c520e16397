"""A phase: a stretch of training with one fixed structure. Methods yield them; the loop runs them.

The loop knows no method by name: everything method-specific (which model, which parameters
train, what the loss is, what extra passes run) lives in the phase a method yields.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.objective import lm_loss

OPTIMIZER_HANDLING = ("fresh", "carry")


@dataclass(frozen=True)
class Schedule:
    """How a phase's learning rate follows the run's schedule: linear warmup over the first `warmup` of the budget
    (None: the run's warmup fraction; 0: none, the phase starts at the peak), then linear decay to 0 at the budget,
    with a peak of `lr_scale` times the run's. Measured from the start of the run, so the stages of a progressive
    method share one schedule, and a grown model that should not warm up again says `warmup=0`."""

    warmup: float | None = None
    lr_scale: float = 1.0

    def __post_init__(self):
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise ValueError(f"a schedule's warmup is a fraction of the budget in [0, 1), got {self.warmup}")
        if not self.lr_scale > 0:
            raise ValueError(f"a schedule's lr_scale must be > 0, got {self.lr_scale}")


LossFn = Callable[[dict[str, torch.Tensor], int, float], torch.Tensor]
"""(batch, step, progress) -> scalar loss. `step` counts the phase's steps from 0; `progress` is the
fraction of the run's budget already spent when the step starts."""


@dataclass
class Phase:
    """One phase of a method. Exactly one of `share` / `steps` may be set; neither means "the rest".

    name:      shown in progress bars and phases.csv (e.g. "train", "operator", "growth-1").
    model:     the module trained; its parameters not in `trainable` are frozen for the phase.
    trainable: the parameters the phase's (fresh) AdamW updates; None means all of `model`'s.
    share:     fraction of the run's budget this phase spends.
    steps:     or a fixed number of steps (LiGO's operator), charged to the budget like any other.
    loss:      the training loss; default: the LM loss of `model` on the batch.
    eval_model: the plain transformers model this phase produces; validation scores it and the
               run saves it after the last phase. Default `model`.
    evaluate:  validation loss of one batch; default the LM loss of `eval_model`. A phase whose
               `eval_model` only exists after the phase (LiGO's operator) scores its own forward.
    extra_forward: models that run forward only inside `loss` (KI's teacher); the analytic FLOP
               count charges them, and they must never change.
    schedule:  how the phase follows the run's schedule (which ends exactly at the budget): its warmup and
               its peak relative to the run's (`Schedule`); default the run's own.
    lr, warmup_steps: or an own schedule (warmup, then linear decay to 0 at the phase's end) with this peak
               (LiGO's operator, whose parameters are not the model's).
    variant:   for a phase whose step structure changes from step to step (bert2BERT's sampled
               sub-models): step -> a hashable key, deterministic. The loop counts the FLOPs of
               each distinct key once and charges every step what its own key costs.
    optimizer: "fresh" (a new AdamW) or "carry": every parameter that the previous phase trained and this
               one trains again, unchanged (the same tensor, or the same name, shape and values after a surgery),
               keeps its AdamW moments and step count; the others start fresh (KI's switch from teacher-guided
               to plain training, MSLT's joint stage).
    embeddings_detached: the loss cuts the embeddings' output from the graph, so a trainable embedding learns only
               through its later uses (MSLT's tied head trained as the output projection): the derived FLOP counts
               (fvcore, analytic) then start the backward at the first layer that trains, as the executed one does.
    fits_init: the phase only fits the grown model's initialisation (LiGO's operator); `bench grow`
               runs such phases and stops at the first phase that is not one.
    settings:  what the method chose for this phase, recorded in phases.csv.

    `plain` (derived) says the phase is plain training: every parameter of `model` trains on the default
    LM loss, on the run's schedule (its `schedule` may set the warmup and peak), with no extra passes and no variants. The loop records it, so that a
    report can tell the budget spent on plain LARGE training from what a method spent around it.
    """

    name: str
    model: nn.Module
    trainable: list[nn.Parameter] | None = None
    share: float | None = None
    steps: int | None = None
    loss: LossFn | None = None
    eval_model: nn.Module | None = None
    evaluate: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
    extra_forward: list[nn.Module] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    lr: float | None = None
    warmup_steps: int = 0
    variant: Callable[[int], Hashable] | None = None
    optimizer: str = "fresh"
    embeddings_detached: bool = False
    fits_init: bool = False
    settings: dict = field(default_factory=dict)
    plain: bool = field(init=False)

    def __post_init__(self):
        if self.share is not None and self.steps is not None:
            raise ValueError(f"phase {self.name}: give share or steps, not both")
        if self.optimizer not in OPTIMIZER_HANDLING:
            raise ValueError(f"phase {self.name}: optimizer must be one of {', '.join(OPTIMIZER_HANDLING)}")
        self.plain = (self.trainable is None and self.loss is None and self.eval_model is None
                      and not self.extra_forward and self.variant is None and self.lr is None)
        if self.trainable is None:
            self.trainable = list(self.model.parameters())
        if self.eval_model is None:
            self.eval_model = self.model
        if self.loss is None:
            model = self.model
            self.loss = lambda batch, step, progress: lm_loss(model, batch)
        if self.evaluate is None:
            eval_model = self.eval_model
            self.evaluate = lambda batch: lm_loss(eval_model, batch)

    def steps_by_variant(self, steps: int) -> dict[Hashable, Sequence[int]]:
        """The phase's local steps 0..steps-1 grouped by variant key (one group, key None, a range without
        variants: no memory for a long phase)."""
        if self.variant is None:
            return {None: range(steps)}
        groups: dict[Hashable, list[int]] = {}
        for step in range(steps):
            groups.setdefault(self.variant(step), []).append(step)
        return groups

    def prepare(self) -> None:
        """Freeze everything in the phase's modules but `trainable` (frozen = forward only)."""
        for module in (self.model, self.eval_model, *self.extra_forward):
            module.requires_grad_(False)
        for parameter in self.trainable:
            parameter.requires_grad_(True)

    def forward_backward(self, batch: dict[str, torch.Tensor], step: int, progress: float) -> torch.Tensor:
        """The loss of one step, with gradients accumulated into `trainable` (call `prepare` first)."""
        loss = self.loss(batch, step, progress)
        loss.backward()
        return loss

    def zero_grad(self) -> None:
        for parameter in self.trainable:
            parameter.grad = None
