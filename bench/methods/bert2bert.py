"""bert2BERT (Chen et al., ACL 2022): AKI width growth, stacked depth, two-stage training.

Width: the added units of layer l take their weights from layer l+1 (AKI; the top layer from l−1, since
its own weights would make exact copies that never diverge),
inputs normalised 1/count as FPI. `bert2bert:fpi` uses the paper's exact FPI instead, which keeps its
copies identical under training (the symmetry problem, kept on purpose to show it).
Stage 1 (default 10% of the budget): each step runs a sub-model made of the embeddings, the bottom
k·l_b layers and the head, and updates only its top l_b layers (k uniform in 1..L2/l_b, drawn from the
run's seed and the step). The layers below run forward only, under no gradient. Stage 2 trains all.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from bench.errors import BenchError
from bench.methods import GrownTraining, GrowthContext, Method, StageOptimizer, register_method
from bench.methods.surgery import bottom_layers, grow, layer_list
from bench.objective import lm_loss
from bench.phases import Phase


@contextmanager
def _no_gradient(parameters: list[nn.Parameter]) -> Iterator[None]:
    """Forward passes inside record no graph for `parameters` (restored after, before backward)."""
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


@register_method("bert2bert")
class Bert2BERT(Method):
    @dataclass
    class Settings(GrownTraining, StageOptimizer):
        schedule: str = "rewarm"  # the paper trains its grown model on BERT's recipe, 10K warmup (docs/methods.md)
        width: str = "aki"  # or "fpi" (exact copies)
        stage1_share: float = 0.1  # of the budget, sub-model training
        block_layers: int = 0  # l_b, layers each sub-model step trains; 0 = half the parent's depth (at least 1)
        width_seed_offset: int = 1  # the width maps are drawn from the run's seed + this
        sample_seed_offset: int = 2  # the sub-model of each stage-1 step is drawn from the run's seed + this

        def validate(self, pair=None) -> None:
            if self.width not in ("aki", "fpi"):
                raise BenchError(f"bert2bert.width must be aki or fpi, got {self.width!r}")
            if not 0 <= self.stage1_share < 1:
                raise BenchError(f"bert2bert.stage1_share must be in [0, 1), got {self.stage1_share}")
            if self.block_layers < 0:
                raise BenchError(f"bert2bert.block_layers must be >= 0 (0: half the parent's depth), "
                                 f"got {self.block_layers}")
            if pair is not None and self.block_layers > pair.large.layers:
                raise BenchError(f"bert2bert.block_layers={self.block_layers} exceeds {pair.large.name}'s "
                                 f"{pair.large.layers} layers")

    def phases(self, ctx: GrowthContext):
        settings = self.settings
        if settings.width not in ("aki", "fpi"):
            raise BenchError(f"{self.name}.width must be aki or fpi, got {settings.width!r}")
        if not 0 <= settings.stage1_share < 1 or settings.block_layers < 0:
            raise BenchError(f"{self.name}: stage1_share must be in [0, 1) and block_layers >= 0, got {settings}")
        growth = grow(ctx.parent, ctx.build_large(), width=settings.width,
                      seed=ctx.seed + settings.width_seed_offset, depth="stack")
        model, record = growth.model, growth.settings()
        block = settings.block_layers or max(1, ctx.parent.config.num_hidden_layers // 2)
        blocks = ctx.pair.large.layers // block
        if blocks < 1:
            raise BenchError(f"{self.name}: block_layers={block} exceeds LARGE's {ctx.pair.large.layers} layers")
        if settings.stage1_share > 0:
            sample_seed = ctx.seed + settings.sample_seed_offset
            yield Phase(
                "stage-1", model,
                trainable=[p for layer in layer_list(model)[: blocks * block] for p in layer.parameters()],
                share=settings.stage1_share,
                loss=self.submodel_loss(model, block, blocks, sample_seed),
                variant=lambda step: self.sampled_blocks(sample_seed, step, blocks),
                schedule=settings.grown_schedule(),
                settings=record | {"block_layers": block, "sample_seed": sample_seed},
            )
        yield Phase("stage-2", model, schedule=settings.grown_schedule(), optimizer=settings.optimizer, settings=record)

    @staticmethod
    def sampled_blocks(seed: int, step: int, blocks: int) -> int:
        """k of step `step`: the sub-model is the bottom k·l_b layers (uniform, deterministic)."""
        return random.Random(f"bert2bert:{seed}:{step}").randint(1, blocks)

    @classmethod
    def submodel_loss(cls, model: nn.Module, block: int, blocks: int, seed: int):
        layers = layer_list(model)

        def loss(batch, step, progress):
            depth = cls.sampled_blocks(seed, step, blocks) * block
            frozen = [p for layer in layers[: depth - block] for p in layer.parameters()]
            with bottom_layers(model, depth), _no_gradient(frozen):
                return lm_loss(model, batch)

        return loss


@register_method("bert2bert:fpi")
class Bert2BERTFPI(Bert2BERT):
    @dataclass
    class Settings(Bert2BERT.Settings):
        width: str = "fpi"
