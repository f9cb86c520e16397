"""ligo: the Learned Linear Growth Operator (Wang et al., ICLR 2023). LARGE's weights are a linear
function of the frozen parent's; only that function trains, for a few steps, then the weights are
materialised into a plain LARGE model that trains to the budget.

The operator (methods-reference.md §2.6):
- depth: each LARGE block's module is `Σ_j w[l, j] · W_j` over the parent's blocks, with its own
  coefficients per module type (Q, K, V, O, LN1, fc1, fc2, LN2) and per weight / bias;
- width: `W' = B·W·Aᵀ` with the paper's tying: one residual-stream operator B_hidden for the
  embeddings, every LayerNorm, the output side of O and fc2 and the input side of Q, K, V, fc1;
  per LARGE block B_q, B_k, B_v, B_ffn; O reads B_v's space, fc2 reads B_ffn's. Biases and
  LayerNorm parameters follow the output side.

Choices where the paper and the official code leave room (recorded in the phase's settings):
- The MLM head's transform, its LayerNorm and the decoder's input follow the residual stream
  (B_hidden); there is no separate B_cls. With tied embeddings the decoder *is* the word
  embedding, so its input space must be the embedding's: one tensor, one growth (the official
  code's B_cls makes the tied tensor grow twice, the later write silently winning).
- LARGE's config decides the tie (transformers ties all three families by default). A tied
  tensor grows once, from the parent's input embedding; an untied LARGE grows its decoder from
  the parent's decoder (the same tensor when the parent is tied).
- Width operators are `B = [I; S]` with the identity block fixed, as in the official code: the
  parent's channels stay verbatim, only the new rows S (D2-D1 by D1) learn. S starts as a random
  one-hot selection plus U(0, width_noise)/D1 noise; the official `sel_noisy` adds U(0, 0.03)
  unscaled, whose sum over D1=512 inputs (~7.7 times the mean unit) would multiply new LayerNorm
  gains by ~9.
- Depth coefficients start as stacking (target l takes source l mod L1) with U(0, depth_noise)
  on every entry, each row renormalised to sum 1 (the official `stackbert_noisy`).
- Depth mixing runs before width growth, as in the official code (both are linear, so the order
  only changes the cost). A pair that keeps the depth (or width) has no depth (or width) operator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from bench.errors import BenchError
from bench.methods import GrowthContext, Method, register_method
from bench.objective import lm_loss
from bench.phases import Phase
from bench.sizes import Pair

_BLOCKS = {"bert": "bert.encoder.layer", "roberta": "roberta.encoder.layer", "gpt2": "transformer.h"}

# Each block submodule -> the module types it holds, stacked along its output axis (GPT-2's c_attn is Q|K|V).
_BERT_MODULES = {
    "attention.self.query": ("q",), "attention.self.key": ("k",), "attention.self.value": ("v",),
    "attention.output.dense": ("o",), "attention.output.LayerNorm": ("ln1",),
    "intermediate.dense": ("fc1",), "output.dense": ("fc2",), "output.LayerNorm": ("ln2",),
}
_MODULES = {
    "bert": _BERT_MODULES,
    "roberta": _BERT_MODULES,
    "gpt2": {
        "ln_1": ("ln1",), "attn.c_attn": ("q", "k", "v"), "attn.c_proj": ("o",),
        "ln_2": ("ln2",), "mlp.c_fc": ("fc1",), "mlp.c_proj": ("fc2",),
    },
}

# Module type -> (output space, input space) of its (out, in) weight; a LayerNorm has no input side.
_SPACES = {
    "q": ("q", "hidden"), "k": ("k", "hidden"), "v": ("v", "hidden"), "o": ("hidden", "v"),
    "ln1": ("hidden", None), "fc1": ("ffn", "hidden"), "fc2": ("hidden", "ffn"), "ln2": ("hidden", None),
}


def _expand(tensor: torch.Tensor, out_op: torch.Tensor | None, in_op: torch.Tensor | None) -> torch.Tensor:
    """B·W·Aᵀ for an (out, in) matrix, B·b for a vector; None leaves that axis as it is. Only 2-D
    matrix products, which every FLOP counter (FlopCounterMode, fvcore's tracer) counts."""
    if tensor.ndim == 1:
        return tensor if out_op is None else (out_op @ tensor[:, None])[:, 0]
    if out_op is not None:
        tensor = out_op @ tensor
    if in_op is not None:
        tensor = tensor @ in_op.T
    return tensor


class _Apply(nn.Module):
    """`fn(model, batch)` as a forward, so `functional_call` can run it with computed weights."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, fn, batch):
        return fn(self.model, batch)


class _Frozen(nn.Module):
    """Tensors under any string key, kept as buffers: they move with the module and never train."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for key, tensor in tensors.items():
            self.register_buffer(key.replace(".", ":"), tensor.detach().clone())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_buffer(key.replace(".", ":"))


class LigoOperator(nn.Module):
    """The growth operator: its parameters, a frozen copy of the parent's weights, and the LARGE
    model, used only as the architecture the computed weights run in until `materialise` fills it."""

    def __init__(self, pair: Pair, parent: PreTrainedModel, large: PreTrainedModel, seed: int,
                 depth_noise: float, width_noise: float):
        super().__init__()
        family = pair.large.family
        self.blocks, self.modules_of = _BLOCKS[family], _MODULES[family]
        self.runner = _Apply(large)
        self.small_layers, self.large_layers = pair.small.layers, pair.large.layers
        space_dims = {"hidden": (pair.small.hidden, pair.large.hidden), "ffn": (pair.small.ffn, pair.large.ffn)}
        space_dims |= {space: space_dims["hidden"] for space in ("q", "k", "v")}  # heads x head_dim = hidden
        self.space_dims = space_dims
        self.conv1d = {module: isinstance(large.get_submodule(f"{self.blocks}.0.{module}"), Conv1D)
                       for module in self.modules_of}  # GPT-2 stores these weights (in, out)
        self.sources = _Frozen(self._parent_sources(parent, large))

        generator = torch.Generator().manual_seed(seed)
        self.depth = nn.ParameterDict()
        if self.large_layers != self.small_layers:
            for module_type in _SPACES:
                for kind in ("weight", "bias"):
                    self.depth[f"{module_type}_{kind}"] = nn.Parameter(self._stacking_init(generator, depth_noise))
        self.width = nn.ParameterDict()
        for space, (small, large_dim) in space_dims.items():
            if large_dim == small:
                continue
            for key in ["hidden"] if space == "hidden" else [f"{space}{layer}" for layer in range(self.large_layers)]:
                self.width[key] = nn.Parameter(self._selection_init(generator, small, large_dim, width_noise))
        self.initial = {name: p.detach().clone() for name, p in self.operator_named_parameters()}

    def _parent_sources(self, parent: PreTrainedModel, large: PreTrainedModel) -> dict[str, torch.Tensor]:
        """The parent's weights LARGE grows from: block ones per module type and weight / bias, (out, in)
        oriented and stacked over its blocks (`q.weight`: (L1, out, in)); the others under LARGE's names."""
        parameters = dict(parent.named_parameters(remove_duplicate=False))
        sources = {name: parameters[name] for name, _ in large.named_parameters()
                   if not name.startswith(f"{self.blocks}.")}
        for module, module_types in self.modules_of.items():
            for kind in ("weight", "bias"):
                per_block = []
                for block in range(self.small_layers):
                    tensor = parameters[f"{self.blocks}.{block}.{module}.{kind}"]
                    tensor = tensor.T if kind == "weight" and self.conv1d[module] else tensor
                    per_block.append(tensor.chunk(len(module_types)))
                for index, module_type in enumerate(module_types):
                    sources[f"{module_type}.{kind}"] = torch.stack([pieces[index] for pieces in per_block])
        return sources

    def _stacking_init(self, generator: torch.Generator, noise: float) -> torch.Tensor:
        coefficients = torch.rand(self.large_layers, self.small_layers, generator=generator) * noise
        coefficients[torch.arange(self.large_layers), torch.arange(self.large_layers) % self.small_layers] = 1.0
        return coefficients / coefficients.sum(dim=1, keepdim=True)

    @staticmethod
    def _selection_init(generator: torch.Generator, small: int, large: int, noise: float) -> torch.Tensor:
        new_rows = large - small
        selection = torch.rand(new_rows, small, generator=generator) * (noise / small)
        selection[torch.arange(new_rows), torch.randint(small, (new_rows,), generator=generator)] += 1.0
        return selection

    def operator_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"depth.{k}", p) for k, p in self.depth.items()] + [(f"width.{k}", p) for k, p in self.width.items()]

    def relative_change(self) -> dict[str, float]:
        """‖θ - θ_init‖ / ‖θ_init‖ of the depth and of the width parameters (those the pair has)."""
        change = {}
        for group in ("depth", "width"):
            pairs = [(p.detach().cpu(), self.initial[n]) for n, p in self.operator_named_parameters()
                     if n.startswith(group)]
            if pairs:
                moved = sum(float((p - p0).square().sum()) for p, p0 in pairs) ** 0.5
                change[group] = moved / sum(float(p0.square().sum()) for _, p0 in pairs) ** 0.5
        return change

    def _width_ops(self) -> dict[str, torch.Tensor]:
        """B = [I; S] of every space that grows, by the key of its S ("hidden", "q0", "ffn3", ...)."""
        return {key: torch.cat([torch.eye(selection.shape[1], dtype=selection.dtype, device=selection.device),
                                selection])
                for key, selection in self.width.items()}

    def _mixed(self, module_type: str, kind: str) -> torch.Tensor:
        """Depth: LARGE's blocks of one module type, (large_layers, *shape), still at the parent's width."""
        sources = self.sources[f"{module_type}.{kind}"]
        if not self.depth:
            return sources
        mixed = self.depth[f"{module_type}_{kind}"] @ sources.flatten(1)
        return mixed.view(self.large_layers, *sources.shape[1:])

    def _grow_global(self, name: str, target_shape: torch.Size, hidden: torch.Tensor | None) -> torch.Tensor:
        """Outside the blocks only the residual stream changes size, so every axis that grows is it."""
        tensor = self.sources[name]
        ops = []
        for axis, (small, large) in enumerate(zip(tensor.shape, target_shape)):
            if small != large and (small, large) != self.space_dims["hidden"]:
                raise BenchError(f"ligo cannot grow {name}: axis {axis} goes {small} -> {large}")
            ops.append(hidden if small != large else None)
        return _expand(tensor, ops[0], ops[1] if len(ops) == 2 else None)

    def grown_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter of LARGE (tied ones once), computed from the parent's and the operator."""
        large = self.runner.model
        width_ops = self._width_ops()

        def width_op(space: str | None, layer: int) -> torch.Tensor | None:
            return width_ops.get(space if space in (None, "hidden") else f"{space}{layer}")

        mixed: dict[tuple[str, str], torch.Tensor] = {}
        grown = {}
        for name, target in large.named_parameters():
            if not name.startswith(f"{self.blocks}."):
                grown[name] = self._grow_global(name, target.shape, width_ops.get("hidden"))
                continue
            layer_text, module_and_kind = name[len(self.blocks) + 1:].split(".", 1)
            module, kind = module_and_kind.rsplit(".", 1)
            layer = int(layer_text)
            pieces = []
            for module_type in self.modules_of[module]:
                if (module_type, kind) not in mixed:
                    mixed[module_type, kind] = self._mixed(module_type, kind)
                out_space, in_space = _SPACES[module_type]
                pieces.append(_expand(mixed[module_type, kind][layer], width_op(out_space, layer),
                                      width_op(in_space, layer)))
            tensor = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            grown[name] = tensor.T if kind == "weight" and self.conv1d[module] else tensor
        return grown

    def forward(self, fn, batch):
        """`fn(LARGE, batch)` with LARGE's weights computed by the operator (differentiable in it)."""
        grown = {f"model.{name}": tensor for name, tensor in self.grown_parameters().items()}
        if torch.jit.is_tracing():  # fvcore's tracer: functional_call refuses it, so use the swap it is built on
            with _reparametrize_module(self.runner, grown, tie_weights=True):
                return self.runner(fn, batch)
        return functional_call(self.runner, grown, (fn, batch))

    @torch.no_grad()
    def materialise(self) -> PreTrainedModel:
        """Write the computed weights into LARGE (ties kept: each tied tensor is written once)."""
        large = self.runner.model
        grown = self.grown_parameters()
        for name, parameter in large.named_parameters():
            parameter.copy_(grown[name])
        return large


@register_method("ligo")
class Ligo(Method):
    needs_parent = True

    @dataclass
    class Settings:
        operator_steps: int = 100  # the paper's default; more steps did not pay off (Table 3)
        operator_lr: float = 1e-3
        operator_warmup_steps: int = 10
        depth_noise: float = 0.03
        width_noise: float = 0.03

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        self.operator_log: dict = {}  # operator loss at its first / last step, how far it moved

    def phases(self, ctx: GrowthContext):
        settings = self.settings
        if settings.operator_steps < 1 or not 0 <= settings.operator_warmup_steps < settings.operator_steps:
            raise BenchError(f"ligo needs operator_steps >= 1 and 0 <= operator_warmup_steps < operator_steps, "
                             f"got {settings.operator_steps} and {settings.operator_warmup_steps}")
        if ctx.parent is None:
            raise BenchError("ligo needs a parent model to grow")
        operator = LigoOperator(ctx.pair, ctx.parent, ctx.build_large(), ctx.seed,
                                settings.depth_noise, settings.width_noise)
        trainable = [p for _, p in operator.operator_named_parameters()]
        if not trainable:
            raise BenchError(f"ligo has nothing to learn for {ctx.pair.name}: layers, hidden and FFN sizes are equal")
        losses: dict[int, list[float]] = {}  # step -> the loss of each of its micro-batches
        log = self.operator_log
        log |= {
            **dataclasses.asdict(settings), "operator_parameters": sum(p.numel() for p in trainable),
            "width_identity_block": "fixed", "head_width": "residual stream (no B_cls)",
            "tied_embeddings": bool(operator.runner.model.config.tie_word_embeddings),
        }

        def loss(batch: dict[str, torch.Tensor], step: int, progress: float) -> torch.Tensor:
            value = operator(lm_loss, batch)
            losses.setdefault(step, []).append(float(value.detach()))
            first, last = losses[min(losses)], losses[max(losses)]
            log["operator_loss_first"], log["operator_loss_last"] = sum(first) / len(first), sum(last) / len(last)
            return value

        yield Phase(
            "operator", operator, trainable=trainable, steps=settings.operator_steps, loss=loss,
            evaluate=lambda batch: operator(lm_loss, batch), lr=settings.operator_lr,
            warmup_steps=settings.operator_warmup_steps, fits_init=True, settings=log,
        )
        log |= {f"operator_{group}_rel_change": value for group, value in operator.relative_change().items()}
        yield Phase("train", operator.materialise())
