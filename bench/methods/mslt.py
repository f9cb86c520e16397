"""MSLT, multi-stage layerwise training (Yang et al., "Progressively Stacking 2.0", 2020).

The parent is widened to LARGE's width (function preserving, α / 1−α split), then grows in chunks of
L1 layers: the new top layers copy the current top layers, and a growth stage trains only them and the
output head. The embeddings and the old layers only run forward, so no backward runs below the lowest new
layer. A final joint stage trains everything. One schedule runs across the stages (no warmup again after
growth) and AdamW's state carries into the joint stage (docs/methods.md: prts' re-implementation).

With a tied LM head the output projection *is* the word embedding, so "train the head, freeze the embeddings"
conflicts; `embeddings` decides: "output" (default) trains the tied matrix as the output projection only (the
embeddings' output is cut from the graph, as prts trains its untied head and freezes the token embedding),
"frozen" keeps it frozen (the head's own bias and transform train), "full" trains every embedding, which
makes backward run through every frozen layer (charged like any executed FLOP).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.errors import BenchError
from bench.methods import GrownTraining, GrowthContext, Method, StageOptimizer, register_method
from bench.methods.surgery import build_large_at_depth, embeddings_detached, grow, is_tied, parameter_groups
from bench.objective import lm_loss
from bench.phases import Phase

EMBEDDINGS = ("output", "frozen", "full")


@register_method("mslt")
class MSLT(Method):
    @dataclass
    class Settings(GrownTraining, StageOptimizer):
        embeddings: str = "output"  # what growth stages train of the embeddings (module docstring)
        growth_share: float = 0.5  # of the budget, split equally between the growth stages; joint takes the rest
        chunk_layers: int = 0  # layers added per growth stage; 0 = the parent's depth L1
        alpha: float = 0.6  # width: each duplicated unit's contribution split α / 1−α between its copies
        width_seed_offset: int = 1  # the width maps are drawn from the run's seed + this

        def validate(self, pair=None) -> None:
            if not 0 < self.growth_share < 1:  # 0 would give growth stages of no step: the loop refuses those
                raise BenchError(f"mslt.growth_share must be in (0, 1), got {self.growth_share}")
            if self.chunk_layers < 0:
                raise BenchError(f"mslt.chunk_layers must be >= 0 (0: the parent's depth), got {self.chunk_layers}")
            if not 0.5 < self.alpha < 1:
                raise BenchError(f"mslt.alpha must be in (0.5, 1) to break the symmetry of copies, got {self.alpha}")
            if self.embeddings not in EMBEDDINGS:
                raise BenchError(f"mslt.embeddings must be one of {', '.join(EMBEDDINGS)}, got {self.embeddings!r}")

    def phases(self, ctx: GrowthContext):
        settings, large = self.settings, ctx.pair.large
        if not 0 <= settings.growth_share < 1 or settings.chunk_layers < 0:
            raise BenchError(f"mslt: growth_share must be in [0, 1) and chunk_layers >= 0, got {settings}")
        depths = self.depths(ctx.parent.config.num_hidden_layers, large.layers, settings.chunk_layers)
        stage_share = settings.growth_share / max(1, len(depths) - 1)
        growth = grow(ctx.parent, build_large_at_depth(ctx, depths[0]), width="split", alpha=settings.alpha,
                      seed=ctx.seed + settings.width_seed_offset)
        model, record, schedule = growth.model, growth.settings(), settings.grown_schedule()
        for stage, (current, target) in enumerate(itertools.pairwise(depths), start=1):
            deeper = grow(model, build_large_at_depth(ctx, target), depth="stack")
            model = deeper.model
            _, layers, head = parameter_groups(model)
            trainable = [p for layer in layers[current:] for p in layer] + head + self.trained_embeddings(model)
            stage_record = record | deeper.settings() | {"layers": target, "trained_layers": [current, target - 1]}
            yield Phase(f"growth-{stage}", model, trainable=trainable, share=stage_share, schedule=schedule,
                        loss=self.growth_loss(model), embeddings_detached=settings.embeddings == "output",
                        optimizer=settings.optimizer, settings=stage_record)
        yield Phase("joint", model, schedule=schedule, optimizer=settings.optimizer,
                    settings=record | {"layers": large.layers})

    def trained_embeddings(self, model) -> list:
        """What a growth stage trains of the embeddings: the tied output projection ("output", nothing more when the
        head is untied: it trains with the head), nothing ("frozen"), or every embedding ("full")."""
        embeddings, _, _ = parameter_groups(model)
        if self.settings.embeddings == "full":
            return embeddings
        if self.settings.embeddings == "output" and is_tied(model):
            return [model.get_output_embeddings().weight]
        return []

    def growth_loss(self, model):
        """For "output", the LM loss with the embeddings' output detached (no input-side gradient); else the
        default."""
        if self.settings.embeddings != "output":
            return None

        def loss(batch, step, progress):
            with embeddings_detached(model):
                return lm_loss(model, batch)

        return loss

    @staticmethod
    def depths(parent_layers: int, large_layers: int, chunk: int) -> list[int]:
        """The depth after each growth stage, starting from the parent's: chunks of `chunk` (0 = parent's
        depth) layers, the last one smaller when they do not divide."""
        chunk = chunk or parent_layers
        return list(range(parent_layers, large_layers, chunk)) + [large_layers]
