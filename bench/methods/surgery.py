"""Weight surgery: grow a transformers BERT / RoBERTa / GPT-2 model into a larger one of the same family.

Width. Every unit of LARGE copies one unit of SMALL: a `UnitMap` per space says which (`source`) and what
fraction of the source's contribution the copy carries (`share`, summing to 1 over a source's copies).
Units that *produce* a space (output rows, biases, LayerNorms, embedding columns) are copied as they are;
weights that *read* a space (input columns) are copied and multiplied by the share, so every sum a
reader computes is unchanged and the grown model computes the parent's function. The spaces:

- hidden: the residual stream (embeddings, every output projection, every LayerNorm, the inputs of
  Q/K/V/FFN/head). LayerNorm is only exact when every unit has the same number of copies (pitfall 1).
- heads:  whole attention heads at a fixed head size; Q, K and V share the map, Wo's input follows V.
- qkv:    GPT-2's fused `c_attn` output: Q|K|V side by side, each expanded by the head map (split,
          expanded, re-fused by index arithmetic).
- ffn:    the FFN's hidden units; fc2's input follows fc1's output.

Shares are either the exact 1/count split ("fpi", bert2BERT's FPI) or an uneven α / 1−α split
("split", as LEMON): exact copies read by equal weights get equal gradients and never diverge, so the
uneven split is what lets the copies become different units. "aki" is bert2BERT's AKI: FPI shares, but
the new output units of layer l take their weights from layer l+1; the top layer, which has no l+1, takes
them from l−1 (taking them from itself would leave exact FPI copies that never diverge).

Tied embeddings (pitfall 3): the word embedding is both the input table (a producer: copied as is) and
the output projection (a reader: it would need the share). With a tied head the LayerNorm that feeds
the head carries the share instead (as staged training halves `ln_f`); untied, the decoder does.

Depth. A layer map lists, for each layer of the target, the layer of the source it copies.

GPT-2's `Conv1D` stores weights as (in, out); the role tables below say which axis is which.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel

from bench.errors import BenchError
from bench.methods import GrowthContext
from bench.sizes import Dims

WIDTH_MODES = ("fpi", "split", "aki")


# ---------------------------------------------------------------------------------------------- unit maps


@dataclass(frozen=True)
class UnitMap:
    """How the units of one space of LARGE come from SMALL's (all tensors have one entry per LARGE unit)."""

    source: torch.Tensor  # long: the SMALL unit this unit copies
    share: torch.Tensor  # float: this copy's fraction of its source's contribution
    new: torch.Tensor  # bool: the unit is an added copy (the first copy of every source is the original)


def split_shares(source: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """The share of each copy: 1/count when `alpha` is None; otherwise the k-th of a source's c copies
    keeps α of what the copies before it left (α(1−α)^k), the last copy the remainder: for two copies
    α and 1−α. With α in (½, 1) the shares of one source are all different."""
    counts = torch.bincount(source)
    if alpha is None:
        return 1.0 / counts[source].double()
    seen: dict[int, int] = {}
    shares = []
    for unit in source.tolist():
        rank, count = seen.get(unit, 0), int(counts[unit])
        seen[unit] = rank + 1
        shares.append((1 - alpha) ** rank * (alpha if rank < count - 1 else 1.0))
    return torch.tensor(shares, dtype=torch.float64)


def unit_map(n_small: int, n_large: int, generator: torch.Generator, alpha: float | None = None) -> UnitMap:
    """Units 0..n_small-1 keep their place; each added unit copies a random SMALL unit, drawn so that copy
    counts differ by at most one (each round of n_small added units is a fresh permutation). Doubling
    therefore duplicates every unit exactly once, which keeps LayerNorm exact."""
    rounds = -(-(n_large - n_small) // n_small)
    added = [torch.randperm(n_small, generator=generator) for _ in range(rounds)]
    source = torch.cat([torch.arange(n_small), *added])[:n_large]
    return UnitMap(source, split_shares(source, alpha), torch.arange(n_large) >= n_small)


def _per_dimension(heads: UnitMap, head_dim: int) -> UnitMap:
    """A head map as a map of the head space's dimensions (whole heads move together)."""
    offset = torch.arange(head_dim).repeat(len(heads.source))
    return UnitMap(
        heads.source.repeat_interleave(head_dim) * head_dim + offset,
        heads.share.repeat_interleave(head_dim),
        heads.new.repeat_interleave(head_dim),
    )


def _fused(part: UnitMap, n_small: int, parts: int = 3) -> UnitMap:
    """The map of `parts` spaces concatenated on one axis (GPT-2's Q|K|V), each expanded by `part`."""
    return UnitMap(
        torch.cat([part.source + p * n_small for p in range(parts)]), part.share.repeat(parts), part.new.repeat(parts)
    )


@dataclass(frozen=True)
class WidthMaps:
    """The seeded, recorded choice of every width map of one growth."""

    hidden: UnitMap
    heads: UnitMap
    ffn: UnitMap
    small: Dims
    seed: int
    alpha: float | None

    def spaces(self) -> dict[str, UnitMap]:
        head_space = _per_dimension(self.heads, self.small.head_dim)
        return {
            "hidden": self.hidden,
            "heads": head_space,
            "qkv": _fused(head_space, self.small.hidden),
            "ffn": self.ffn,
        }


def width_maps(small: Dims, large: Dims, *, seed: int, alpha: float | None = None) -> WidthMaps:
    if small.head_dim != large.head_dim:
        raise BenchError(
            f"cannot grow by whole attention heads: head size {small.head_dim} "
            f"({small.hidden}/{small.heads}) differs from {large.head_dim} ({large.hidden}/{large.heads})"
        )
    if alpha is not None and not 0.5 < alpha < 1:
        raise BenchError(f"alpha must be in (0.5, 1) to break the symmetry of copies, got {alpha}")
    generator = torch.Generator().manual_seed(seed)
    return WidthMaps(
        hidden=unit_map(small.hidden, large.hidden, generator, alpha),
        heads=unit_map(small.heads, large.heads, generator, alpha),
        ffn=unit_map(small.ffn, large.ffn, generator, alpha),
        small=small, seed=seed, alpha=alpha,
    )


# ------------------------------------------------------------------------------------------ depth maps


def stack_layers(n_from: int, n_to: int) -> list[int]:
    """StackBERT: layer l + k·n_from copies layer l; a remainder r copies the top r layers. For
    n_to <= 2·n_from this is MSLT's growth too: the new top layers copy the current top layers."""
    whole, remainder = divmod(n_to, n_from)
    return [layer for _ in range(whole) for layer in range(n_from)] + list(range(n_from - remainder, n_from))


def interleave_layers(n_from: int, n_to: int) -> list[int]:
    """Each layer repeated in place (0, 0, 1, 1, ...); the top `n_to mod n_from` layers get one copy more."""
    whole, remainder = divmod(n_to, n_from)
    return [layer for layer in range(n_from) for _ in range(whole + (layer >= n_from - remainder))]


DEPTH_MAPS: dict[str, Callable[[int, int], list[int]]] = {"stack": stack_layers, "interleave": interleave_layers}


# ---------------------------------------------------------------------------------- parameter roles


class Axis(NamedTuple):
    space: str  # "hidden", "heads", "qkv" or "ffn"
    reads: bool  # the axis reads the space's units (input side): copies carry the share


_H, _H_IN = Axis("hidden", False), Axis("hidden", True)
_HEADS, _HEADS_IN, _QKV = Axis("heads", False), Axis("heads", True), Axis("qkv", False)
_FFN, _FFN_IN = Axis("ffn", False), Axis("ffn", True)
_HEAD_NORM = "head-norm"  # the LayerNorm feeding the output projection: reads hidden when tied, else produces it

_ENCODER_ROLES = [
    (r"\w+\.embeddings\.(word|position|token_type)_embeddings\.weight", (None, _H)),
    (r"\w+\.embeddings\.LayerNorm\.(weight|bias)", (_H,)),
    (r".+\.attention\.self\.(query|key|value)\.weight", (_HEADS, _H_IN)),
    (r".+\.attention\.self\.(query|key|value)\.bias", (_HEADS,)),
    (r".+\.attention\.output\.dense\.weight", (_H, _HEADS_IN)),
    (r".+\.intermediate\.dense\.weight", (_FFN, _H_IN)),
    (r".+\.intermediate\.dense\.bias", (_FFN,)),
    (r".+\.layer\.\d+\.output\.dense\.weight", (_H, _FFN_IN)),
    (r".+\.(attention\.output|layer\.\d+\.output)\.dense\.bias", (_H,)),
    (r".+\.(attention\.output|layer\.\d+\.output)\.LayerNorm\.(weight|bias)", (_H,)),
    (r"(cls\.predictions\.transform|lm_head)\.dense\.weight", (_H, _H_IN)),
    (r"(cls\.predictions\.transform|lm_head)\.dense\.bias", (_H,)),
    (r"(cls\.predictions\.transform\.LayerNorm|lm_head\.layer_norm)\.(weight|bias)", _HEAD_NORM),
    (r"(cls\.predictions|lm_head)\.decoder\.weight", (None, _H_IN)),
    (r"(cls\.predictions|lm_head)\.(decoder\.)?bias", (None,)),
]
_GPT2_ROLES = [  # Conv1D weights are (in, out)
    (r"transformer\.w[tp]e\.weight", (None, _H)),
    (r"transformer\.h\.\d+\.ln_[12]\.(weight|bias)", (_H,)),
    (r"transformer\.h\.\d+\.attn\.c_attn\.weight", (_H_IN, _QKV)),
    (r"transformer\.h\.\d+\.attn\.c_attn\.bias", (_QKV,)),
    (r"transformer\.h\.\d+\.attn\.c_proj\.weight", (_HEADS_IN, _H)),
    (r"transformer\.h\.\d+\.(attn|mlp)\.c_proj\.bias", (_H,)),
    (r"transformer\.h\.\d+\.mlp\.c_fc\.weight", (_H_IN, _FFN)),
    (r"transformer\.h\.\d+\.mlp\.c_fc\.bias", (_FFN,)),
    (r"transformer\.h\.\d+\.mlp\.c_proj\.weight", (_FFN_IN, _H)),
    (r"transformer\.ln_f\.(weight|bias)", _HEAD_NORM),
    (r"lm_head\.weight", (None, _H_IN)),
]
_ROLES = {"bert": _ENCODER_ROLES, "roberta": _ENCODER_ROLES, "gpt2": _GPT2_ROLES}
_LAYER_INDEX = re.compile(r"\.(layer|h)\.(\d+)\.")


def family(model: PreTrainedModel) -> str:
    model_type = model.config.model_type
    if model_type not in _ROLES:
        raise BenchError(f"weight surgery supports bert, roberta and gpt2 models, not {model_type!r}")
    return model_type


def is_tied(model: PreTrainedModel) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def axes_of(name: str, model_family: str, tied: bool) -> tuple[Axis | None, ...]:
    for pattern, axes in _ROLES[model_family]:
        if re.fullmatch(pattern, name):
            if axes == _HEAD_NORM:
                return (_H_IN,) if tied else (_H,)
            return axes
    raise BenchError(f"weight surgery does not know parameter {name!r}")


def _layer_of(name: str) -> int | None:
    match = _LAYER_INDEX.search(name)
    return int(match.group(2)) if match else None


def _with_layer(name: str, layer: int) -> str:
    return _LAYER_INDEX.sub(lambda m: f".{m.group(1)}.{layer}.", name, count=1)


def layer_list(model: PreTrainedModel) -> nn.ModuleList:
    base = model.base_model
    return base.h if family(model) == "gpt2" else base.encoder.layer


def embedding_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The modules that turn ids into the first layer's input."""
    base = model.base_model
    return [base.wte, base.wpe] if family(model) == "gpt2" else [base.embeddings]


@contextmanager
def embeddings_detached(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The model with its embeddings' output cut from the graph while the context is open: a tied word embedding
    then learns only as the output projection, and no backward runs below the lowest layer that trains."""
    handles = [module.register_forward_hook(lambda module, inputs, output: output.detach())
               for module in embedding_modules(model)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def parameter_groups(model: PreTrainedModel) -> tuple[list[nn.Parameter], list[list[nn.Parameter]], list[nn.Parameter]]:
    """(embeddings, per-layer, head) parameters. A tied output projection is the word embedding, so it
    is listed once, with the embeddings; the head is what remains (MLM transform and bias, or `ln_f`)."""
    layers = [list(layer.parameters()) for layer in layer_list(model)]
    embeddings = [p for module in embedding_modules(model) for p in module.parameters()]
    taken = {id(p) for p in embeddings} | {id(p) for layer in layers for p in layer}
    head = [p for p in model.parameters() if id(p) not in taken]
    return embeddings, layers, head


@contextmanager
def bottom_layers(model: PreTrainedModel, count: int) -> Iterator[PreTrainedModel]:
    """The model itself, running only its bottom `count` layers (embeddings and head included) while
    the context is open: bert2BERT's sub-models, which share every weight with the full model."""
    base = model.base_model
    owner, attribute = (base, "h") if family(model) == "gpt2" else (base.encoder, "layer")
    full = getattr(owner, attribute)
    setattr(owner, attribute, nn.ModuleList(list(full)[:count]))
    try:
        yield model
    finally:
        setattr(owner, attribute, full)


# ----------------------------------------------------------------------------------------- widening


def _expand(tensor: torch.Tensor, axes, spaces: dict[str, UnitMap]) -> torch.Tensor:
    for dim, axis in enumerate(axes):
        if axis is None:
            continue
        units = spaces[axis.space]
        tensor = tensor.index_select(dim, units.source)
        if axis.reads:
            shape = [1] * tensor.dim()
            shape[dim] = -1
            tensor = tensor * units.share.to(tensor.dtype).view(shape)
    return tensor


def _aki_source_layer(layer: int, n_layers: int) -> int:
    """The layer AKI takes layer `layer`'s added units from: the next one; for the top layer the one below."""
    return layer + 1 if layer + 1 < n_layers else layer - 1


def _from_next_layer(own: torch.Tensor, following: torch.Tensor, axes, spaces: dict[str, UnitMap]) -> torch.Tensor:
    """AKI: along the axis that produces units, the added units take the following layer's values."""
    (dim, axis), = [(d, a) for d, a in enumerate(axes) if a is not None and not a.reads]
    shape = [1] * own.dim()
    shape[dim] = -1
    return torch.where(spaces[axis.space].new.view(shape), following, own)


def widen_weights(
    parent: PreTrainedModel, maps: WidthMaps, *, tied: bool, aki: bool = False
) -> dict[str, torch.Tensor]:
    """The parent's parameters (by name, tied output projections included) widened by `maps`. `tied`
    says whether the *target* ties its output projection to the word embedding."""
    model_family, spaces = family(parent), maps.spaces()
    source = {name: tensor.detach() for name, tensor in parent.named_parameters(remove_duplicate=False)}
    n_layers = maps.small.layers
    widened = {}
    for name, tensor in source.items():
        axes = axes_of(name, model_family, tied)
        grown = _expand(tensor, axes, spaces)
        layer = _layer_of(name)
        if aki and layer is not None and n_layers > 1:
            following = _expand(source[_with_layer(name, _aki_source_layer(layer, n_layers))], axes, spaces)
            grown = _from_next_layer(grown, following, axes, spaces)
        widened[name] = grown
    return widened


# ------------------------------------------------------------------------------------------- growth


@dataclass(frozen=True)
class Growth:
    """What one growth did: the grown model, the width maps (None when the width did not change) and
    the layer map (target layer i copies source layer layers[i])."""

    model: PreTrainedModel
    width: str
    maps: WidthMaps | None
    depth: str
    layers: list[int]

    def settings(self) -> dict:
        """What was done, to record with the phase (the width maps are reproducible from their seed)."""
        record = {}
        if self.maps is not None:
            record |= {"width": self.width, "width_seed": self.maps.seed, "alpha": self.maps.alpha}
        if self.layers != list(range(len(self.layers))):
            record |= {"depth": self.depth, "layer_map": self.layers}
        return record


def _check_compatible(source: PreTrainedModel, target: PreTrainedModel) -> None:
    if type(source) is not type(target):
        raise BenchError(f"cannot grow a {type(source).__name__} into a {type(target).__name__}")
    small, large = Dims.of(source.config), Dims.of(target.config)
    if any(s > t for s, t in zip(small, large)):
        raise BenchError(f"cannot grow {small} into the smaller {large}")


def build_large_at_depth(ctx: GrowthContext, layers: int) -> PreTrainedModel:
    """LARGE's shape and seeded init with `layers` layers: the intermediate models of progressive methods."""
    if layers == ctx.pair.large.layers:
        return ctx.build_large()
    return ctx.build(dataclasses.replace(ctx.pair.large, name=f"{ctx.pair.large.name}-{layers}L", layers=layers))


@torch.no_grad()
def grow(source: PreTrainedModel, target: PreTrainedModel, *, width: str = "split", alpha: float = 0.6,
         seed: int = 0, depth: str = "stack") -> Growth:
    """Overwrite every parameter of `target` (a freshly built model of the grown shape, same class)
    with `source` grown: widened by `width` ("fpi", "split" with `alpha`, or "aki"; maps drawn from
    `seed`), then deepened by `depth` ("stack" or "interleave"). Values are copied into `target`'s own
    tensors, so it shares nothing with `source` and its tied weights stay tied."""
    if width not in WIDTH_MODES:
        raise BenchError(f"unknown width operator {width!r}; known: {', '.join(WIDTH_MODES)}")
    if depth not in DEPTH_MAPS:
        raise BenchError(f"unknown depth operator {depth!r}; known: {', '.join(DEPTH_MAPS)}")
    _check_compatible(source, target)
    small, large = Dims.of(source.config), Dims.of(target.config)
    widens = (small.hidden, small.heads, small.ffn) != (large.hidden, large.heads, large.ffn)
    maps = width_maps(small, large, seed=seed, alpha=alpha if width == "split" else None)
    widened = widen_weights(source, maps, tied=is_tied(target), aki=width == "aki")
    layers = DEPTH_MAPS[depth](small.layers, large.layers)
    for name, parameter in target.named_parameters():
        layer = _layer_of(name)
        grown = widened[name if layer is None else _with_layer(name, layers[layer])]
        if grown.shape != parameter.shape:
            raise BenchError(f"{name}: grown shape {tuple(grown.shape)} does not fit the target's "
                             f"{tuple(parameter.shape)} (growth keeps the vocabulary and position tables)")
        parameter.copy_(grown)
    return Growth(target, width if widens else "none", maps if widens else None, depth, layers)
