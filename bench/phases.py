"""A phase: a stretch of training with one fixed structure. Methods yield them; the loop runs them.

The loop knows no method by name: everything method-specific (which model, which parameters
train, what the loss is, what extra passes run) lives in the phase a method yields.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.objective import lm_loss

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
    eval_model: what validation scores during and after the phase; default `model`. It is the
               model the run saves when this is the last phase.
    lr, warmup_steps: an own schedule (warmup, then linear decay to 0 at the phase's end) with
               this peak; default: the run's schedule, which ends exactly at the budget.
    variant:   for a phase whose step structure changes from step to step (bert2BERT's sampled
               sub-models): step -> a hashable key, deterministic. The loop counts the FLOPs of
               each distinct key once and charges every step what its own key costs.
    fits_init: the phase only fits the grown model's initialisation (LiGO's operator); `bench grow`
               runs such phases and stops at the first phase that is not one.
    settings:  what the method chose for this phase, recorded in phases.csv.
    """

    name: str
    model: nn.Module
    trainable: list[nn.Parameter] | None = None
    share: float | None = None
    steps: int | None = None
    loss: LossFn | None = None
    eval_model: nn.Module | None = None
    lr: float | None = None
    warmup_steps: int = 0
    variant: Callable[[int], Hashable] | None = None
    fits_init: bool = False
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.share is not None and self.steps is not None:
            raise ValueError(f"phase {self.name}: give share or steps, not both")
        if self.trainable is None:
            self.trainable = list(self.model.parameters())
        if self.eval_model is None:
            self.eval_model = self.model
        if self.loss is None:
            model = self.model
            self.loss = lambda batch, step, progress: lm_loss(model, batch)
