"""FLOPs of a phase's training step, three ways (see accounting.md), plus the LiGO paper's counter.

Convention everywhere: one multiply-add = 2 FLOPs, and only matrix products count (linear layers and
attention): what `torch.utils.flop_counter` counts. Elementwise work (LayerNorm, GELU, softmax, the loss)
is left out of `executed` and `analytic`; fvcore counts LayerNorm, which is ~1% at these sizes.

- executed (headline): one real step of the phase under `FlopCounterMode`, so frozen parameters get no
  weight-gradient work, layers below the lowest trainable one get no backward, and teacher passes are
  forward only.
- fvcore: `FlopCountAnalysis` of the phase's forward (its loss, so teacher passes and LiGO's weight
  materialisation are in it) x 2. Training is derived per module, in execution order: forward, plus an
  input gradient (= forward) once any earlier module owns a trainable parameter, plus a weight gradient
  (= forward) where the module owns one. For a fully trained phase that is 3 x forward; `extra_forward`
  models are forward only.
- analytic: from the config, the same rule unit by unit (each projection, the attention core, the LM head
  on the positions the loss scores); attention's backward is 2.5 x its forward, as torch counts it.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import warnings
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from transformers import PreTrainedModel

from bench.collectors import Collector, register_collector
from bench.hardware import rng_preserved
from bench.objective import IGNORE, lm_loss
from bench.phases import Phase

FLOP_CONVENTION = "1 multiply-add = 2 FLOPs; matrix products only (linear layers and attention)"

# ---------------------------------------------------------------------------------------------------
# executed: one real step under FlopCounterMode

_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_ATTENTION_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch 2.13 has no formula for the CPU kernels of SDPA, so attention would count as 0 on CPU.
if _CPU_ATTENTION not in flop_registry:
    register_flop_formula(_CPU_ATTENTION)(_cpu_attention_flops)
if _CPU_ATTENTION_BACKWARD not in flop_registry:
    register_flop_formula(_CPU_ATTENTION_BACKWARD)(_cpu_attention_backward_flops)


def _batch_device(batch: dict[str, torch.Tensor]) -> torch.device:
    return batch["input_ids"].device


def count_executed_step(phase: Phase, batch: dict[str, torch.Tensor], step: int = 0, progress: float = 0.0) -> int:
    """FLOPs of one real training step of `phase` (call `phase.prepare()` first). Only gradients are
    produced, and dropped afterwards; weights and the RNG streams are left as they were."""
    with rng_preserved(_batch_device(batch)), FlopCounterMode(display=False) as counter:
        phase.forward_backward(batch, step, progress)
    phase.zero_grad()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------
# fvcore: traced forward x 2, training derived per module


def _sdpa_macs(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention (fvcore has none): QK^T and AV."""
    query, key, value = (get_shape(tensor) for tensor in inputs[:3])
    *batch_dims, query_len, head_dim = query
    return prod(batch_dims) * query_len * key[-2] * (head_dim + value[-1])


class _Traced(nn.Module):
    """Gives fvcore a module whose forward is `run(batch)`, with the modules it uses as named children."""

    def __init__(self, run, children: dict[str, nn.Module]):
        super().__init__()
        self.run = run
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run({"input_ids": input_ids, "labels": labels})


@contextlib.contextmanager
def _no_kv_cache(modules: list[nn.Module]) -> Iterator[None]:
    """GPT-2 returns its KV cache by default, which the tracer cannot follow."""
    configs = [m.config for root in modules for m in root.modules() if hasattr(getattr(m, "config", None), "use_cache")]
    saved = [config.use_cache for config in configs]
    for config in configs:
        config.use_cache = False
    try:
        yield
    finally:
        for config, use_cache in zip(configs, saved):
            config.use_cache = use_cache


_ATTENTION_OP = "aten::scaled_dot_product_attention"
_ATTENTION_KEY = "scaled_dot_product_attention"  # how fvcore names the operator in its tables


def _fvcore_forward_by_module(traced: _Traced, batch: dict[str, torch.Tensor]) -> dict[str, Counter]:
    """Forward FLOPs (x 2 of fvcore's multiply-adds) of every module by operator, inclusive of children."""
    analysis = FlopCountAnalysis(traced, (batch["input_ids"], batch["labels"]))
    analysis.set_op_handle(_ATTENTION_OP, _sdpa_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with (
        warnings.catch_warnings(),
        torch.no_grad(),
        rng_preserved(_batch_device(batch)),
        _no_kv_cache(list(traced.children())),
    ):
        warnings.simplefilter("ignore")
        by_operator = analysis.by_module_and_operator()
    return {name: Counter({op: 2 * macs for op, macs in ops.items()}) for name, ops in by_operator.items()}


def fvcore_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """(forward FLOPs of `model`'s LM loss on `batch`, forward FLOPs by module name of `model`)."""
    traced = _Traced(lambda b: lm_loss(model, b), {"model": model})
    by_operator = _fvcore_forward_by_module(traced, batch)
    table = {name.removeprefix("model").removeprefix("."): sum(ops.values()) for name, ops in by_operator.items()
             if name == "model" or name.startswith("model.")}
    return table[""], table


def _has_weight_matrix(parameters: list[nn.Parameter]) -> bool:
    """A weight gradient is a matrix product only for a matrix; a trainable bias or norm is a sum."""
    return any(p.dim() >= 2 for p in parameters)


def _post_order(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Children before parents: a container's own work (attention's matmuls) follows its projections."""
    for name, child in module.named_children():
        yield from _post_order(child, f"{prefix}.{name}" if prefix else name)
    yield prefix, module


def _own_training_flops(own: Counter, gradient_flows: bool, weight_gradient: bool) -> int:
    """Forward + backward of a module's own operators. Attention has no weights and, as torch counts the
    flash kernels (scores recomputed), a backward of 2.5 x its forward."""
    total = 0
    for op, forward in own.items():
        if op == _ATTENTION_KEY:
            total += forward + (5 * forward // 2 if gradient_flows else 0)
        else:
            total += forward * (1 + gradient_flows + weight_gradient)
    return total


@dataclass
class FvcoreStep:
    """fvcore's count of one training step: the total, and a per-module table for the report."""

    training_flops: int
    rows: list[dict[str, Any]]  # module, forward_flops, training_flops (both inclusive of children)


def fvcore_step(phase: Phase, batch: dict[str, torch.Tensor], step: int = 0, progress: float = 0.0) -> FvcoreStep:
    """fvcore's count of one training step of `phase`: its loss traced, training derived per module."""
    traced = _Traced(lambda b: phase.loss(b, step, progress),
                     {"model": phase.model, "extra": nn.ModuleList(phase.extra_forward)})
    forward = _fvcore_forward_by_module(traced, batch)
    trainable = {id(p) for p in phase.trainable}
    modules = list(_post_order(traced))
    names = [name for name, _ in modules]
    training_self: dict[str, int] = {}
    gradient_flows = False
    detached = tuple(f"model.{path}" for path in _embedding_paths(phase.model.config)) if phase.embeddings_detached else ()
    for name, module in modules:
        own = Counter(forward.get(name, {}))
        for child in names:
            if child and child.rpartition(".")[0] == name:
                own.subtract(forward.get(child, {}))
        if name == "extra" or name.startswith("extra."):
            training_self[name] = sum(own.values())  # forward only
            continue
        owned = [p for p in module.parameters(recurse=False) if id(p) in trainable]
        training_self[name] = _own_training_flops(own, gradient_flows, _has_weight_matrix(owned))
        gradient_flows = gradient_flows or (bool(owned) and not (detached and name.startswith(detached)))
    rows = [
        {"module": name or "(phase)", "forward_flops": sum(forward.get(name, {}).values()),
         "training_flops": sum(v for n, v in training_self.items() if n == name or not name or n.startswith(name + "."))}
        for name, _ in traced.named_modules()
    ]
    return FvcoreStep(training_flops=sum(training_self.values()), rows=rows)


# ---------------------------------------------------------------------------------------------------
# analytic: the config's formula, unit by unit


class UncountedPhase(ValueError):
    """The analytic formula does not describe this phase (reason in the message)."""


@dataclass(frozen=True)
class _Unit:
    forward: int  # FLOPs of the forward pass over the whole batch
    modules: tuple[str, ...]  # submodules whose parameters make the unit trainable
    has_weights: bool = True  # False for the attention core: no weight gradient, backward = 2.5 x forward


# (embeddings, layer container, per-layer pieces, head pieces) by model_type; pieces are module paths.
_LAYOUTS = {
    "bert": ("bert.embeddings", "bert.encoder.layer", "cls.predictions.transform.dense",
             "cls.predictions.transform.LayerNorm", "cls.predictions.decoder"),
    "roberta": ("roberta.embeddings", "roberta.encoder.layer", "lm_head.dense", "lm_head.layer_norm",
                "lm_head.decoder"),
}
_ENCODER_LAYER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def _units(config, batch: dict[str, torch.Tensor], layers: int | None) -> list[_Unit]:
    """The matrix products of one forward pass, in execution order, with the modules that own them."""
    batch_size, seq_len = batch["input_ids"].shape
    labels = batch["labels"][:, 1:] if config.model_type == "gpt2" else batch["labels"]
    tokens, scored = batch_size * seq_len, int((labels != IGNORE).sum())
    hidden, ffn, vocab = config.hidden_size, _ffn(config), config.vocab_size
    layers = config.num_hidden_layers if layers is None else layers
    attention = 4 * tokens * seq_len * hidden  # QK^T and AV, sdpa over the full square (causal masks too)
    if config.model_type == "gpt2":
        units = [_Unit(0, _embedding_paths(config))]
        for i in range(layers):
            p = f"transformer.h.{i}."
            units += [_Unit(0, (p + "ln_1",)), _Unit(2 * tokens * hidden * 3 * hidden, (p + "attn.c_attn",)),
                      _Unit(attention, (), has_weights=False), _Unit(2 * tokens * hidden * hidden, (p + "attn.c_proj",)),
                      _Unit(0, (p + "ln_2",)), _Unit(2 * tokens * hidden * ffn, (p + "mlp.c_fc",)),
                      _Unit(2 * tokens * ffn * hidden, (p + "mlp.c_proj",))]
        return units + [_Unit(0, ("transformer.ln_f",)), _Unit(2 * scored * hidden * vocab, ("lm_head",))]
    _, layer_list, transform, transform_norm, decoder = _LAYOUTS[config.model_type]
    query, key, value, out, out_norm, up, down, down_norm = _ENCODER_LAYER
    units = [_Unit(0, _embedding_paths(config))]
    for i in range(layers):
        p = f"{layer_list}.{i}."
        units += [_Unit(2 * tokens * hidden * 3 * hidden, (p + query, p + key, p + value)),
                  _Unit(attention, (), has_weights=False), _Unit(2 * tokens * hidden * hidden, (p + out,)),
                  _Unit(0, (p + out_norm,)), _Unit(2 * tokens * hidden * ffn, (p + up,)),
                  _Unit(2 * tokens * ffn * hidden, (p + down,)), _Unit(0, (p + down_norm,))]
    return units + [_Unit(2 * scored * hidden * hidden, (transform,)), _Unit(0, (transform_norm,)),
                    _Unit(2 * scored * hidden * vocab, (decoder,))]


def _embedding_paths(config) -> tuple[str, ...]:
    """The modules that embed the ids, as `_units` lists them first."""
    return ("transformer.wte", "transformer.wpe") if config.model_type == "gpt2" else (_LAYOUTS[config.model_type][0],)


def _ffn(config) -> int:
    if config.model_type == "gpt2":
        return config.n_inner or 4 * config.hidden_size
    return config.intermediate_size


def analytic_lm_flops(model: nn.Module, batch: dict[str, torch.Tensor], trainable: list[nn.Parameter] | None = None,
                      forward_only: bool = False, layers: int | None = None, embeddings_detached: bool = False) -> int:
    """Analytic FLOPs of one LM-loss step of a transformers `model` (bert, roberta, gpt2) on `batch`.

    trainable: the parameters updated (None: all). forward_only: a teacher pass. layers: run only the
    bottom `layers` layers (a sub-model, as bert2BERT's stage 1 samples). embeddings_detached: no gradient flows back
    from the embeddings' output (Phase.embeddings_detached). A fully trained model comes to
    6·N per token for the layers, 6·N_head per scored position, and 14·L·T·hidden per token of attention.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in ("bert", "roberta", "gpt2"):
        raise UncountedPhase(f"{type(model).__name__} is not a bert, roberta or gpt2 language model")
    trainable_ids = {id(p) for p in (model.parameters() if trainable is None else trainable)}
    total, gradient_flows = 0, False
    for index, unit in enumerate(_units(config, batch, layers)):
        if forward_only:
            total += unit.forward
            continue
        owned = [p for path in unit.modules for p in model.get_submodule(path).parameters() if id(p) in trainable_ids]
        if unit.has_weights:
            total += unit.forward * (1 + gradient_flows + _has_weight_matrix(owned))
        else:
            total += unit.forward + (5 * unit.forward // 2 if gradient_flows else 0)
        gradient_flows = gradient_flows or (bool(owned) and not (embeddings_detached and index == 0))
    return total


def analytic_step_flops(phase: Phase, batch: dict[str, torch.Tensor]) -> int:
    """Analytic FLOPs of one step of `phase`: its model trained as `trainable` says, each `extra_forward`
    model forward only. Raises UncountedPhase where the formula cannot know what runs."""
    if phase.variant is not None:
        raise UncountedPhase("the step structure varies from step to step (variant); use analytic_lm_flops per key")
    total = analytic_lm_flops(phase.model, batch, phase.trainable, embeddings_detached=phase.embeddings_detached)
    return total + sum(analytic_lm_flops(model, batch, forward_only=True) for model in phase.extra_forward)


# ---------------------------------------------------------------------------------------------------
# the LiGO paper's counter (ELECTRA's flops_computation.py): to reproduce the papers' figures

# ELECTRA's per-element costs of the non-matmul work it counts.
_DROPOUT, _LAYER_NORM, _ACTIVATION, _SOFTMAX = 4, 5, 8, 5
PAPER_OUTPUT_FRACTION = 0.15625  # share of positions charged the MLM output softmax


def _paper_dims(config) -> tuple[int, int, int, int, int]:
    return config.hidden_size, config.num_hidden_layers, _ffn(config), config.num_attention_heads, config.vocab_size


def _paper_block(hidden: int, ffn: int, heads: int, seq: int) -> float:
    """ELECTRA's forward FLOPs of one transformer block over one sequence (its layer-norm term kept as is)."""
    per_position = (
        6 * hidden * hidden + 3 * hidden  # Q, K, V and biases
        + 2 * hidden * seq + (_SOFTMAX + _DROPOUT + 1) * seq * heads  # scores, softmax, dropout, scale
        + 2 * hidden * seq  # weighted average of values
        + 2 * hidden * hidden + hidden + _DROPOUT * hidden + hidden + _LAYER_NORM  # attention output
        + 2 * hidden * ffn + _ACTIVATION * ffn + ffn  # intermediate
        + 2 * hidden * ffn + hidden + _DROPOUT * hidden + hidden + _LAYER_NORM * hidden  # output
    )
    return per_position * seq


def _paper_embeddings(hidden: int, vocab: int, seq: int) -> float:
    """Input embedding as a dense one-hot matmul, plus the MLM head on PAPER_OUTPUT_FRACTION of positions."""
    inputs = 2 * hidden * vocab + 2 * hidden * (seq + 2) + 2 * hidden + (_LAYER_NORM + _DROPOUT) * hidden
    output = (2 * hidden * vocab + 2 * hidden * hidden + hidden + (_ACTIVATION + _LAYER_NORM) * hidden
              + (_SOFTMAX + 2) * vocab)
    return (inputs + PAPER_OUTPUT_FRACTION * output) * seq


def paper_step_flops(config, batch_size: int, seq_len: int) -> float:
    """FLOPs of one training step as LiGO (and ELECTRA) count them: backward = forward.
    BERT-Base at 256 x 128 gives 1.507e13; BERT-Small 4.98e12."""
    hidden, layers, ffn, heads, vocab = _paper_dims(config)
    forward = layers * _paper_block(hidden, ffn, heads, seq_len) + _paper_embeddings(hidden, vocab, seq_len)
    return 2 * batch_size * forward


def _paper_operator_block(small_hidden: int, small_layers: int, hidden: int, ffn: int) -> float:
    """LiGO's FusedTransformerHparams: the cost of building one large block's weights from the small ones
    (depth mixing over the small layers, then width expansion), charged per sequence as the paper does."""
    new = hidden - small_hidden
    return (
        2 * hidden * hidden * small_layers + 4 * new * small_hidden * small_hidden  # Q, K, V
        + hidden * small_layers + new * small_hidden  # their biases
        + 2 * hidden * hidden * small_layers + 4 * new * small_hidden * small_hidden  # attention output
        + hidden * small_layers + new * small_hidden  # its bias
        + 2 * hidden * small_layers + 2 * new * small_hidden  # attention layer norm
        + 2 * hidden * ffn * small_layers + 4 * new * small_hidden * ffn  # intermediate
        + ffn * small_layers + new * ffn  # its bias
        + 2 * hidden * ffn * small_layers + 2 * new * ffn * hidden  # output
        + 2 * hidden * small_layers + new * hidden  # its bias
        + 2 * hidden * small_layers + new * hidden  # output layer norm
    )


def paper_ligo_operator_step_flops(small_config, large_config, batch_size: int, seq_len: int) -> float:
    """FLOPs of one LiGO operator step as the paper counts them: the large model's step plus building its
    weights from the operator. BERT-Small -> BERT-Base at 256 x 128: 3.613e13 (x 100 steps = +3.61e15)."""
    small_hidden, small_layers = small_config.hidden_size, small_config.num_hidden_layers
    hidden, layers, ffn, _, _ = _paper_dims(large_config)
    operator = layers * _paper_operator_block(small_hidden, small_layers, hidden, ffn)
    return paper_step_flops(large_config, batch_size, seq_len) + 2 * batch_size * operator


# ---------------------------------------------------------------------------------------------------
# the collector


def _signature(phase: Phase, batch: dict[str, torch.Tensor], step: int) -> Hashable:
    """What decides a step's FLOPs: shapes, the trainable set, the extra passes, the loss, the variant."""
    trainable = {id(p) for p in phase.trainable}
    params = tuple((name, tuple(p.shape), id(p) in trainable) for name, p in phase.model.named_parameters())
    extra = tuple(tuple(p.shape) for model in phase.extra_forward for p in model.parameters())
    loss_code = getattr(phase.loss, "__code__", phase.loss)
    variant = phase.variant(step) if phase.variant is not None else None
    return (type(phase.model).__name__, params, extra, id(loss_code), tuple(batch["input_ids"].shape), variant)


def _write_table(path: os.PathLike, rows: list[dict[str, Any]]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


@register_collector("flops")
class FlopsCollector(Collector):
    """fvcore and analytic FLOPs per phase (executed FLOPs come from the loop's `count_executed_step`).

    Each distinct phase signature is counted once. A phase with a `variant` is counted by fvcore once
    per distinct key, at the phase's end when its steps are known; the analytic column says why it is
    empty for such phases. The fvcore per-module table of each phase goes to run_dir/fvcore_<phase>.csv.
    """

    order = 10

    def __init__(self, run):
        super().__init__(run)
        self._fvcore_cache: dict[Hashable, FvcoreStep] = {}
        self._phase: Phase | None = None
        self._batch: dict[str, torch.Tensor] | None = None
        self._analytic: int | None = None
        self._analytic_note = ""
        self._fvcore_note = ""

    def _fvcore(self, step: int) -> FvcoreStep:
        key = _signature(self._phase, self._batch, step)
        if key not in self._fvcore_cache:
            self._fvcore_cache[key] = fvcore_step(self._phase, self._batch, step)
        return self._fvcore_cache[key]

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        self._phase, self._batch = phase, batch
        if not isinstance(phase.model, PreTrainedModel):
            # e.g. LiGO's operator: the trained weights live outside the traced modules, so a
            # per-module forward x backward rule would miss the operator's gradient work
            self._fvcore_note = f"unavailable: the phase trains a {type(phase.model).__name__}, not a transformers model"
            self._analytic, self._analytic_note = None, "unavailable: not a transformers model"
            return
        try:
            first = self._fvcore(0)
            self._fvcore_note = "traced forward, training per module"
        except RuntimeError as error:  # the tracer cannot follow this phase's loss: a missing count, not a failed run
            self._fvcore_note = f"unavailable: {str(error).splitlines()[0]}"
        else:
            if self.run.run_dir is not None:  # None: one of torchrun's other ranks, which write nothing
                os.makedirs(self.run.run_dir, exist_ok=True)
                safe_name = re.sub(r"[^\w.-]", "_", phase.name)
                _write_table(os.path.join(self.run.run_dir, f"fvcore_{safe_name}.csv"), first.rows)
        try:
            self._analytic, self._analytic_note = analytic_step_flops(phase, batch), "config formula"
        except UncountedPhase as reason:
            self._analytic, self._analytic_note = None, f"unavailable: {reason}"

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        if self._fvcore_note.startswith("unavailable"):
            fvcore = None
        else:
            fvcore = self.run.accumulation * sum(len(run) * self._fvcore(run[0]).training_flops
                                                 for run in self._phase.steps_by_variant(steps).values())
        return {
            "flops_fvcore": fvcore,
            "flops_fvcore_note": self._fvcore_note,
            "flops_analytic": None if self._analytic is None else self._analytic * steps * self.run.accumulation,
            "flops_analytic_note": self._analytic_note,
            "flops_convention": FLOP_CONVENTION,
        }

    def combine(self, columns: list[dict[str, Any]]) -> dict[str, Any]:
        """Under torchrun each rank counted its own rows of the batch: the step's counts are their sums."""
        combined = dict(columns[0])
        for key in ("flops_fvcore", "flops_analytic"):
            if key not in combined:  # a snapshot: no columns of its own
                continue
            values = [column[key] for column in columns]
            combined[key] = None if None in values else sum(values)
        return combined
