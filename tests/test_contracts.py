"""Contracts every method must keep, on a tiny pair of every family (nano -> micro, vocab 500, seq 16).

A method joins by adding its name to METHODS; what is particular to one method is tested in its own file.
The helpers here do what the training loop does with a phase, and are shared with those files.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import PreTrainedModel

from bench.methods import GrowthContext, make_method
from bench.methods.surgery import layer_list
from bench.phases import Phase
from bench.sizes import Dims, parse_pair

METHODS = ["stackbert", "stackbert:progressive", "mslt", "bert2bert", "bert2bert:fpi", "ki", "ligo", "ligo:fpi"]
FAMILIES = ["bert", "roberta", "gpt2"]
VOCAB, SEQ = 500, 16


def tiny_context(family: str, seed: int = 0, small: str = "nano", large: str = "micro") -> GrowthContext:
    pair = parse_pair(f"{family}-{small}:{family}-{large}")
    parent = pair.small.build(VOCAB, SEQ, seed=100 + seed)
    return GrowthContext(pair, parent, vocab_size=VOCAB, seq_len=SEQ, pad_token_id=0, seed=seed)


def random_batch(family: str, generator: torch.Generator, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Random tokens (never the pad token 0); MLM scores every fourth position, causal LM all of them."""
    ids = torch.randint(1, VOCAB, (batch_size, SEQ), generator=generator)
    labels = ids.clone() if family == "gpt2" else torch.where(torch.arange(SEQ) % 4 == 0, ids, -100)
    return {"input_ids": ids, "labels": labels}


def train(phase: Phase, steps: int, seed: int = 0, lr: float = 1e-3, first_step: int = 0,
          family: str | None = None) -> list[float]:
    """What the loop does with a phase: only `trainable` requires grad, a fresh AdamW over it, grads set to None."""
    phase.prepare()
    optimizer = torch.optim.AdamW(phase.trainable, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(first_step, first_step + steps):
        loss = phase.loss(random_batch(family or phase.model.config.model_type, generator), step, 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def run_phases(name: str, ctx: GrowthContext, steps: int = 1) -> list[Phase]:
    """Every phase of a method, each trained `steps` steps before the next is asked for."""
    phases = []
    for phase in make_method(name).phases(ctx):
        train(phase, steps, family=ctx.pair.large.family)
        phases.append(phase)
    return phases


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def is_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.fixture(scope="module", params=[(m, f) for m in METHODS for f in FAMILIES], ids="-".join)
def method_run(request):
    """(method, family, context, phases) with every phase trained one step."""
    name, family = request.param
    ctx = tiny_context(family)
    return name, family, ctx, run_phases(name, ctx)


def test_final_model_is_large_and_round_trips(method_run, tmp_path):
    _, family, ctx, phases = method_run
    final = phases[-1].eval_model
    large = ctx.build_large()
    assert type(final) is type(large)
    assert final.config.to_dict() | {"_name_or_path": ""} == large.config.to_dict() | {"_name_or_path": ""}
    assert {n: p.shape for n, p in final.named_parameters()} == {n: p.shape for n, p in large.named_parameters()}
    assert sum(p.numel() for p in final.parameters()) == sum(p.numel() for p in large.parameters())

    final.save_pretrained(tmp_path)
    loaded = type(final).from_pretrained(tmp_path)
    assert is_tied(loaded)
    for (n, p), (_, q) in zip(final.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    batch = random_batch(family, torch.Generator().manual_seed(1))
    final.eval()
    with torch.no_grad():
        assert torch.equal(final(input_ids=batch["input_ids"]).logits, loaded(input_ids=batch["input_ids"]).logits)


def test_every_phase_keeps_embeddings_tied(method_run):
    _, _, _, phases = method_run
    for phase in phases:
        if isinstance(phase.eval_model, PreTrainedModel):  # LiGO's operator phase holds no plain model yet
            assert is_tied(phase.eval_model), phase.name
        head = getattr(phase.model, "cls", None)
        if head is not None:  # BERT's decoder bias is the prediction bias
            assert head.predictions.decoder.bias is head.predictions.bias


def test_grown_model_shares_no_tensor_with_parent(method_run):
    _, _, ctx, phases = method_run
    parent_storage = {p.untyped_storage().data_ptr() for p in ctx.parent.parameters()}
    for phase in phases:
        assert not parent_storage & {p.untyped_storage().data_ptr() for p in phase.model.parameters()}, phase.name


def test_phase_shares_fit_the_budget(method_run):
    _, _, _, phases = method_run
    shares = [phase.share for phase in phases if phase.share is not None]
    assert all(0 < share < 1 for share in shares) and sum(shares) < 1
    assert phases[-1].share is None and phases[-1].steps is None  # the last phase runs to the budget


def test_every_trainable_parameter_gets_a_gradient(method_run):
    """Each phase's loss reaches all its trainable parameters (over every variant of a varying phase)
    and none of its frozen ones."""
    name, family, _, _ = method_run
    for phase in make_method(name).phases(tiny_context(family)):
        phase.prepare()
        keys = {phase.variant(step): step for step in range(200)} if phase.variant else {None: 0}
        reached = set()
        for step in keys.values():
            phase.loss(random_batch(family, torch.Generator().manual_seed(step)), step, 0.0).backward()
            reached |= {id(p) for p in phase.model.parameters() if p.grad is not None}
            for p in phase.model.parameters():
                assert p.grad is None or torch.isfinite(p.grad).all()
                p.grad = None
        assert reached == {id(p) for p in phase.trainable}, phase.name


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_grown_weights(name):
    first, second = (make_method(name).phases(tiny_context("gpt2")) for _ in range(2))
    a, b = next(first).model, next(second).model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    ctx = tiny_context("gpt2")
    other = next(make_method(name).phases(dataclasses.replace(ctx, seed=1))).model  # same parent, other seed
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), other.parameters(), strict=True))


KEEPS_COPIES = {"bert2bert:fpi"}  # the paper's exact FPI, kept on purpose to show that its copies never diverge


def identical_units(model: PreTrainedModel) -> list[str]:
    """The spaces of `model` in which two units are exactly equal: residual channels (the word embedding's
    columns), and per layer the attention heads (their Q, K and V rows together) and the FFN units (fc1's
    rows with their bias). Equal units get equal gradients, so they stay equal: frozen symmetry."""
    def duplicated(rows: torch.Tensor) -> bool:
        return len(torch.unique(rows.detach(), dim=0)) < len(rows)

    dims = Dims.of(model.config)
    found = ["hidden"] if duplicated(model.get_input_embeddings().weight.T) else []
    for index, layer in enumerate(layer_list(model)):
        if model.config.model_type == "gpt2":  # Conv1D weights are (in, out)
            qkv = torch.cat([layer.attn.c_attn.weight.T, layer.attn.c_attn.bias[:, None]], 1).chunk(3)
            ffn = torch.cat([layer.mlp.c_fc.weight.T, layer.mlp.c_fc.bias[:, None]], 1)
        else:
            attention = layer.attention.self
            qkv = [torch.cat([m.weight, m.bias[:, None]], 1) for m in (attention.query, attention.key, attention.value)]
            ffn = torch.cat([layer.intermediate.dense.weight, layer.intermediate.dense.bias[:, None]], 1)
        heads = torch.cat([part.reshape(dims.heads, -1) for part in qkv], 1)  # one row per head
        found += [f"layer {index} {space}" for space, rows in (("heads", heads), ("ffn", ffn)) if duplicated(rows)]
    return found


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", METHODS)
def test_no_frozen_symmetry_after_five_steps(name, family):
    """After 5 AdamW steps of every phase, no two units of any layer of the grown model are identical —
    except for the variant that keeps exact FPI copies by design, where they must still be identical."""
    final = run_phases(name, tiny_context(family), steps=5)[-1].eval_model
    if name in KEEPS_COPIES:
        assert identical_units(final)
    else:
        assert identical_units(final) == []
