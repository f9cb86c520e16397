"""How grown models train: the phase's schedule (warmup, peak), AdamW state carried across stages, the validation
loss at phase boundaries, and each method's settings for them (docs/methods.md)."""

import copy
import math

import pytest
import torch
from test_contracts import random_batch, run_phases, tiny_context
from test_train import BATCH, SEQ, model, run, synthetic_batch

from bench.collectors.flops import analytic_step_flops, count_executed_step, fvcore_step
from bench.errors import BenchError
from bench.methods import make_method
from bench.phases import Phase, Schedule
from bench.train import Budget, OptimConfig, _optimizer_for, early_steps


def test_a_schedule_without_warmup_starts_at_its_peak_and_ends_at_zero_at_the_budget():
    optim = OptimConfig(lr=1e-3, warmup_fraction=0.1)
    assert optim.lr_at(0.0, Schedule(warmup=0.0)) == pytest.approx(1e-3)
    assert optim.lr_at(0.5, Schedule(warmup=0.0)) == pytest.approx(5e-4)
    assert optim.lr_at(0.05, Schedule()) == pytest.approx(optim.lr_at(0.05)) == pytest.approx(5e-4)
    assert optim.lr_at(0.1, Schedule(lr_scale=0.25)) == pytest.approx(2.5e-4)
    assert optim.lr_at(1.0, Schedule(warmup=0.0, lr_scale=2.0)) == 0.0


@pytest.mark.parametrize("schedule", [{"warmup": 1.0}, {"warmup": -0.1}, {"lr_scale": 0.0}])
def test_a_schedule_out_of_range_is_refused(schedule):
    with pytest.raises(ValueError):
        Schedule(**schedule)


@pytest.mark.parametrize(("schedule", "moves"), [(Schedule(), False), (Schedule(warmup=0.0), True)])
def test_the_loop_trains_a_phase_on_its_schedule(schedule, moves):
    """The first step of a run is at progress 0: warming up, its lr is 0; without warmup it is the peak."""
    net = model()
    before = copy.deepcopy(net.state_dict())
    run([Phase("train", net, schedule=schedule)], Budget("tokens", BATCH * SEQ))
    changed = any(not torch.equal(before[name], value) for name, value in net.state_dict().items())
    assert changed is moves


def _trained_optimizer(phase: Phase) -> torch.optim.AdamW:
    optimizer = _optimizer_for(phase, None, OptimConfig(), torch.device("cpu"))
    phase.prepare()
    phase.forward_backward(synthetic_batch(0), 0, 0.0)
    optimizer.step()
    return optimizer


def test_carry_keeps_the_state_of_every_parameter_trained_before_and_again():
    net = model()
    first = Phase("first", net, trainable=list(net.bert.encoder.parameters()))
    optimizer = _trained_optimizer(first)
    second = Phase("second", net, optimizer="carry")
    carried = _optimizer_for(second, (first, optimizer), OptimConfig(), torch.device("cpu"))
    encoder = {id(p) for p in net.bert.encoder.parameters()}
    for parameter in second.trainable:
        if id(parameter) in encoder:
            state, before = carried.state[parameter], optimizer.state[parameter]
            assert torch.equal(state["exp_avg"], before["exp_avg"]) and state["exp_avg"] is not before["exp_avg"]
            assert float(state["step"]) == 1
        else:
            assert parameter not in carried.state  # it did not train before: fresh
    fresh = _optimizer_for(Phase("second", net), (first, optimizer), OptimConfig(), torch.device("cpu"))
    assert not fresh.state


def test_carry_across_a_surgery_maps_parameters_by_name_shape_and_value():
    net = model()
    first = Phase("first", net)
    optimizer = _trained_optimizer(first)
    grown = copy.deepcopy(net)  # a new model, as a surgery builds: every tensor new
    with torch.no_grad():
        grown.bert.encoder.layer[1].output.dense.weight.add_(1.0)  # changed by the surgery: not one to one
    second = Phase("second", grown, optimizer="carry")
    carried = _optimizer_for(second, (first, optimizer), OptimConfig(), torch.device("cpu"))
    names = {id(p): name for name, p in grown.named_parameters()}
    kept = {names[id(p)] for p in carried.state}
    assert "bert.encoder.layer.1.output.dense.weight" not in kept
    assert kept == {name for name, _ in net.named_parameters()} - {"bert.encoder.layer.1.output.dense.weight"}


def test_phase_rows_carry_the_validation_loss_at_the_start_and_after_the_first_percent():
    phases = [Phase("a", model(), share=0.5), Phase("b", model(seed=1))]
    result = run(phases, Budget("tokens", 300 * BATCH * SEQ), eval_points=4)
    for row in result.phases:
        start = next(point for point in result.curve if point["phase"] == row["phase"])
        assert row["val_loss_start"] == start["val_loss"]
        assert row["steps_1pct"] == early_steps(row["steps"]) == 2
        assert math.isfinite(row["val_loss_after_1pct"]) and row["val_loss_after_1pct"] != row["val_loss_start"]
    assert len(result.curve) == 4 + 2  # the cadence, plus each phase's start: the 1% points are not curve rows


@pytest.mark.parametrize(("method", "setting", "value"), [
    ("stackbert", "schedule", "warm"), ("ligo", "lr_scale", "0"), ("mslt", "optimizer", "keep"),
    ("bert2bert", "lr_scale", "-1"), ("ki", "optimizer", "reuse"), ("stackbert:progressive", "optimizer", "x"),
])
def test_a_bad_training_setting_is_refused_naming_the_method(method, setting, value):
    with pytest.raises(BenchError, match=f"{method}.{setting}"):
        make_method(method, {setting: value})


@pytest.mark.parametrize(("method", "warmup"), [("stackbert", 0.0), ("ligo", 0.0), ("ligo:fpi", 0.0)])
def test_a_grown_model_does_not_warm_up_again_unless_told(method, warmup):
    ctx = tiny_context("bert")
    (*_, grown) = run_phases(method, ctx)
    assert grown.schedule == Schedule(warmup=warmup)
    (*_, rewarmed) = make_method(method, {"schedule": "rewarm", "operator_steps": "0"} if "ligo" in method
                                 else {"schedule": "rewarm"}).phases(tiny_context("bert"))
    assert rewarmed.schedule == Schedule()


@pytest.mark.parametrize(("embeddings", "word_trains", "below_new_layers"), [
    ("output", True, False), ("frozen", False, False), ("full", True, True)])
def test_mslt_growth_stages_train_the_tied_head_as_told(embeddings, word_trains, below_new_layers):
    """"output" trains the tied matrix as the LM head only: no gradient reaches the old layers' inputs."""
    ctx = tiny_context("bert")
    growth, *_, joint = make_method("mslt", {"embeddings": embeddings}).phases(ctx)
    word = growth.model.bert.embeddings.word_embeddings.weight
    assert any(p is word for p in growth.trainable) is word_trains
    assert growth.optimizer == joint.optimizer == "carry" and growth.schedule == Schedule(warmup=0.0)
    growth.prepare()
    reached = {}
    bottom = growth.model.bert.encoder.layer[0]
    def record(module, inputs, output):
        reached["input"] = inputs[0]

    handle = bottom.register_forward_hook(record)
    growth.forward_backward(random_batch("bert", torch.Generator().manual_seed(0)), 0, 0.0)
    handle.remove()
    assert reached["input"].requires_grad is below_new_layers
    if word_trains:
        assert word.grad is not None and word.grad.abs().sum() > 0
    batch = random_batch("bert", torch.Generator().manual_seed(1))
    executed = count_executed_step(growth, batch)
    assert analytic_step_flops(growth, batch) == pytest.approx(executed, rel=0.02)  # the books' audit allows 5%
    assert fvcore_step(growth, batch).training_flops == pytest.approx(executed, rel=0.05)  # + LayerNorm
