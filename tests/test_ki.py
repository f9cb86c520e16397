"""KI: the inheritance schedule, the loss it mixes, a teacher that never changes and is charged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_contracts import random_batch, state, tiny_context
from torch.utils.flop_counter import FlopCounterMode

from bench.methods import make_method
from bench.methods.ki import inheritance_rate
from bench.objective import lm_loss, scored_logits
from bench.phases import Phase

FAMILIES = ["bert", "roberta", "gpt2"]


def ki_phase(family: str, **settings: str) -> Phase:
    phase = next(make_method("ki", settings).phases(tiny_context(family)))
    phase.prepare()
    return phase


def executed_flops(phase: Phase, batch: dict[str, torch.Tensor], progress: float) -> int:
    with FlopCounterMode(display=False) as counter:
        phase.forward_backward(batch, 0, progress)
    phase.zero_grad()
    return counter.get_total_flops()


def test_inheritance_rate_falls_from_one_to_zero_at_the_distil_fraction():
    assert inheritance_rate(0.0, 0.35) == 1.0
    assert inheritance_rate(0.175, 0.35) == pytest.approx(0.5)
    assert inheritance_rate(0.35, 0.35) == 0.0
    assert inheritance_rate(0.9, 0.35) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_mixes_cross_entropy_and_tempered_kl_on_the_scored_positions(family):
    phase = ki_phase(family)
    student, (teacher,) = phase.model, phase.extra_forward
    batch = random_batch(family, torch.Generator().manual_seed(0))
    with torch.no_grad():
        student_logits, _ = scored_logits(student, batch)
        teacher_logits, _ = scored_logits(teacher, batch)
        scored = (batch["labels"] != -100).sum() if family != "gpt2" else batch["labels"][:, 1:].numel()
        assert student_logits.shape[0] == scored
        p_teacher = F.softmax(teacher_logits / 2.0, dim=-1)
        log_ratio = F.log_softmax(teacher_logits / 2.0, dim=-1) - F.log_softmax(student_logits / 2.0, dim=-1)
        kl = 4.0 * (p_teacher * log_ratio).sum(dim=-1).mean()
        cross_entropy = lm_loss(student, batch)
        assert abs(cross_entropy - kl) > 1.0  # so that every mix below is told apart
        for progress, alpha in [(0.0, 1.0), (0.175, 0.5), (0.35, 0.0), (0.8, 0.0)]:
            expected = (1 - alpha) * cross_entropy + alpha * kl
            assert phase.loss(batch, 0, progress) == pytest.approx(expected.item(), rel=1e-5), progress


def test_distil_fraction_and_temperature_are_settings_and_recorded():
    phase = ki_phase("bert", distil_fraction="0.5", temperature="1.0")
    assert phase.settings["distil_fraction"] == 0.5 and phase.settings["temperature"] == 1.0
    batch = random_batch("bert", torch.Generator().manual_seed(0))
    with torch.no_grad():  # at progress 0.4 the teacher still has weight 0.2 with fraction 0.5
        assert phase.loss(batch, 0, 0.4) != pytest.approx(lm_loss(phase.model, batch).item(), rel=1e-4)
    assert ki_phase("bert").settings["distil_fraction"] == 0.35


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_never_changes_while_the_student_trains(family):
    ctx = tiny_context(family)
    parent_before = state(ctx.parent)
    phase = next(make_method("ki").phases(ctx))
    phase.prepare()
    assert phase.extra_forward == [ctx.parent] and not ctx.parent.training
    assert {id(p) for p in phase.trainable} == {id(p) for p in phase.model.parameters()}
    student_before = state(phase.model)
    optimizer = torch.optim.AdamW(phase.trainable, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step, progress in enumerate([0.0, 0.1, 0.2, 0.3]):
        phase.forward_backward(random_batch(family, generator), step, progress)
        assert all(p.grad is None for p in ctx.parent.parameters())
        optimizer.step()
        phase.zero_grad()
    assert all(torch.equal(p, parent_before[n]) for n, p in ctx.parent.named_parameters())
    assert not all(torch.equal(p, student_before[n]) for n, p in phase.model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forward_is_in_the_executed_flops_while_it_teaches(family):
    """A distil step costs what a scratch step of the same LARGE costs plus one teacher forward;
    the phase after it (alpha is 0 there) runs no teacher and keeps the student's optimizer."""
    ctx = tiny_context(family)
    batch = random_batch(family, torch.Generator().manual_seed(0))
    scratch = Phase("train", ctx.build_large())
    scratch.prepare()
    phases = make_method("ki").phases(ctx)
    ki = next(phases)
    ki.prepare()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        scored_logits(ctx.parent, batch)
    teacher_forward = counter.get_total_flops()
    assert teacher_forward > 0
    scratch_flops = executed_flops(scratch, batch, 0.0)
    assert executed_flops(ki, batch, 0.0) == scratch_flops + teacher_forward
    after = next(phases)
    assert (ki.share, after.share, after.optimizer, after.extra_forward) == (0.35, None, "carry", [])
    assert after.model is ki.model
    after.prepare()
    assert executed_flops(after, batch, 0.5) == scratch_flops
