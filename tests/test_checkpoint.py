"""Mid-run checkpoints (bench/checkpoint.py), in process on tiny models: a run interrupted in any phase of any
method continues to the result of an uninterrupted one; writes are atomic; a bad checkpoint is warned about and
the run starts over; collectors' totals round-trip; and a plan's memory does not grow with the budget."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import checkpoint as checkpoint_module
from bench import train as train_module
from bench.checkpoint import LATEST, Checkpointing, Checkpoints
from bench.collectors import CollectorSet, RunInfo
from bench.collectors.clock import ClockCollector
from bench.collectors.energy import EnergyCollector
from bench.errors import BenchError
from bench.methods import GrowthContext, make_method
from bench.phases import Phase
from bench.records import RunDir
from bench.runner import one_run
from bench.sizes import get_size, parse_pair
from bench.train import MAX_PHASE_STEPS, BatchSource, Budget, Ledger, LoopConfig, StepCosts, train_phases

VOCAB, SEQ, BATCH = 200, 16, 4
PAIR = parse_pair("bert-nano:bert-micro")
BUDGET = Budget("tokens", 24 * BATCH * SEQ)
METHODS = {"scratch": None, "mslt": None, "ki": None, "bert2bert": {"stage1_share": "0.3"},
           "ligo": {"operator_steps": "6"}}


def synthetic_batch(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = torch.where(torch.rand(BATCH, SEQ, generator=generator) < 0.3, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels}


def source() -> BatchSource:
    return BatchSource(synthetic_batch, [synthetic_batch(10_000 + i) for i in range(2)], BATCH * SEQ)


@pytest.fixture(scope="module")
def parent():
    return PAIR.small.build(VOCAB, SEQ, 7)


class Interrupted(Exception):
    """Stands for a kill: raised in place of the optimizer step after `after` steps."""


def run(name: str, parent, setting: Checkpointing | None = None, interrupt_after: int | None = None,
        collectors: CollectorSet | None = None, monkeypatch=None):
    context = GrowthContext(PAIR, copy.deepcopy(parent), VOCAB, SEQ, 0, seed=0)
    phases = make_method(name, METHODS[name]).phases(context)
    if interrupt_after is not None:
        real, done = train_module.optimizer_step, [0]

        def step(*args, **kwargs):
            if done[0] == interrupt_after:
                raise Interrupted
            done[0] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(train_module, "optimizer_step", step)
    try:
        return train_phases(phases, BUDGET, source(), LoopConfig(progress_bar=False, eval_points=6),
                            collectors or CollectorSet([]), checkpoints=Checkpoints(setting, {"seed": 0}))
    finally:
        if interrupt_after is not None:
            monkeypatch.undo()


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_same_run(reference, resumed) -> None:
    for column in ("phase", "step", "train_loss", "val_loss", "flops"):
        assert all(same(a[column], b[column]) for a, b in zip(reference.curve, resumed.curve, strict=True)), column
    for column in ("phase", "steps", "flops_executed", "settings"):
        assert [row[column] for row in reference.phases] == [row[column] for row in resumed.phases], column
    for column in ("val_loss_start", "val_loss_after_1pct"):  # the boundary losses survive a checkpoint
        assert all(same(a[column], b[column]) for a, b in zip(reference.phases, resumed.phases, strict=True)), column
    weights, resumed_weights = reference.final_model.state_dict(), resumed.final_model.state_dict()
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[key], resumed_weights[key]) for key in weights)


def saved_meta(folder: Path) -> dict:
    return json.loads((folder / (folder / LATEST).read_text().strip() / "meta.json").read_text())


@pytest.fixture(scope="module")
def references(parent):
    return {name: run(name, parent) for name in METHODS}


# --------------------------------------------------------------------------- exact resume, every method


@pytest.mark.parametrize(("name", "every_seconds"), [(name, 1e9) for name in METHODS] + [("bert2bert", 0.0)],
                         ids=[*METHODS, "bert2bert-every-step"])
def test_a_run_interrupted_in_a_later_phase_resumes_to_the_uninterrupted_result(name, every_seconds, parent,
                                                                                references, tmp_path, monkeypatch):
    """Checkpoints at eval points only (1e9 s between them) or at every step boundary (0 s). Interrupted in the
    middle of the last phase, and one step into the second (its newest checkpoint: the first phase's end); the
    first phases' middles are tests/test_resume_kill.py's real kills."""
    reference = references[name]
    boundaries = [0]
    for row in reference.phases:
        boundaries.append(boundaries[-1] + row["steps"])
    points = {(boundaries[-2] + boundaries[-1]) // 2 + 1} | ({boundaries[1] + 1} if len(boundaries) > 2 else set())
    if every_seconds == 0.0:
        points.add(boundaries[1] // 2 + 1)
    for interrupt_after in sorted(points):
        folder = tmp_path / f"after-{interrupt_after}" / "checkpoint"
        setting = Checkpointing(folder, every_seconds)
        with pytest.raises(Interrupted):
            run(name, parent, setting, interrupt_after, monkeypatch=monkeypatch)
        meta = saved_meta(folder)
        assert meta["step"] <= interrupt_after
        if every_seconds == 0.0:
            assert meta["step"] == interrupt_after  # a checkpoint at every step boundary
        resumed = run(name, parent, Checkpointing(folder, every_seconds, resume=True))
        assert_same_run(reference, resumed)


def test_resuming_rebuilds_finished_phases_without_training_them(parent, references, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        run("mslt", parent, Checkpointing(folder), interrupt_after=references["mslt"].phases[0]["steps"] + 5,
            monkeypatch=monkeypatch)
    meta = saved_meta(folder)
    assert (meta["phase"], meta["phases"]) == ("joint", ["growth-1", "joint"])
    steps = []
    real = train_module.optimizer_step
    monkeypatch.setattr(train_module, "optimizer_step", lambda *a, **k: steps.append(1) or real(*a, **k))
    resumed = run("mslt", parent, Checkpointing(folder, resume=True))
    assert len(steps) == references["mslt"].curve[-1]["step"] - meta["step"]
    assert_same_run(references["mslt"], resumed)


# --------------------------------------------------------------------------- atomic writes, bad checkpoints


def test_an_interrupt_while_writing_leaves_the_previous_checkpoint(parent, references, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    real_save, calls = torch.save, [0]

    def save(obj, path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3 * 4 + 2:  # the fifth checkpoint (three files each), after its model file
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run("ki", parent, Checkpointing(folder, every_seconds=0.0))
    monkeypatch.undo()
    assert sorted(path.name for path in folder.iterdir()) == ["000004", LATEST]  # nothing half-written
    assert saved_meta(folder)["step"] == 4
    assert_same_run(references["ki"], run("ki", parent, Checkpointing(folder, resume=True)))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64\n"
                                                "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_failing_disk_stops_checkpoints_not_the_run(error, parent, references, tmp_path, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with caplog.at_level(logging.WARNING, logger="bench.checkpoint"):
        result = run("scratch", parent, Checkpointing(tmp_path / "checkpoint", every_seconds=0.0))
    assert_same_run(references["scratch"], result)
    (warning,) = [record.getMessage() for record in caplog.records if "without checkpoints" in record.getMessage()]
    assert "\n" not in warning


@pytest.mark.parametrize("damage", ["truncated", "other run", "missing file"])
def test_a_checkpoint_that_cannot_be_used_is_warned_about_and_the_run_starts_over(damage, parent, references, tmp_path,
                                                                                monkeypatch, caplog):
    folder = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        run("scratch", parent, Checkpointing(folder), interrupt_after=10, monkeypatch=monkeypatch)
    latest = folder / (folder / LATEST).read_text().strip()
    if damage == "truncated":
        data = (latest / "state.pt").read_bytes()
        (latest / "state.pt").write_bytes(data[: len(data) // 2])
    elif damage == "other run":
        meta = json.loads((latest / "meta.json").read_text())
        meta["identity"]["seed"] = 1
        (latest / "meta.json").write_text(json.dumps(meta))
    else:
        (latest / "phase-0.pt").unlink()
    steps = []
    real = train_module.optimizer_step
    monkeypatch.setattr(train_module, "optimizer_step", lambda *a, **k: steps.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="bench.checkpoint"):
        resumed = run("scratch", parent, Checkpointing(folder, resume=True))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the run starts over" in warnings[0] and "\n" not in warnings[0]
    assert len(steps) == references["scratch"].curve[-1]["step"]  # every step trained again
    assert_same_run(references["scratch"], resumed)


def test_without_resume_an_old_checkpoint_is_ignored(parent, references, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        run("scratch", parent, Checkpointing(folder), interrupt_after=10, monkeypatch=monkeypatch)
    assert_same_run(references["scratch"], run("scratch", parent, Checkpointing(folder, resume=False)))


def test_checkpoints_go_when_the_run_is_recorded_unless_kept(parent, tmp_path):
    for keep in (False, True):
        run_dir = RunDir(tmp_path / f"keep-{keep}")
        setting = Checkpointing(run_dir.path / "checkpoint", keep=keep)
        result = run("scratch", parent, setting)
        assert (setting.folder / LATEST).exists()
        result.checkpoint = setting
        one_run.record_run(run_dir, result, SimpleNamespace(tokenizer=None), method="scratch", seed=0)
        assert run_dir.is_done()
        assert setting.folder.exists() == keep


def test_a_checkpoint_holds_what_it_says(parent, references, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        run("ki", parent, Checkpointing(folder, every_seconds=0.0), interrupt_after=20, monkeypatch=monkeypatch)
    meta = saved_meta(folder)
    assert (meta["phase"], meta["phases"], meta["step"]) == ("train", ["distil", "train"], 20)
    latest = folder / (folder / LATEST).read_text().strip()
    assert sorted(path.name for path in latest.iterdir()) == ["meta.json", "optimizer.pt", "phase-0.pt", "phase-1.pt",
                                                              "state.pt"]
    for path in latest.glob("*.pt"):  # tensors and plain containers only
        torch.load(path, weights_only=True)
    state = torch.load(latest / "state.pt", weights_only=True)
    assert state["ledger"]["step"] == 20 and state["local_step"] == 20 - references["ki"].phases[0]["steps"]
    assert set(state["rng"]) >= {"torch", "python", "numpy"}


# --------------------------------------------------------------------------- collectors


def test_collectors_running_totals_round_trip(tmp_path):
    info = RunInfo(torch.device("cpu"), tmp_path)
    model = get_size("bert-nano").build(VOCAB, SEQ, 0)
    phase = Phase("train", model)
    phase.prepare()
    batch = synthetic_batch(0)
    first = CollectorSet([ClockCollector(info), EnergyCollector(info)])
    with first.window("overhead"):
        first.start_phase(phase, batch, 10)
    for kind in ("train", "eval", "train"):
        with first.window(kind):
            time.sleep(0.01)
    meters(first)  # codecarbon measures here only now and then: meters that work, the CPU's read 0.5 kWh
    first.collectors[1].components["cpu"].add("train", 0.5)
    state = first.state_dict()
    before = first.snapshot({"step": 6})

    second = CollectorSet([ClockCollector(info), EnergyCollector(info)])
    meters(second)  # the same meters in the next session
    second.start_phase(phase, batch, 10)
    second.load_state_dict(torch.load(_saved(state, tmp_path), weights_only=True))
    after = second.snapshot({"step": 6})
    for column, value in before.items():
        if column == "wall_s":
            assert after[column] == pytest.approx(value, abs=0.5)
        else:
            assert same(after[column], value), column
    with second.window("train"):
        time.sleep(0.01)
    second.collectors[1].components["cpu"].add("train", 0.25)
    row = second.end_phase(10, {})
    assert row["train_s"] > state[0]["clock"]["phase"]["train"] > 0  # the phase's seconds carried on
    # both sessions' kWh (plus whatever codecarbon measured during the test's own windows, where it can)
    assert 0.75 <= row["energy_cpu_kwh"] < 0.751 and second.snapshot({"step": 10})["energy_kwh"] >= 0.75
    first.close()
    second.close()


def meters(collectors: CollectorSet) -> None:
    for name, component in collectors.collectors[1].components.items():
        if name != "gpu":
            component.method, component.failed_this_phase = f"{name} meter (measured, test)", False


def _saved(state: dict, folder: Path) -> Path:
    path = folder / "collectors.pt"
    torch.save(state, path)
    return path


def test_a_collector_without_state_keeps_the_default(tmp_path):
    from bench.collectors import Collector

    class Counter(Collector):
        name = "counter"

    collectors = CollectorSet([Counter(RunInfo(torch.device("cpu"), tmp_path))])
    assert collectors.state_dict() == [{"counter": {}}]  # one process: one rank's totals
    collectors.load_state_dict([{"counter": {}}])


# --------------------------------------------------------------------------- bounded planning


def _old_step_count(units: float, target: float) -> int:
    """The loop's step count before plans became compact: one entry per step."""
    plan, spent = [], 0.0
    while True:
        if spent + units / 2 > target:
            return len(plan)
        plan.append(units)
        spent += units


def _costs(phase: Phase, budget: Budget, units: float, spent: float = 0.0) -> StepCosts:
    ledger = Ledger(budget, 20)
    ledger.spent = spent
    costs = StepCosts(phase, ledger, source(), LoopConfig(progress_bar=False))
    costs._step = lambda local_step: (units * 3, units)
    return costs


@pytest.mark.parametrize("units", [1.0, 3.0, 7.3e9, 1234567.0, 5.6e13, 0.1, 0.0463])
def test_plans_take_as_many_steps_as_before(units):
    """FLOPs and tokens (whole numbers) to the step, ties included; seconds (fractions: the old sum of
    step times rounded differently from steps x step time) except at an exact tie of half a step."""
    phase = Phase("train", torch.nn.Linear(2, 2))
    for steps in (1, 2, 7, 40, 301, 1200):
        for fraction in (0.0, 0.25, 0.4999999, 0.5, 0.5000001, 0.75):
            if fraction == 0.5 and not units.is_integer():
                continue
            target = (steps + fraction) * units
            expected = _old_step_count(units, target)
            if expected == 0:
                continue
            plan = _costs(phase, Budget("flops", target), units).plan()
            assert len(plan) == expected, (units, target)
            assert plan[len(plan) - 1] == (units * 3, units)


def test_a_huge_budget_is_refused_at_once_with_a_clear_message():
    phase = Phase("train", torch.nn.Linear(2, 2))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(BenchError, match="too large") as error:
        _costs(phase, Budget("flops", 1e12 * 5e9), 5e9).plan()
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 5e6
    assert "\n" not in str(error.value) and "1e+12 steps" in str(error.value)


def test_a_long_plan_takes_no_memory():
    phase = Phase("train", torch.nn.Linear(2, 2))
    tracemalloc.start()
    plan = _costs(phase, Budget("flops", (MAX_PHASE_STEPS - 1) * 2.0), 2.0).plan()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(plan) == MAX_PHASE_STEPS - 1 and peak < 1e6
    assert plan.units() == (MAX_PHASE_STEPS - 1) * 2.0


def test_a_huge_budget_for_a_phase_with_variants_is_refused_at_once():
    phase = Phase("stage-1", torch.nn.Linear(2, 2), share=0.5, variant=lambda step: step % 3)
    costs = _costs(phase, Budget("flops", 1e20), 1.0)
    costs._step = lambda local_step: (1.0 + local_step % 3, 1.0 + local_step % 3)
    started = time.perf_counter()
    with pytest.raises(BenchError, match="too large"):
        costs.plan()
    assert time.perf_counter() - started < 1.0


def test_a_variant_plan_charges_each_step_its_own_cost():
    phase = Phase("stage-1", torch.nn.Linear(2, 2), share=0.5, variant=lambda step: step % 3)
    costs = _costs(phase, Budget("flops", 40.0), 1.0)
    costs._step = lambda local_step: (1.0 + local_step % 3, 1.0 + local_step % 3)
    plan = costs.plan()
    # a step is taken while the units before it plus half its own stay within the share (20): 19 + 1 <= 20
    assert [units for _, units in plan] == [1.0, 2.0, 3.0] * 3 + [1.0, 2.0]
    assert plan.units() == 21.0 and plan.costs == {0: (1.0, 1.0), 1: (2.0, 2.0), 2: (3.0, 3.0)}


def test_the_loop_refuses_a_huge_budget_before_training(monkeypatch):
    steps = []
    monkeypatch.setattr(train_module, "optimizer_step", lambda *a, **k: steps.append(1))
    with pytest.raises(BenchError, match="too large"):
        train_phases(iter([Phase("train", get_size("bert-nano").build(VOCAB, SEQ, 0))]), Budget("tokens", 1e15),
                     source(), LoopConfig(progress_bar=False), CollectorSet([]))
    assert steps == []


def test_a_meter_that_failed_before_the_checkpoint_stays_unavailable(tmp_path):
    info = RunInfo(torch.device("cpu"), tmp_path)
    energy = EnergyCollector(info)
    energy.components["cpu"].fail(RuntimeError("the meter went away"))
    resumed = EnergyCollector(info)
    resumed.components["cpu"].method = "rapl (measured, test)"  # working again in the next session
    resumed.load_state_dict(energy.state_dict())
    assert resumed.components["cpu"].method == "unavailable: RuntimeError: the meter went away"
    assert resumed.end_phase(1, {})["energy_cpu_kwh"] is None  # its totals miss what it did not measure
    energy.close()
    resumed.close()
