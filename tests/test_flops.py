import csv

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.collectors import RunInfo
from bench.collectors.flops import (
    FlopsCollector,
    analytic_lm_flops,
    analytic_step_flops,
    count_executed_step,
    fvcore_forward,
    fvcore_step,
    paper_ligo_operator_step_flops,
    paper_step_flops,
)
from bench.objective import IGNORE, lm_loss, scored_logits
from bench.phases import Phase
from bench.sizes import get_size

VOCAB, BATCH, SEQ = 512, 4, 32


def make_batch(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = input_ids.clone()
    if family != "gpt2":
        labels[torch.rand(BATCH, SEQ, generator=generator) > 0.15] = IGNORE
    return {"input_ids": input_ids, "labels": labels}


def three_counts(phase: Phase, batch) -> tuple[int, int, int]:
    phase.prepare()
    return count_executed_step(phase, batch), fvcore_step(phase, batch).training_flops, analytic_step_flops(phase, batch)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_three_counts_agree_for_full_training(family):
    model = get_size(f"{family}-nano").build(VOCAB, SEQ, seed=0)
    executed, fvcore, analytic = three_counts(Phase("train", model), make_batch(family))
    assert fvcore == pytest.approx(executed, rel=0.05)
    assert analytic == pytest.approx(executed, rel=0.05)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_frozen_lower_layers_are_charged_less_and_counts_still_agree(family):
    model = get_size(f"{family}-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch(family)
    full, _, _ = three_counts(Phase("train", model), batch)
    layers = model.base_model.encoder.layer if family == "bert" else model.base_model.h
    head = model.cls.predictions.transform if family == "bert" else model.base_model.ln_f
    frozen_phase = Phase("growth", model, trainable=[*layers[-1].parameters(), *head.parameters()])
    executed, fvcore, analytic = three_counts(frozen_phase, batch)
    assert executed < 0.8 * full
    assert fvcore == pytest.approx(executed, rel=0.05)
    assert analytic == pytest.approx(executed, rel=0.05)


def test_attention_flops_are_counted_on_cpu():
    query, key, value = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(query, key, value).sum().backward()
    forward = 2 * (2 * 2 * 4 * 16 * 16 * 8)  # QK^T and AV
    assert counter.get_total_flops() == forward + 5 * forward // 2  # backward recomputes the scores


def test_counting_changes_no_weight_gradient_or_random_stream():
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch("bert")
    phase = Phase("train", model)
    phase.prepare()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.manual_seed(123)
    count_executed_step(phase, batch)
    fvcore_step(phase, batch)
    after_count = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_count, torch.rand(3))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_extra_forward_models_are_charged_forward_only():
    student = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    teacher = get_size("bert-nano").build(VOCAB, SEQ, seed=1)
    batch = make_batch("bert")

    def distil(batch, step, progress):
        with torch.no_grad():
            teacher_logits, _ = scored_logits(teacher, batch)
        student_logits, targets = scored_logits(student, batch)
        return F.cross_entropy(student_logits, targets) + F.mse_loss(student_logits, teacher_logits)

    alone, _, _ = three_counts(Phase("train", student), batch)
    executed, fvcore, analytic = three_counts(Phase("ki", student, loss=distil, extra_forward=[teacher]), batch)
    teacher_forward = analytic_lm_flops(teacher, batch, forward_only=True)
    assert executed - alone == pytest.approx(teacher_forward, rel=0.01)
    assert fvcore == pytest.approx(executed, rel=0.05)
    assert analytic == pytest.approx(executed, rel=0.05)


def test_fvcore_forward_counts_attention_and_keeps_a_module_table():
    model = get_size("gpt2-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch("gpt2")
    total, table = fvcore_forward(model, batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        lm_loss(model, batch)
    assert total == pytest.approx(counter.get_total_flops(), rel=0.03)
    attention = table["transformer.h.0.attn"] - table["transformer.h.0.attn.c_attn"] - table["transformer.h.0.attn.c_proj"]
    assert attention == 4 * BATCH * SEQ * SEQ * model.config.hidden_size
    assert table["lm_head"] == 2 * BATCH * (SEQ - 1) * model.config.hidden_size * VOCAB


def test_paper_counter_reproduces_ligo_figures():
    base, small = get_size("bert-base").config(30522, 128), get_size("bert-small").config(30522, 128)
    assert paper_step_flops(base, 256, 128) == pytest.approx(1.507e13, rel=5e-4)
    assert paper_step_flops(small, 256, 128) == pytest.approx(4.98e12, rel=1e-3)
    assert 100 * paper_ligo_operator_step_flops(small, base, 256, 128) == pytest.approx(3.613e15, rel=5e-4)


def test_collector_reports_per_phase_counts_and_writes_the_module_table(tmp_path):
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch("bert")
    phase = Phase("growth-1", model)
    phase.prepare()
    collector = FlopsCollector(RunInfo(torch.device("cpu"), tmp_path))
    collector.start_phase(phase, batch)
    row = collector.end_phase(10, {})
    per_step = fvcore_step(phase, batch).training_flops
    assert row["flops_fvcore"] == 10 * per_step
    assert row["flops_analytic"] == 10 * analytic_step_flops(phase, batch)
    with open(tmp_path / "fvcore_growth-1.csv") as handle:
        rows = {r["module"]: r for r in csv.DictReader(handle)}
    assert int(rows["(phase)"]["training_flops"]) == per_step
    assert int(rows["model.cls.predictions.decoder"]["forward_flops"]) > 0


def test_collector_counts_each_variant_key_and_says_why_analytic_is_missing(tmp_path):
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch("bert")

    def loss(batch, step, progress):  # odd steps run the model twice
        return sum(lm_loss(model, batch) for _ in range(1 + step % 2))

    phase = Phase("stage-1", model, loss=loss, variant=lambda step: step % 2)
    phase.prepare()
    collector = FlopsCollector(RunInfo(torch.device("cpu"), tmp_path))
    collector.start_phase(phase, batch)
    row = collector.end_phase(3, {})
    single = fvcore_step(phase, batch, step=0).training_flops
    assert row["flops_fvcore"] == pytest.approx(4 * single, rel=0.01)  # steps 0 and 2 once, step 1 twice
    assert row["flops_analytic"] is None
    assert row["flops_analytic_note"].startswith("unavailable")


def test_a_phase_the_tracer_cannot_follow_gets_a_labelled_empty_fvcore_count(tmp_path):
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    batch = make_batch("bert")
    phase = Phase("odd", model, loss=lambda batch, step, progress: (lm_loss(model, batch), 1.0))
    phase.prepare()
    collector = FlopsCollector(RunInfo(torch.device("cpu"), tmp_path))
    collector.start_phase(phase, batch)
    row = collector.end_phase(5, {})
    assert row["flops_fvcore"] is None
    assert row["flops_fvcore_note"].startswith("unavailable")
    assert row["flops_analytic"] == 5 * analytic_step_flops(phase, batch)
