"""scratch: LARGE from transformers' default random init, trained to the budget in one phase.
Its mean final validation loss over seeds is the target every other method is judged against."""

from bench.methods import GrowthContext, Method, register_method
from bench.phases import Phase


@register_method("scratch")
class Scratch(Method):
    needs_parent = False

    def phases(self, ctx: GrowthContext):
        yield Phase("train", ctx.build_large())
