"""The loop on a tiny model with synthetic batches: budget, schedule, cadence, data order."""

import math
import time

import pytest
import torch

from bench.collectors import CollectorSet, RunInfo
from bench.collectors.clock import ClockCollector
from bench.errors import BenchError
from bench.objective import lm_loss
from bench.phases import Phase
from bench.sizes import get_size
from bench.train import BatchSource, Budget, LoopConfig, OptimConfig, train_phases

VOCAB, SEQ, BATCH = 200, 16, 4


def synthetic_batch(step: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = torch.where(torch.rand(BATCH, SEQ, generator=generator) < 0.3, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels}


def source(seed: int = 0) -> BatchSource:
    validation = [synthetic_batch(10_000 + i) for i in range(2)]
    return BatchSource(lambda step: synthetic_batch(step, seed), validation, BATCH * SEQ)


def model(name="bert-nano", seed=0):
    return get_size(name).build(VOCAB, SEQ, seed)


def run(phases, budget, seed=0, **config):
    return train_phases(iter(phases), budget, source(seed), LoopConfig(progress_bar=False, **config), CollectorSet([]))


def test_schedule_warms_up_then_ends_at_zero_at_the_budget():
    optim = OptimConfig(lr=1e-3, warmup_fraction=0.1)
    assert optim.lr_at(0.0) == 0.0
    assert optim.lr_at(0.1) == pytest.approx(1e-3)
    assert optim.lr_at(0.55) == pytest.approx(5e-4)
    assert optim.lr_at(1.0) == 0.0


def test_run_spends_the_budget_to_within_one_step_and_charges_every_step():
    result = run([Phase("train", model())], Budget("tokens", 30 * BATCH * SEQ))
    (row,) = result.phases
    assert row["steps"] == 30
    assert result.curve[-1]["tokens"] == 30 * BATCH * SEQ
    flops_per_step = row["flops_executed"] / row["steps"]
    assert flops_per_step > 0
    assert result.curve[-1]["flops"] == pytest.approx(row["flops_executed"])


def test_flops_budget_buys_more_steps_of_a_cheaper_phase():
    big = run([Phase("train", model("bert-micro"))], Budget("flops", 1e9))
    small = run([Phase("train", model("bert-nano"))], Budget("flops", 1e9))
    assert small.phases[0]["steps"] > big.phases[0]["steps"]
    for result in (big, small):
        step_cost = result.phases[0]["flops_executed"] / result.phases[0]["steps"]
        assert abs(result.curve[-1]["flops"] - 1e9) <= step_cost / 2 + 1


def test_shares_split_the_budget_and_the_last_phase_takes_the_rest():
    first, second = model(), model(seed=1)
    result = run([Phase("a", first, share=0.25), Phase("b", second)], Budget("tokens", 40 * BATCH * SEQ))
    assert [row["steps"] for row in result.phases] == [10, 30]
    assert result.curve[0]["phase"] == "a"


def test_eval_cadence_is_the_same_grid_for_every_method():
    budget = Budget("tokens", 40 * BATCH * SEQ)
    one = run([Phase("train", model())], budget, eval_points=4)
    two = run([Phase("a", model(), share=0.5), Phase("b", model(seed=1))], budget, eval_points=4)
    cadence = [row["tokens"] for row in one.curve]
    assert cadence == [0, 10 * BATCH * SEQ, 20 * BATCH * SEQ, 30 * BATCH * SEQ, 40 * BATCH * SEQ]
    assert set(cadence) <= {row["tokens"] for row in two.curve}  # plus a point at the start of phase b


def test_every_method_sees_the_same_batches_in_the_same_order():
    seen: dict[str, list[bytes]] = {"one": [], "two": []}

    def recording(name, net):
        def loss(batch, step, progress):
            seen[name].append(batch["input_ids"].numpy().tobytes())
            return lm_loss(net, batch)
        return loss

    a, b, c = model(), model("bert-micro"), model(seed=2)
    budget = Budget("tokens", 12 * BATCH * SEQ)
    run([Phase("train", a, loss=recording("one", a))], budget)
    run([Phase("x", b, share=0.5, loss=recording("two", b)), Phase("y", c, loss=recording("two", c))], budget)
    # each phase's first call is its one-step FLOP count, made on the batch of the step it starts at
    one, two = seen["one"][1:], seen["two"][1:7] + seen["two"][8:]
    assert len(one) == 12 and one == two
    assert seen["two"][7] == one[6]


def test_same_seed_gives_the_same_losses_on_cpu():
    losses = [[row["val_loss"] for row in run([Phase("train", model())], Budget("tokens", 8 * BATCH * SEQ)).curve]
              for _ in range(2)]
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]


def test_a_fixed_step_phase_larger_than_the_budget_is_a_clear_error():
    with pytest.raises(BenchError, match="too small"):
        run([Phase("operator", model(), steps=50), Phase("train", model())], Budget("tokens", 10 * BATCH * SEQ))


def test_a_share_that_buys_no_step_is_a_clear_error():
    with pytest.raises(BenchError, match="too small"):
        run([Phase("a", model(), share=0.01), Phase("b", model())], Budget("tokens", 10 * BATCH * SEQ))


def test_a_nan_loss_ends_the_run_as_diverged():
    net = model()

    def exploding(batch, step, progress):
        return lm_loss(net, batch) * (math.nan if step == 3 else 1.0)

    result = run([Phase("train", net, loss=exploding)], Budget("tokens", 10 * BATCH * SEQ))
    assert result.diverged and "nan" in result.diverged


def test_phase_rows_say_which_phases_are_plain_large_training():
    large = model("bert-micro")
    teacher = model("bert-nano")
    first_layer = list(large.bert.encoder.layer[0].parameters())
    phases = [
        Phase("partial", large, trainable=first_layer, share=0.2),
        Phase("taught", large, share=0.2, extra_forward=[teacher],
              loss=lambda batch, step, progress: lm_loss(large, batch) + 0 * lm_loss(teacher, batch)),
        Phase("shallow", model("bert-nano"), share=0.2),
        Phase("train", large),
    ]
    rows = {row["phase"]: row for row in run(phases, Budget("tokens", 20 * BATCH * SEQ)).phases}
    assert {name: row["plain_large"] for name, row in rows.items()} == {
        "partial": False, "taught": False, "shallow": False, "train": True}
    assert rows["taught"]["extra_forwards"] == 1 and rows["train"]["extra_forwards"] == 0
    assert rows["partial"]["trainable_parameters"] == sum(p.numel() for p in first_layer)
    assert rows["train"]["trainable_parameters"] == rows["train"]["parameters"] == sum(
        p.numel() for p in large.parameters())


def test_building_a_phase_is_timed_as_that_phase_s_overhead():
    def phases():
        time.sleep(0.3)  # growth surgery
        yield Phase("train", model())

    collectors = CollectorSet([ClockCollector(RunInfo(torch.device("cpu"), None))])
    result = train_phases(phases(), Budget("tokens", 4 * BATCH * SEQ), source(), LoopConfig(progress_bar=False),
                          collectors)
    assert result.phases[0]["overhead_s"] >= 0.3
