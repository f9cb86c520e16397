"""What is particular to stackbert, mslt and bert2bert (the shared contracts are in test_contracts.py)."""

from __future__ import annotations

import pytest
import torch
from test_contracts import FAMILIES, random_batch, state, tiny_context, train
from torch.utils.flop_counter import FlopCounterMode

from bench.errors import BenchError
from bench.methods import make_method
from bench.methods.bert2bert import Bert2BERT
from bench.methods.mslt import MSLT
from bench.methods.stackbert import ProgressiveStackBERT
from bench.methods.surgery import layer_list, width_maps
from bench.sizes import Dims


def step_flops(phase, step: int = 0) -> int:
    """FLOPs of one training step of `phase` (loss + backward), as the loop charges them."""
    phase.prepare()
    batch = random_batch(phase.model.config.model_type, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        phase.loss(batch, step, 0.0).backward()
    phase.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------- stackbert


def test_progressive_stackbert_stages():
    assert ProgressiveStackBERT.plan(12, (0.125, 0.175)) == [(3, 0.125), (6, 0.175), (12, None)]
    assert ProgressiveStackBERT.plan(2, (0.125, 0.175)) == [(1, 0.3), (2, None)]
    phases = make_method("stackbert:progressive").phases(tiny_context("bert"))
    first = next(phases)
    assert (len(layer_list(first.model)), first.share) == (1, 0.125)
    train(first, 3)
    trained = state(layer_list(first.model)[0])
    second = next(phases)
    assert (len(layer_list(second.model)), second.share) == (2, 0.175)
    for layer in layer_list(second.model):  # both layers copy the trained one
        assert all(torch.equal(p, trained[n]) for n, p in layer.named_parameters())
    assert len(layer_list(next(phases).model)) == 4


def test_stackbert_settings_are_overridable_and_recorded():
    phase = next(make_method("stackbert", {"alpha": "0.75", "depth": "interleave"}).phases(tiny_context("bert")))
    assert phase.settings | {"width_seed": 0} == {
        "width": "split", "alpha": 0.75, "width_seed": 0, "depth": "interleave", "layer_map": [0, 0, 1, 1]}
    with pytest.raises(BenchError):
        next(make_method("stackbert", {"depth": "sideways"}).phases(tiny_context("bert")))


# ---------------------------------------------------------------------------------------------- mslt


def test_mslt_depths():
    assert MSLT.depths(6, 24, 0) == [6, 12, 18, 24]
    assert MSLT.depths(6, 12, 4) == [6, 10, 12]
    assert MSLT.depths(4, 4, 0) == [4]  # width-only pair: no growth stage, the joint stage is everything


@pytest.mark.parametrize("family", FAMILIES)
def test_mslt_growth_stage_trains_only_new_layers_and_head(family):
    """With the embeddings frozen; the default, the tied head trained as the output projection only, is in
    test_schedules.py."""
    phases = make_method("mslt", {"embeddings": "frozen"}).phases(tiny_context(family))
    growth = next(phases)
    assert growth.name == "growth-1" and growth.share == 0.5
    model = growth.model
    new_layers = {id(p) for layer in layer_list(model)[2:] for p in layer.parameters()}
    trainable = {id(p) for p in growth.trainable}
    assert new_layers <= trainable
    assert id(model.get_input_embeddings().weight) not in trainable  # frozen, as is the tied output projection
    before = state(model)
    train(growth, 3)
    after = state(model)
    frozen = [n for n, p in model.named_parameters() if id(p) not in trainable]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n, p in model.named_parameters() if id(p) in new_layers
               and n.endswith("weight"))
    joint = next(phases)
    assert joint.model is model and joint.share is None and len(joint.trainable) == len(list(model.parameters()))
    growth_flops, joint_flops = step_flops(growth), step_flops(joint)
    assert 0 < growth_flops < 0.8 * joint_flops


def test_mslt_chunks_split_the_growth_share():
    phases = list(make_method("mslt", {"chunk_layers": "1", "growth_share": "0.4"}).phases(tiny_context("gpt2")))
    assert [(p.name, p.share, len(layer_list(p.model))) for p in phases] == [
        ("growth-1", 0.2, 3), ("growth-2", 0.2, 4), ("joint", None, 4)]
    assert phases[1].settings["trained_layers"] == [3, 3]


# ----------------------------------------------------------------------------------------- bert2bert


@pytest.mark.parametrize("family", FAMILIES)
def test_bert2bert_stage1_changes_only_the_sampled_top_layers(family):
    stage1 = next(make_method("bert2bert").phases(tiny_context(family)))
    assert stage1.share == 0.1 and stage1.settings["block_layers"] == 1  # l_b = L1 / 2
    keys = [stage1.variant(step) for step in range(40)]
    assert set(keys) == {1, 2, 3, 4} and keys == [stage1.variant(step) for step in range(40)]
    model = stage1.model
    for step in (keys.index(1), keys.index(3)):
        top = layer_list(model)[keys[step] - 1]
        before = state(model)
        train(stage1, 1, first_step=step)
        changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        top_names = {n for n, p in model.named_parameters() if any(p is q for q in top.parameters())}
        assert changed and changed <= top_names


def test_bert2bert_charges_each_submodel_its_own_cost():
    stage1 = next(make_method("bert2bert").phases(tiny_context("bert")))
    steps = {stage1.variant(step): step for step in range(40)}
    flops = [step_flops(stage1, steps[k]) for k in (1, 2, 3, 4)]
    assert flops == sorted(flops) and flops[0] < 0.6 * flops[-1]


def test_bert2bert_settings():
    phases = make_method("bert2bert", {"stage1_share": "0"}).phases(tiny_context("bert"))
    assert [p.name for p in phases] == ["stage-2"]
    assert make_method("bert2bert:fpi").settings.width == "fpi"
    assert Bert2BERT.sampled_blocks(5, 17, 4) == Bert2BERT.sampled_blocks(5, 17, 4)
    with pytest.raises(BenchError, match="aki or fpi"):
        next(make_method("bert2bert", {"width": "split"}).phases(tiny_context("bert")))


# -------------------------------------------------------------------------------------- symmetry


def _copy_gaps(phase, parent_dims: Dims) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per duplicated pair (added unit, its source), the largest weight difference: over the word
    embedding's columns for the hidden units, over fc1's rows (each layer) for the FFN units."""
    model = phase.model
    maps = width_maps(parent_dims, Dims.of(model.config), seed=phase.settings["width_seed"],
                      alpha=phase.settings["alpha"])
    embedding = model.get_input_embeddings().weight.detach()
    hidden = (embedding[:, maps.hidden.new] - embedding[:, maps.hidden.source[maps.hidden.new]]).abs().amax(0)
    ffn = []
    for layer in layer_list(model):
        fc1 = layer.mlp.c_fc.weight.detach().T if model.config.model_type == "gpt2" else layer.intermediate.dense.weight
        ffn.append((fc1[maps.ffn.new] - fc1[maps.ffn.source[maps.ffn.new]]).abs().amax(1))
    return hidden, ffn


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("name", ["stackbert", "mslt", "bert2bert", "bert2bert:fpi"])
def test_duplicated_units_diverge_only_where_symmetry_is_broken(name, family):
    """Train the phase that trains everything a few AdamW steps (dropout is 0) and look at the copies."""
    ctx = tiny_context(family)
    phase = list(make_method(name).phases(ctx))[-1]
    hidden, ffn = _copy_gaps(phase, Dims.of(ctx.parent.config))
    assert hidden.max() == 0  # embeddings are copied by every width operator
    copied_ffn = [gap.max() == 0 for gap in ffn]
    train(phase, 5)
    hidden_after, ffn_after = _copy_gaps(phase, Dims.of(ctx.parent.config))
    if name == "bert2bert:fpi":  # the paper's FPI: exact copies get exact same updates, forever
        assert hidden_after.max() == 0 and all(gap.max() == 0 for gap in ffn_after)
        return
    assert hidden_after.min() > 1e-6 and hidden_after.max() > 1e-4
    for layer, (copied, gap) in enumerate(zip(copied_ffn, ffn_after, strict=True)):
        if name == "bert2bert":
            # AKI takes the added FFN units from another layer (the next one; the top layer's from the one
            # below), so none of them starts as a copy of its source in its own layer, and none becomes one.
            assert not copied and gap.min() > 1e-6
        else:
            assert copied and gap.min() > 1e-6 and gap.max() > 1e-4
