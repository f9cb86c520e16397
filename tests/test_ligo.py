"""LiGO: the operator phase trains only the operator and lowers the loss; the materialised model is
the operator's model, a valid LARGE checkpoint; depth-only and width-only pairs; the init's maps."""

from __future__ import annotations

import pytest
import torch
from test_contracts import SEQ, VOCAB, is_tied, random_batch, state, tiny_context
from transformers import PreTrainedModel

from bench.collectors.flops import fvcore_step
from bench.errors import BenchError
from bench.methods import GrowthContext, make_method
from bench.methods.ligo import LigoOperator
from bench.objective import scored_logits
from bench.phases import Phase
from bench.sizes import Size, make_pair

FAMILIES = ["bert", "roberta", "gpt2"]


def context_for(small: Size, large: Size) -> GrowthContext:
    parent = small.build(VOCAB, SEQ, seed=100)
    return GrowthContext(make_pair(small, large), parent, vocab_size=VOCAB, seq_len=SEQ, pad_token_id=0, seed=0)


def start(ctx: GrowthContext, **settings: str):
    """(method, its phase generator, the operator phase, prepared as the loop prepares it)."""
    method = make_method("ligo", settings)
    phases = method.phases(ctx)
    operator_phase = next(phases)
    operator_phase.prepare()
    return method, phases, operator_phase


def fit(phase: Phase, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    """The loop's part: AdamW over `trainable` at the phase's learning rate, on one fixed batch."""
    optimizer = torch.optim.AdamW(phase.trainable, lr=phase.lr)
    losses = []
    for step in range(steps):
        losses.append(phase.forward_backward(batch, step, 0.0).item())
        optimizer.step()
        phase.zero_grad()
    return losses


def test_operator_phase_declares_its_schedule_and_settings():
    method, _, phase = start(tiny_context("bert"), operator_lr="0.002")
    assert isinstance(phase.model, LigoOperator)
    assert phase.steps == 100 and phase.fits_init and phase.share is None
    assert phase.lr == 0.002 and 0 < phase.warmup_steps <= 10
    assert {id(p) for p in phase.trainable} == {id(p) for _, p in phase.model.operator_named_parameters()}
    assert phase.settings is method.operator_log
    assert phase.settings["operator_lr"] == 0.002 and phase.settings["width_identity_block"] == "fixed"


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_operator_gets_gradients(family):
    ctx = tiny_context(family)
    parent_before = state(ctx.parent)
    _, _, phase = start(ctx)
    phase.forward_backward(random_batch(family, torch.Generator().manual_seed(0)), 0, 0.0)
    operator = {id(p) for p in phase.trainable}
    for name, p in phase.model.named_parameters():
        if id(p) in operator:
            assert p.grad is not None, name  # zero where the parent's biases are (fresh BERT biases are 0)
        else:
            assert p.grad is None, name  # LARGE's own parameters only give the architecture
    assert all(p.grad.abs().sum() > 0 for name, p in phase.model.operator_named_parameters() if "weight" in name)
    assert all(p.grad is None for p in ctx.parent.parameters())
    assert all(torch.equal(p, parent_before[n]) for n, p in ctx.parent.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_operator_steps_lower_the_loss_and_are_logged(family):
    method, _, phase = start(tiny_context(family))
    losses = fit(phase, random_batch(family, torch.Generator().manual_seed(0)), steps=20)
    assert losses[-1] < 0.8 * losses[0]
    log = method.operator_log
    assert (log["operator_loss_first"], log["operator_loss_last"]) == (losses[0], losses[-1])
    change = phase.model.relative_change()
    assert set(change) == {"depth", "width"} and all(value > 0 for value in change.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_materialised_model_is_the_operator_model_and_a_valid_checkpoint(family, tmp_path):
    ctx = tiny_context(family)
    method, phases, operator_phase = start(ctx)
    fit(operator_phase, random_batch(family, torch.Generator().manual_seed(0)), steps=3)
    batch = random_batch(family, torch.Generator().manual_seed(1))
    with torch.no_grad():
        operator_logits, _ = operator_phase.model(scored_logits, batch)
        assert operator_phase.evaluate(batch) == operator_phase.loss(batch, 3, 0.0)

    train_phase = next(phases)
    grown = train_phase.model
    assert not train_phase.fits_init and train_phase.steps is None and train_phase.share is None
    assert {"operator_depth_rel_change", "operator_width_rel_change"} <= set(method.operator_log)
    with torch.no_grad():
        grown_logits, _ = scored_logits(grown, batch)
    torch.testing.assert_close(grown_logits, operator_logits, rtol=0, atol=1e-5)

    large = ctx.build_large()
    assert {n: p.shape for n, p in grown.named_parameters()} == {n: p.shape for n, p in large.named_parameters()}
    assert is_tied(grown)
    parent_storage = {p.untyped_storage().data_ptr() for p in ctx.parent.parameters()}
    assert not parent_storage & {p.untyped_storage().data_ptr() for p in grown.parameters()}
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path)
    assert is_tied(loaded)
    with torch.no_grad():
        torch.testing.assert_close(scored_logits(loaded, batch)[0], grown_logits, rtol=0, atol=0)


@pytest.mark.parametrize("small, large, grows", [
    (Size("x", "bert", 2, 64, 2, 256), Size("y", "bert", 4, 64, 2, 256), "depth"),
    (Size("x", "bert", 2, 64, 2, 256), Size("y", "bert", 2, 128, 4, 512), "width"),
    (Size("x", "gpt2", 2, 64, 2, 256), Size("y", "gpt2", 3, 64, 2, 256), "depth"),
    (Size("x", "gpt2", 2, 64, 2, 256), Size("y", "gpt2", 2, 96, 2, 384), "width"),
], ids=["bert-depth", "bert-width", "gpt2-depth-3-of-2", "gpt2-width"])
def test_depth_only_and_width_only_pairs_use_only_that_operator(small, large, grows):
    ctx = context_for(small, large)
    _, phases, phase = start(ctx)
    assert {name.split(".")[0] for name, _ in phase.model.operator_named_parameters()} == {grows}
    losses = fit(phase, random_batch(small.family, torch.Generator().manual_seed(0)), steps=10)
    assert losses[-1] < losses[0]
    grown = next(phases).model
    assert {n: p.shape for n, p in grown.named_parameters()} == \
        {n: p.shape for n, p in ctx.build_large().named_parameters()}


def _block(model: PreTrainedModel, layer: int, module_type: str) -> torch.Tensor:
    """One block's Q/K/V/fc1 weight as (out, in), whatever the family stores."""
    if model.config.model_type == "gpt2":
        block = model.transformer.h[layer]
        if module_type == "fc1":
            return block.mlp.c_fc.weight.T
        return block.attn.c_attn.weight.T.chunk(3)["qkv".index(module_type)]
    block = model.base_model.encoder.layer[layer]
    if module_type == "fc1":
        return block.intermediate.dense.weight
    return getattr(block.attention.self, {"q": "query", "k": "key", "v": "value"}[module_type]).weight


@pytest.mark.parametrize("family", FAMILIES)
def test_noise_free_init_stacks_the_parent_and_keeps_its_channels(family):
    """Without noise, block l is parent block l mod L1 (stacking), and the first D1 (F1) channels of
    every grown matrix are the parent's own: the identity block of B = [I; S], Q|K|V split and re-fused."""
    ctx = tiny_context(family)
    _, phases, _ = start(ctx, depth_noise="0", width_noise="0")
    grown = next(phases).model
    small, large = ctx.pair.small, ctx.pair.large
    for layer in range(large.layers):
        for module_type in ("q", "k", "v", "fc1"):
            rows = small.ffn if module_type == "fc1" else small.hidden
            parent_weight = _block(ctx.parent, layer % small.layers, module_type)
            torch.testing.assert_close(_block(grown, layer, module_type)[:rows, :small.hidden], parent_weight)
    embedding = grown.get_input_embeddings().weight
    torch.testing.assert_close(embedding[:, :small.hidden], ctx.parent.get_input_embeddings().weight)
    # each new channel copies one parent channel: a new embedding column equals some old column
    new_column = embedding[:, small.hidden]
    assert any(torch.equal(new_column, old) for old in ctx.parent.get_input_embeddings().weight.T)


def test_default_init_is_noisy_stacking_and_noisy_selection():
    ctx = tiny_context("bert")
    _, _, phase = start(ctx)
    operator, small, large = phase.model, ctx.pair.small, ctx.pair.large
    for coefficients in operator.depth.values():
        torch.testing.assert_close(coefficients.sum(dim=1), torch.ones(large.layers))
        assert torch.equal(coefficients.argmax(dim=1), torch.arange(large.layers) % small.layers)
        assert coefficients.min() > 0  # every source block is mixed in a little
    for selection in operator.width.values():
        top, _ = selection.max(dim=1)
        assert torch.all(top >= 1.0)
        assert torch.all(selection.sum(dim=1) - top <= 0.03)  # noise mass per new channel at most width_noise
    other = LigoOperator(ctx.pair, ctx.parent, ctx.build_large(), seed=1, depth_noise=0.03, width_noise=0.03)
    assert not torch.equal(other.width["hidden"], operator.width["hidden"])


def test_pair_with_nothing_to_learn_is_refused():
    ctx = context_for(Size("x", "bert", 2, 64, 2, 256), Size("y", "bert", 2, 64, 4, 256))
    with pytest.raises(BenchError, match="nothing to learn"):
        start(ctx)


def test_fvcore_can_trace_the_operator_phase():
    """The flops collector's second count traces the phase's loss, where functional_call refuses to run."""
    ctx = tiny_context("gpt2")
    _, _, phase = start(ctx)
    batch = random_batch("gpt2", torch.Generator().manual_seed(0))
    scratch = Phase("train", ctx.build_large())
    operator_forward = fvcore_step(phase, batch).rows[0]["forward_flops"]
    assert operator_forward > fvcore_step(scratch, batch).rows[0]["forward_flops"]  # plus building the weights
