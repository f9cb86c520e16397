"""The width / depth surgery toolkit on tiny BERT, RoBERTa and GPT-2 models."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from test_contracts import FAMILIES, SEQ, VOCAB, random_batch

from bench.errors import BenchError
from bench.methods.surgery import (
    bottom_layers,
    grow,
    interleave_layers,
    layer_list,
    parameter_groups,
    split_shares,
    stack_layers,
    unit_map,
    width_maps,
)
from bench.objective import lm_loss, scored_logits
from bench.sizes import Dims, get_size


def shape(family: str, layers: int = 2, hidden: int = 64, heads: int = 2, ffn: int = 256):
    return dataclasses.replace(get_size(f"{family}-nano"), name="test", layers=layers, hidden=hidden, heads=heads,
                               ffn=ffn)


@functools.cache
def trained_parent(family: str, layers: int = 2, hidden: int = 64, heads: int = 2, ffn: int = 256, steps: int = 60):
    """A model fitted on two fixed batches (one is `batch_of`), so that its function is far from random
    init's near-uniform prediction and a broken surgery shows. 60 steps memorise the batches (loss
    ~0.2); 20 steps reach ~2.5-3.3, against ~6.2 at random init."""
    model = shape(family, layers, hidden, heads, ffn).build(VOCAB, SEQ, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = [random_batch(family, torch.Generator().manual_seed(i)) for i in range(2)]
    for step in range(steps):
        lm_loss(model, batches[step % 2]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def batch_of(family: str):
    return random_batch(family, torch.Generator().manual_seed(0))


def losses(parent, grown, batch):
    with torch.no_grad():
        return lm_loss(parent, batch).item(), lm_loss(grown, batch).item()


# ------------------------------------------------------------------------------------------ unit maps


def test_unit_map_keeps_the_originals_and_balances_copies():
    units = unit_map(8, 20, torch.Generator().manual_seed(0))
    assert units.source[:8].tolist() == list(range(8))
    assert sorted(torch.bincount(units.source).tolist()) == [2] * 4 + [3] * 4
    assert units.new.tolist() == [False] * 8 + [True] * 12
    per_source = torch.zeros(8, dtype=torch.float64).index_add(0, units.source, units.share)
    assert torch.allclose(per_source, torch.ones(8, dtype=torch.float64))


def test_split_shares():
    source = torch.tensor([0, 1, 2, 0, 1, 1])
    assert split_shares(source, None).tolist() == pytest.approx([1 / 2, 1 / 3, 1, 1 / 2, 1 / 3, 1 / 3])
    assert split_shares(source, 0.6).tolist() == pytest.approx([0.6, 0.6, 1, 0.4, 0.24, 0.16])


def test_maps_are_seeded():
    small, large = Dims(2, 64, 2, 256), Dims(4, 96, 3, 384)
    a, b, c = (width_maps(small, large, seed=s, alpha=0.6) for s in (3, 3, 4))
    assert torch.equal(a.hidden.source, b.hidden.source) and torch.equal(a.ffn.source, b.ffn.source)
    assert not torch.equal(a.hidden.source, c.hidden.source)


def test_head_space_moves_whole_heads():
    maps = width_maps(Dims(2, 64, 2, 256), Dims(2, 128, 4, 512), seed=0)
    heads = maps.spaces()["heads"]
    for head, source_head in enumerate(maps.heads.source.tolist()):
        assert heads.source[head * 32:(head + 1) * 32].tolist() == list(range(source_head * 32, (source_head + 1) * 32))


def test_whole_heads_need_equal_head_size():
    with pytest.raises(BenchError, match="head size 32"):
        width_maps(Dims(2, 64, 2, 256), Dims(2, 128, 2, 512), seed=0)
    with pytest.raises(BenchError, match="head size"):
        grow(get_size("bert-nano").build(VOCAB, SEQ, 0), get_size("bert-tiny").build(VOCAB, SEQ, 0))


def test_alpha_must_break_the_symmetry():
    with pytest.raises(BenchError, match="alpha"):
        width_maps(Dims(2, 64, 2, 256), Dims(2, 128, 4, 512), seed=0, alpha=0.5)


def test_depth_maps():
    assert stack_layers(2, 4) == [0, 1, 0, 1]
    assert stack_layers(3, 8) == [0, 1, 2, 0, 1, 2, 1, 2]
    assert stack_layers(4, 6) == [0, 1, 2, 3, 2, 3]  # MSLT: the new top layers copy the current top layers
    assert interleave_layers(2, 4) == [0, 0, 1, 1]
    assert interleave_layers(3, 7) == [0, 0, 1, 1, 2, 2, 2]


# ---------------------------------------------------------------------------- function preservation


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width", ["fpi", "split"])
def test_doubling_the_width_preserves_the_logits(family, width):
    """64 -> 128 duplicates every unit once, so even LayerNorm sees the same statistics."""
    parent = trained_parent(family)
    grown = grow(parent, shape(family, hidden=128, heads=4, ffn=512).build(VOCAB, SEQ, 0), width=width, seed=1).model
    batch = batch_of(family)
    with torch.no_grad():
        (parent_logits, _), (grown_logits, _) = scored_logits(parent, batch), scored_logits(grown.eval(), batch)
    assert (parent_logits - grown_logits).abs().max() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width", ["fpi", "split"])
def test_uneven_width_growth_keeps_the_loss_within_one_percent(family, width):
    """64 -> 96 copies half the units: LayerNorm statistics change, so only approximately preserved
    (it gets worse as the parent memorises its batches: ~3% at loss 0.2)."""
    parent = trained_parent(family, layers=1, steps=20)
    batch = batch_of(family)
    random_large = shape(family, 1, hidden=96, heads=3, ffn=384).build(VOCAB, SEQ, 0)
    parent_loss, random_loss = losses(parent, random_large, batch)
    assert random_loss > 1.2 * parent_loss  # so that 1% means something
    grown = grow(parent, random_large, width=width, seed=1).model
    parent_loss, grown_loss = losses(parent, grown, batch)
    assert abs(grown_loss - parent_loss) < 0.01 * parent_loss


def test_paper_like_uneven_growth_on_one_layer():
    """512 -> 768 (half the units copied once) on a one-layer BERT."""
    parent = trained_parent("bert", layers=1, hidden=512, heads=8, ffn=2048, steps=10)
    grown = grow(parent, shape("bert", 1, 768, 12, 3072).build(VOCAB, SEQ, 1), seed=1).model
    parent_loss, grown_loss = losses(parent, grown, batch_of("bert"))
    assert parent_loss < 5
    assert abs(grown_loss - parent_loss) < 0.01 * parent_loss


@pytest.mark.parametrize("family", FAMILIES)
def test_untied_target_reads_the_share_in_its_decoder(family):
    parent = trained_parent(family)
    config = shape(family, hidden=128, heads=4, ffn=512).config(VOCAB, SEQ)
    config.tie_word_embeddings = False
    target = type(parent)(config)
    assert target.get_output_embeddings().weight is not target.get_input_embeddings().weight
    grown = grow(parent, target, seed=1).model.eval()
    batch = batch_of(family)
    with torch.no_grad():
        assert (scored_logits(parent, batch)[0] - scored_logits(grown, batch)[0]).abs().max() < 1e-4


# ------------------------------------------------------------------------------------ weight layout


@pytest.mark.parametrize("family", FAMILIES)
def test_grown_model_keeps_its_ties_and_shares_nothing(family):
    parent = trained_parent(family)
    grown = grow(parent, shape(family, 4, 96, 3, 384).build(VOCAB, SEQ, 0), seed=1).model
    assert grown.get_output_embeddings().weight is grown.get_input_embeddings().weight
    if family == "bert":
        assert grown.cls.predictions.decoder.bias is grown.cls.predictions.bias
    parent_storage = {p.untyped_storage().data_ptr() for p in parent.parameters()}
    assert not parent_storage & {p.untyped_storage().data_ptr() for p in grown.parameters()}


def test_layernorms_follow_the_residual_map_unscaled():
    parent = trained_parent("bert")
    growth = grow(parent, shape("bert", 2, 96, 3, 384).build(VOCAB, SEQ, 0), seed=1)
    hidden = growth.maps.hidden
    for grown_norm, parent_norm in [
        (growth.model.bert.embeddings.LayerNorm, parent.bert.embeddings.LayerNorm),
        (growth.model.bert.encoder.layer[1].output.LayerNorm, parent.bert.encoder.layer[1].output.LayerNorm),
    ]:
        assert torch.equal(grown_norm.weight, parent_norm.weight[hidden.source])
        assert torch.equal(grown_norm.bias, parent_norm.bias[hidden.source])
    head_norm = growth.model.cls.predictions.transform.LayerNorm  # feeds the tied decoder: carries the share
    share = hidden.share.float()
    assert torch.allclose(head_norm.weight, parent.cls.predictions.transform.LayerNorm.weight[hidden.source] * share)


def test_gpt2_fused_qkv_is_split_expanded_and_refused():
    parent = trained_parent("gpt2")
    growth = grow(parent, shape("gpt2", 2, 128, 4, 512).build(VOCAB, SEQ, 0), width="split", seed=1)
    hidden, heads = growth.maps.hidden, growth.maps.spaces()["heads"]
    for layer in range(2):
        small_qkv = parent.transformer.h[layer].attn.c_attn.weight.detach()  # Conv1D: (in, out)
        grown_qkv = growth.model.transformer.h[layer].attn.c_attn.weight
        for small_part, grown_part in zip(small_qkv.split(64, dim=1), grown_qkv.split(128, dim=1), strict=True):
            expected = small_part[hidden.source][:, heads.source] * hidden.share.float()[:, None]
            assert torch.allclose(grown_part, expected)
        small_proj = parent.transformer.h[layer].attn.c_proj.weight.detach()  # Wo reads the heads of V
        expected = small_proj[heads.source][:, hidden.source] * heads.share.float()[:, None]
        assert torch.allclose(growth.model.transformer.h[layer].attn.c_proj.weight, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_stacking_copies_layer_l_to_l_plus_small_depth(family):
    parent = trained_parent(family)
    growth = grow(parent, shape(family, 5, 128, 4, 512).build(VOCAB, SEQ, 0), seed=1)
    assert growth.layers == [0, 1, 0, 1, 1]
    grown_layers = layer_list(growth.model)
    for layer in range(2):
        for p, q in zip(grown_layers[layer].parameters(), grown_layers[layer + 2].parameters(), strict=True):
            assert torch.equal(p, q)
    depth_only = grow(parent, shape(family, 4).build(VOCAB, SEQ, 0))
    assert depth_only.maps is None and depth_only.settings() == {"depth": "stack", "layer_map": [0, 1, 0, 1]}
    for layer in range(4):
        for p, q in zip(layer_list(depth_only.model)[layer].parameters(), layer_list(parent)[layer % 2].parameters(),
                        strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("family", FAMILIES)
def test_aki_takes_the_added_units_from_the_next_layer_and_the_top_from_below(family):
    parent = trained_parent(family, layers=3)
    aki = grow(parent, shape(family, 3, 128, 4, 512).build(VOCAB, SEQ, 0), width="aki", seed=1)
    fpi = grow(parent, shape(family, 3, 128, 4, 512).build(VOCAB, SEQ, 0), width="fpi", seed=1)
    ffn = aki.maps.ffn
    fc1 = (lambda model, layer: layer_list(model)[layer].mlp.c_fc.weight.T) if family == "gpt2" else (
        lambda model, layer: layer_list(model)[layer].intermediate.dense.weight)
    for layer, following in [(0, 1), (1, 2), (2, 1)]:  # the top layer takes them from the layer below
        assert torch.equal(fc1(aki.model, layer)[~ffn.new], fc1(fpi.model, layer)[~ffn.new])
        assert torch.equal(fc1(aki.model, layer)[ffn.new], fc1(fpi.model, following)[ffn.new])
    parent_loss, aki_loss = losses(parent, aki.model, batch_of(family))
    assert aki_loss != parent_loss  # AKI is not function preserving


def test_parameter_groups_partition_the_model():
    model = get_size("gpt2-micro").build(VOCAB, SEQ, 0)
    embeddings, layers, head = parameter_groups(model)
    listed = [id(p) for p in embeddings + [p for layer in layers for p in layer] + head]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    assert id(model.lm_head.weight) in {id(p) for p in embeddings} and len(layers) == 4
    assert [id(p) for p in head] == [id(model.transformer.ln_f.weight), id(model.transformer.ln_f.bias)]


@pytest.mark.parametrize("family", FAMILIES)
def test_bottom_layers_runs_a_shallow_model_sharing_the_weights(family):
    deep = trained_parent(family, layers=3)
    shallow = shape(family, 2).build(VOCAB, SEQ, 0)
    shallow.load_state_dict(deep.state_dict(), strict=False)
    batch = batch_of(family)
    with torch.no_grad(), bottom_layers(deep, 2) as sub:
        sub_loss = lm_loss(sub, batch)
    assert len(layer_list(deep)) == 3
    with torch.no_grad():
        assert torch.allclose(sub_loss, lm_loss(shallow, batch))
