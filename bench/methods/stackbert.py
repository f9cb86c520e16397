"""StackBERT (Gong et al., 2019): grow depth by stacking a model's layers on top of themselves.

`stackbert` reuses the pretrained parent: widen it to LARGE's width (function preserving, α / 1−α
split so the copies can diverge), stack it to LARGE's depth, train everything to the budget.
`stackbert:progressive` is the paper's own schedule from scratch at LARGE's width: train L/4 layers,
stack to L/2, stack to L (stages of 12.5% / 17.5% / 70% of the budget, as 50K / 70K / 280K of 400K).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError
from bench.methods import GrownTraining, GrowthContext, Method, StageOptimizer, register_method
from bench.methods.surgery import DEPTH_MAPS, build_large_at_depth, grow
from bench.phases import Phase


@register_method("stackbert")
class StackBERT(Method):
    @dataclass
    class Settings(GrownTraining):
        alpha: float = 0.6  # each duplicated unit's contribution split α / 1−α between its copies
        depth: str = "stack"  # or "interleave" (each layer repeated in place)
        width_seed_offset: int = 1  # the width maps are drawn from the run's seed + this

        def validate(self, pair=None) -> None:
            if not 0.5 < self.alpha < 1:
                raise BenchError(f"stackbert.alpha must be in (0.5, 1) to break the symmetry of copies, "
                                 f"got {self.alpha}")
            if self.depth not in DEPTH_MAPS:
                raise BenchError(f"stackbert.depth must be one of {', '.join(DEPTH_MAPS)}, got {self.depth!r}")

    def phases(self, ctx: GrowthContext):
        if self.settings.depth not in DEPTH_MAPS:
            raise BenchError(f"stackbert.depth must be one of {', '.join(DEPTH_MAPS)}, got {self.settings.depth!r}")
        growth = grow(ctx.parent, ctx.build_large(), width="split", alpha=self.settings.alpha,
                      seed=ctx.seed + self.settings.width_seed_offset, depth=self.settings.depth)
        yield Phase("train", growth.model, schedule=self.settings.grown_schedule(), settings=growth.settings())


@register_method("stackbert:progressive")
class ProgressiveStackBERT(Method):
    needs_parent = False

    @dataclass
    class Settings(StageOptimizer):
        optimizer: str = "fresh"  # StackingBERT's --reset-optimizer at every stacking
        stage1_share: float = 0.125  # training L/4 layers
        stage2_share: float = 0.175  # training L/2 layers; L layers train for the rest of the budget

        def validate(self, pair=None) -> None:
            shares = (self.stage1_share, self.stage2_share)
            if min(shares) <= 0 or sum(shares) >= 1:  # a stage of share 0 would have no step: the loop refuses it
                raise BenchError(f"stackbert:progressive: stage1_share and stage2_share must be > 0 and sum to "
                                 f"less than 1 (the last stage takes the rest), got {shares}")

    def phases(self, ctx: GrowthContext):
        shares = (self.settings.stage1_share, self.settings.stage2_share)
        if min(shares) < 0 or sum(shares) >= 1:
            raise BenchError(f"stackbert:progressive stage shares {shares} must be >= 0 and leave budget for the last")
        model = None
        for depth, share in self.plan(ctx.pair.large.layers, shares):
            fresh = build_large_at_depth(ctx, depth)
            settings = {"layers": depth}
            if model is None:
                model = fresh
            else:
                growth = grow(model, fresh, depth="stack")
                model, settings = growth.model, settings | growth.settings()
            yield Phase(f"stage-{depth}L", model, share=share, optimizer=self.settings.optimizer, settings=settings)

    @staticmethod
    def plan(layers: int, shares: tuple[float, float]) -> list[tuple[int, float | None]]:
        """(depth, share) per stage: L/4, L/2, L layers, the last taking the rest of the budget (None).
        Stages of equal depth (L < 4) are merged and their shares added."""
        stages: list[tuple[int, float | None]] = []
        for depth, share in zip([max(1, layers // 4), max(1, layers // 2), layers], [*shares, None]):
            if stages and stages[-1][0] == depth:
                previous = stages.pop()[1]
                share = None if share is None else previous + share
            stages.append((depth, share))
        return stages
