"""LiGO: the operator phase trains only the operator and lowers the loss; the materialised model is
the operator's model, a valid LARGE checkpoint; depth-only and width-only pairs; the two inits
(`ligo`: the official stackbert_noisy + rand; `ligo:fpi`: exactly stackbert's grown model); the end check, which
keeps the operator's start when its end scores higher, so that the phase never ends above its start."""

from __future__ import annotations

import pytest
import torch
from test_contracts import SEQ, VOCAB, is_tied, random_batch, state, tiny_context
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from bench.collectors import CollectorSet
from bench.collectors.flops import count_executed_step, fvcore_step
from bench.errors import BenchError
from bench.methods import GrowthContext, make_method
from bench.methods.ligo import CPU_OPERATOR_STEPS, PAPER_OPERATOR_STEPS, LigoOperator, default_operator_steps
from bench.methods.stackbert import StackBERT
from bench.methods.surgery import stack_layers
from bench.objective import lm_loss, scored_logits
from bench.phases import Phase
from bench.sizes import Size, make_pair, parse_pair
from bench.train import BatchSource, Budget, LoopConfig, train_phases

FAMILIES = ["bert", "roberta", "gpt2"]


def context_for(small: Size, large: Size) -> GrowthContext:
    parent = small.build(VOCAB, SEQ, seed=100)
    return GrowthContext(make_pair(small, large), parent, vocab_size=VOCAB, seq_len=SEQ, pad_token_id=0, seed=0)


def start(ctx: GrowthContext, method_name: str = "ligo", **settings: str):
    """(method, its phase generator, the operator phase, prepared as the loop prepares it)."""
    method = make_method(method_name, settings)
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
    # a CPU pair's default updates, then the end check
    assert phase.steps == CPU_OPERATOR_STEPS + 1 and phase.fits_init and phase.share is None
    assert [phase.variant(step) for step in range(phase.steps)] == ["fit"] * CPU_OPERATOR_STEPS + ["end check"]
    assert phase.lr == 0.002 and 0 < phase.warmup_steps <= min(10, CPU_OPERATOR_STEPS)
    assert {id(p) for p in phase.trainable} == \
        {id(p) for _, p in phase.model.operator_named_parameters()} | {id(phase.model.verdict)}
    assert phase.settings is method.operator_log
    assert phase.settings["operator_lr"] == 0.002 and phase.settings["width_identity_block"] == "fixed"


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_operator_gets_gradients(family, name):
    ctx = tiny_context(family)
    parent_before = state(ctx.parent)
    _, _, phase = start(ctx, name)
    phase.forward_backward(random_batch(family, torch.Generator().manual_seed(0)), 0, 0.0)
    operator = {id(p) for _, p in phase.model.operator_named_parameters()}
    assert phase.model.verdict.grad is None  # the end check's; only the check step reaches it
    for parameter_name, p in phase.model.named_parameters():
        if id(p) in operator:
            assert p.grad is not None, parameter_name  # zero where the parent's biases are (fresh BERT biases are 0)
        else:
            assert p.grad is None, parameter_name  # LARGE's own parameters only give the architecture
    assert all(p.grad.abs().sum() > 0 for key, p in phase.model.operator_named_parameters() if "weight" in key)
    assert all(p.grad is None for p in ctx.parent.parameters())
    assert all(torch.equal(p, parent_before[n]) for n, p in ctx.parent.named_parameters())


@pytest.mark.parametrize("name, groups", [("ligo", {"depth", "width"}), ("ligo:fpi", {"depth", "width", "width_in"})])
@pytest.mark.parametrize("family", FAMILIES)
def test_operator_steps_lower_the_loss_and_are_logged(family, name, groups):
    method, _, phase = start(tiny_context(family), name, operator_steps="20")
    losses = fit(phase, random_batch(family, torch.Generator().manual_seed(0)), steps=20)
    assert losses[-1] < 0.95 * losses[0]  # one fixed batch: ligo ~0.9x, ligo:fpi ~0.6-0.75x (its own A fits faster)
    log = method.operator_log
    assert (log["operator_loss_first"], log["operator_loss_last"]) == (losses[0], losses[-1])
    change = phase.model.relative_change()
    assert set(change) == groups and all(value > 0 for value in change.values())


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_materialised_model_is_the_operator_model_and_a_valid_checkpoint(family, name, tmp_path):
    ctx = tiny_context(family)
    method, phases, operator_phase = start(ctx, name)
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
    _, phases, phase = start(ctx, operator_steps="10")
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
    _, phases, phase = start(ctx, depth_noise="0")
    selection = phase.model.width["hidden"].detach().clone()
    grown = next(phases).model
    small, large = ctx.pair.small, ctx.pair.large
    for layer in range(large.layers):
        for module_type in ("q", "k", "v", "fc1"):
            rows = small.ffn if module_type == "fc1" else small.hidden
            parent_weight = _block(ctx.parent, layer % small.layers, module_type)
            torch.testing.assert_close(_block(grown, layer, module_type)[:rows, :small.hidden], parent_weight)
    embedding = grown.get_input_embeddings().weight
    parent_embedding = ctx.parent.get_input_embeddings().weight
    torch.testing.assert_close(embedding[:, :small.hidden], parent_embedding)
    # each new channel is its row of S applied to the parent's channels (an average of them)
    torch.testing.assert_close(embedding[:, small.hidden:], parent_embedding @ selection.T)


def test_ligo_init_is_the_official_recipe():
    """stackbert_noisy depth (rows sum to 1, argmax l mod L1, every entry > 0) and `rand` width (each new
    row of every S sums to 1 with every entry > 0, so no one-hot); the input side is B itself."""
    ctx = tiny_context("bert")
    method, _, phase = start(ctx)
    operator, small, large = phase.model, ctx.pair.small, ctx.pair.large
    assert operator.depth and operator.width and not operator.width_in
    for coefficients in operator.depth.values():
        torch.testing.assert_close(coefficients.sum(dim=1), torch.ones(large.layers))
        assert torch.equal(coefficients.argmax(dim=1), torch.arange(large.layers) % small.layers)
        assert coefficients.min() > 0  # every source block is mixed in a little
    for selection in operator.width.values():
        torch.testing.assert_close(selection.sum(dim=1), torch.ones(selection.shape[0]))
        assert selection.min() > 0
    assert {k: method.operator_log[k] for k in ("depth_init", "width_init", "input_side")} == \
        {"depth_init": "stackbert_noisy", "width_init": "rand", "input_side": "tied [I; S] (unnormalised)"}
    assert "width_noise" not in method.operator_log
    other = LigoOperator(ctx.pair, ctx.parent, ctx.build_large(), seed=1, layer_map=[0, 1, 0, 1], depth_noise=0.03)
    assert not torch.equal(other.width["hidden"], operator.width["hidden"])


def _stackbert_model(ctx: GrowthContext) -> PreTrainedModel:
    return next(make_method("stackbert").phases(ctx)).model


@pytest.mark.parametrize("family", FAMILIES)
def test_fpi_step_zero_is_stackberts_grown_model(family):
    """ligo:fpi's operator forward and its materialised model compute stackbert's grown model."""
    ctx = tiny_context(family)
    method, phases, phase = start(ctx, "ligo:fpi")
    reference = _stackbert_model(ctx).eval()
    batch = random_batch(family, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = scored_logits(reference, batch)
        operator_logits, _ = phase.model.eval()(scored_logits, batch)
        grown = next(phases).model.eval()
        grown_logits, _ = scored_logits(grown, batch)
    assert (operator_logits - expected).abs().max() < 1e-5
    assert (grown_logits - expected).abs().max() < 1e-5
    assert is_tied(grown)
    log = method.operator_log
    assert (log["depth_init"], log["width_init"], log["input_side"]) == \
        ("stack", "split-selection", "own operator, split shares")
    assert (log["alpha"], log["width_seed"]) == \
        (StackBERT.Settings.alpha, ctx.seed + StackBERT.Settings.width_seed_offset)


def test_fpi_init_is_one_hot_selection_own_input_operators_and_plain_stacking():
    ctx = tiny_context("bert")
    _, _, phase = start(ctx, "ligo:fpi")
    operator, small, large = phase.model, ctx.pair.small, ctx.pair.large
    for coefficients in operator.depth.values():
        assert torch.equal(coefficients, torch.eye(small.layers)[stack_layers(small.layers, large.layers)])
    for selection in operator.width.values():
        assert torch.equal(selection.sum(dim=1), torch.ones(selection.shape[0]))
        assert torch.equal(selection.max(dim=1).values, torch.ones(selection.shape[0]))  # one-hot rows
    assert set(operator.width_in) == {"hidden"} | {f"{space}{l}" for space in ("v", "ffn") for l in range(large.layers)}
    for key, reader in operator.width_in.items():
        out_op = torch.cat([torch.eye(reader.shape[1]), operator.width[key]])
        torch.testing.assert_close(reader.T @ out_op, torch.eye(reader.shape[1]))  # Aᵀ·B = I
    for layer in range(large.layers):  # one whole-head selection for Q, K and V, three parameters
        q, k, v = (operator.width[f"{space}{layer}"] for space in "qkv")
        assert torch.equal(q, k) and torch.equal(q, v) and q is not k and k is not v


@pytest.mark.parametrize("small, large", [
    (Size("x", "gpt2", 2, 64, 2, 256), Size("y", "gpt2", 3, 96, 3, 384)),
    (Size("x", "bert", 2, 64, 2, 256), Size("y", "bert", 3, 96, 3, 384)),
], ids=["gpt2-3-of-2-uneven-width", "bert-3-of-2-uneven-width"])
def test_fpi_follows_surgerys_layer_map_and_uneven_split(small, large):
    """L2 = 3 from L1 = 2: stacking's map [0, 1, 1], not l mod L1; 64 -> 96 duplicates only half the units."""
    ctx = context_for(small, large)
    _, _, phase = start(ctx, "ligo:fpi")
    assert phase.settings["layer_map"] == stack_layers(2, 3) == [0, 1, 1]
    batch = random_batch(small.family, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = scored_logits(_stackbert_model(ctx).eval(), batch)
        operator_logits, _ = phase.model.eval()(scored_logits, batch)
    assert (operator_logits - expected).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
def test_zero_operator_steps_yield_only_the_initialised_model(name):
    ctx = tiny_context("bert")
    method = make_method(name, {"operator_steps": "0"})  # the default warmup is unused then
    phases = list(method.phases(ctx))
    assert [phase.name for phase in phases] == ["train"]
    train_phase = phases[0]
    assert train_phase.steps is None and train_phase.share is None and not train_phase.fits_init
    assert train_phase.settings["operator_steps"] == 0 and "depth_init" in train_phase.settings
    _, _, operator_phase = start(ctx, name)
    expected = operator_phase.model.materialise() if name == "ligo" else _stackbert_model(ctx)
    for (n, p), (_, q) in zip(train_phase.model.named_parameters(), expected.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
@pytest.mark.parametrize("settings", [
    {"operator_steps": "-2"}, {"operator_warmup_steps": "-1"}, {"operator_lr": "0"}, {"operator_lr": "nan"},
])
def test_bad_operator_settings_are_refused(name, settings):
    with pytest.raises(BenchError, match="operator_steps >= 0"):
        next(make_method(name, settings).phases(tiny_context("bert")))


def test_pair_with_nothing_to_learn_is_refused():
    ctx = context_for(Size("x", "bert", 2, 64, 2, 256), Size("y", "bert", 2, 64, 4, 256))
    with pytest.raises(BenchError, match="nothing to learn"):
        start(ctx)


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
def test_fvcore_can_trace_the_operator_phase(name):
    """The flops collector's second count traces the phase's loss, where functional_call refuses to run."""
    ctx = tiny_context("gpt2")
    _, _, phase = start(ctx, name)
    batch = random_batch("gpt2", torch.Generator().manual_seed(0))
    scratch = Phase("train", ctx.build_large())
    operator_forward = fvcore_step(phase, batch).rows[0]["forward_flops"]
    assert operator_forward > fvcore_step(scratch, batch).rows[0]["forward_flops"]  # plus building the weights


class _UntiedContext(GrowthContext):
    def build_large(self) -> PreTrainedModel:
        model = super().build_large()
        model.config.tie_word_embeddings = False
        untied = type(model)(model.config)
        untied.load_state_dict(model.state_dict())
        return untied


@pytest.mark.parametrize("family", FAMILIES)
def test_fpi_step_zero_is_stackberts_grown_model_with_an_untied_head(family):
    """Untied, the head's LayerNorm produces the stream (B) and the decoder reads it through A."""
    base = tiny_context(family)
    ctx = _UntiedContext(base.pair, base.parent, VOCAB, SEQ, base.pad_token_id, base.seed)
    _, _, phase = start(ctx, "ligo:fpi")
    reference = _stackbert_model(ctx).eval()
    assert not is_tied(reference) and not phase.model.tied
    batch = random_batch(family, torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = phase.model.eval()(scored_logits, batch)[0] - scored_logits(reference, batch)[0]
    assert difference.abs().max() < 1e-5


def test_operator_steps_default_to_the_pairs_and_warmup_is_capped_at_them():
    assert default_operator_steps(parse_pair("bert-small:bert-base")) == PAPER_OPERATOR_STEPS == 100
    assert default_operator_steps(parse_pair("bert-nano:bert-micro")) == CPU_OPERATOR_STEPS
    _, _, phase = start(tiny_context("bert"), operator_steps="3")
    assert phase.steps == 3 + 1 and phase.warmup_steps == 3 and phase.settings["operator_warmup_steps"] == 3


# The end check: the operator phase never ends worse than it started.

HUGE_LR = "0.5"  # AdamW moves every operator entry by ~0.5 a step: the operator's end is far worse than its start


def _loss(model, batch) -> float:
    with torch.no_grad():
        return float(lm_loss(model, batch))


@pytest.mark.parametrize("lr, kept", [(HUGE_LR, "start"), (None, "end")])
@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_end_check_keeps_the_lower_of_the_end_and_the_start(family, name, lr, kept):
    """Every step (the check too) on one batch: the materialised model's loss is the lower of the end's and the
    start's, never above the start's; a kept start is the initialisation's grown model exactly."""
    ctx = tiny_context(family)
    method, phases, phase = start(ctx, name, **({"operator_lr": lr} if lr else {}))
    operator, batch = phase.model, random_batch(family, torch.Generator().manual_seed(0))
    initial = state(operator.runner.model)  # the start: LARGE's own weights until materialised
    start_loss = _loss(operator.runner.model, batch)
    losses = fit(phase, batch, steps=phase.steps)
    assert losses[0] == pytest.approx(start_loss, abs=1e-5)
    with torch.no_grad():
        end_loss = float(operator(lm_loss, batch))
    assert (end_loss > start_loss) is (kept == "start")  # the lr alone decides which way plain AdamW ends
    log = method.operator_log
    assert (log["operator_check_loss_end"], log["operator_check_loss_start"]) == pytest.approx((end_loss, start_loss))
    assert operator.keeps_end() is (kept == "end") and (operator.verdict.item() < 0) is (kept == "start")
    assert operator.kept(lm_loss, batch).item() == pytest.approx(min(start_loss, end_loss), abs=1e-6)

    grown = next(phases).model
    assert log["operator_kept"] == kept
    assert _loss(grown, batch) == pytest.approx(min(start_loss, end_loss), abs=1e-5) and \
        _loss(grown, batch) <= start_loss + 1e-6
    if kept == "start":
        assert all(torch.equal(p, initial[n]) for n, p in grown.named_parameters())
        if name == "ligo:fpi":  # stacking's start, exactly
            reference = dict(_stackbert_model(ctx).named_parameters())
            for n, p in grown.named_parameters():
                torch.testing.assert_close(p, reference[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
def test_end_check_moves_no_operator_parameter_and_is_charged_its_two_forwards(name):
    ctx = tiny_context("bert")
    _, _, phase = start(ctx, name)
    operator, batch = phase.model, random_batch("bert", torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in operator.operator_named_parameters()}
    check = phase.steps - 1
    phase.forward_backward(batch, check, 0.0)
    assert all(p.grad is None for _, p in operator.operator_named_parameters())  # AdamW leaves them as they are
    assert operator.verdict.grad is not None
    phase.zero_grad()
    with torch.no_grad(), FlopCounterMode(display=False) as forwards:
        operator(lm_loss, batch)
        operator.start(lm_loss, batch)
    charged = count_executed_step(phase, batch, check)
    assert charged == forwards.get_total_flops() > 0
    assert charged < count_executed_step(phase, batch, 0)  # a fitting step also runs the backward
    assert all(torch.equal(p, before[n]) for n, p in operator.operator_named_parameters())


@pytest.mark.parametrize("lr", [HUGE_LR, None])
@pytest.mark.parametrize("name", ["ligo", "ligo:fpi"])
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_through_the_loop_the_operator_phase_never_ends_above_its_start(family, name, lr):
    """The real loop (its AdamW, clipping, schedule, micro-batches with their weights), every step's batch and the
    validation batch the same: the operator phase's last validation loss and the grown model's are the kept one's,
    never above the start's, however far plain AdamW took the operator's end."""
    ctx = tiny_context(family)
    method = make_method(name, {"operator_lr": lr} if lr else {})
    batch = random_batch(family, torch.Generator().manual_seed(0))
    data = BatchSource(lambda step: batch, [batch], batch["input_ids"].numel(), causal=family == "gpt2")
    yielded = []

    def phases():
        for phase in method.phases(ctx):
            yielded.append(phase)
            yield phase

    result = train_phases(phases(), Budget("tokens", 1000 * data.tokens_per_step), data,
                          LoopConfig(micro_batch=2, progress_bar=False), CollectorSet([]), init_only=True)
    operator = yielded[0].model
    operator_curve = [row["val_loss"] for row in result.curve if row["phase"] == "operator"]
    with torch.no_grad():
        start_loss, end_loss = operator_curve[0], float(operator(lm_loss, batch))
    assert result.phases[0]["steps"] == CPU_OPERATOR_STEPS + 1
    assert (end_loss > start_loss) is (lr == HUGE_LR)
    kept = min(start_loss, end_loss)
    assert operator_curve[-1] == pytest.approx(kept, abs=1e-5)
    assert result.final_val_loss == pytest.approx(kept, abs=1e-5) and result.final_val_loss <= start_loss + 1e-6
    log = method.operator_log
    assert log["operator_kept"] == ("start" if lr == HUGE_LR else "end")
    # the check scored this end (it moved no operator parameter), on the trained step's micro-batches only (not the
    # FLOP count's run of the check at the start)
    assert (log["operator_check_loss_end"], log["operator_check_loss_start"]) == \
        pytest.approx((end_loss, start_loss), abs=1e-5)
