"""The CI gate: baselines written from synthetic run directories; runs that regress, improve (which fails too
for hardware-independent quantities) or moved machine; and the books audited on every checked run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from test_report import SCRATCH_FLOPS_PER_STEP, SYNTHETIC_CPU, curve_loss, default_specs, make_run_dir

from bench.check import BOOKS, IMPROVED_FAILS, QUANTITIES, audit, check, format_audit, write_baseline
from bench.cli import main
from bench.errors import BenchError

FLOORS = {quantity.column: quantity.floor for quantity in QUANTITIES}
STEP = SCRATCH_FLOPS_PER_STEP  # one step of LARGE from scratch; the synthetic budget is 100 of them
BUDGET = 100 * STEP
SEEDS = (0, 1, 2)


def gate_specs():
    """default_specs with books that add up: there, ki spends 100 steps × 1.6e11 = 1.6e13 FLOPs against a
    1.2e13 budget, which the budget audit (rightly) fails. Here ki's curve costs what scratch's does; its
    teacher's charge is audited below on hand-written phases.csv ledgers."""
    specs = default_specs()
    specs["ki"] = replace(specs["ki"], flops_per_step=STEP)
    return specs


def gate_run_dir(root: Path, specs=None, **kwargs) -> Path:
    return make_run_dir(root, gate_specs() if specs is None else specs, **kwargs)


def _verdicts(result, method: str) -> dict[str, str]:
    return {row.quantity: row.verdict for row in result.rows if row.method == method}


def _books(rows, verdict: str = BOOKS) -> list[tuple[str, str, str]]:
    return [(row.run, row.phase, row.audit) for row in rows if row.verdict == verdict]


def _phase(name: str, steps: int, per_step: float, *, extra_forwards: int = 0, plain_large: bool | None = None,
           analytic: float | None | str = "same", flops: float | None = None) -> dict:
    """One phases.csv row as bench/train.py writes it (with the columns added for the books)."""
    executed = steps * per_step if flops is None else flops
    return {"phase": name, "steps": steps, "tokens": steps * 4096, "flops_executed": executed,
            "flops_fvcore": executed, "flops_analytic": executed if analytic == "same" else analytic,
            "flops_analytic_note": "config formula" if analytic is not None else "not available for this phase",
            "plain_large": extra_forwards == 0 if plain_large is None else plain_large,
            "extra_forwards": extra_forwards, "trainable_parameters": 4_000_000, "train_s": steps * 0.5,
            "energy_kwh": steps * 1e-5, "energy_method": "cpu:tdp_estimate+ram:ram_heuristic",
            "settings": "{}"}


def _ledger(run_dir: Path, method: str, rows: list[dict], seeds=SEEDS) -> None:
    for seed in seeds:
        pd.DataFrame(rows).to_csv(run_dir / "runs" / f"{method}-s{seed}" / "phases.csv", index=False)


def _new_books(run_dir: Path) -> Path:
    """Every run's phases.csv rewritten with the new columns, each method plain LARGE training at scratch's cost
    (ligo's operator phase and mslt's shallow stage are not plain LARGE)."""
    _ledger(run_dir, "scratch", [_phase("train", 100, STEP)])
    _ledger(run_dir, "ki", [_phase("train", 100, STEP)])
    _ledger(run_dir, "ligo", [_phase("operator", 10, STEP, plain_large=False, analytic=None),
                              _phase("train", 90, STEP)])
    _ledger(run_dir, "mslt", [_phase("growth-1", 50, STEP, plain_large=False), _phase("joint", 50, STEP)])
    return run_dir


@pytest.fixture
def baseline(tmp_path):
    """A baseline written from the gate's synthetic comparison on SYNTHETIC_CPU."""
    run_dir = gate_run_dir(tmp_path / "baseline-run")
    path = tmp_path / "baselines" / "bert-nano_bert-micro.json"
    written = write_baseline(run_dir, path)
    return run_dir, path, written


def _edit_baseline(path: Path, tmp_path: Path, edit) -> Path:
    stored = json.loads(path.read_text())
    edit(stored)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(stored))
    return edited


# --------------------------------------------------------------------------- the baseline


def test_the_baseline_records_what_the_gate_needs(baseline):
    _, path, written = baseline
    stored = json.loads(path.read_text())
    assert stored == written
    assert stored["pair"] == "bert-nano:bert-micro" and stored["seeds"] == [0, 1, 2]
    assert stored["budget"]["value"] == 1.2e13 and "Synthetic CPU" in stored["hardware_fingerprint"]
    ligo, mslt = stored["methods"]["ligo"], stored["methods"]["mslt"]
    assert ligo["reached"] is True and mslt["reached"] is False
    assert ligo["quantities"]["savings_flops"]["value"] == pytest.approx(0.46, abs=0.02)
    assert mslt["quantities"]["savings_flops"]["value"] is None  # not reached: no number, not 0
    assert mslt["quantities"]["final_val_loss"]["value"] is not None  # the loss at the budget is always a number
    for quantity, entry in ligo["quantities"].items():
        assert entry["tolerance"] >= FLOORS[quantity]


def test_the_seed_spread_widens_only_the_hardware_dependent_tolerances(tmp_path):
    specs = gate_specs()
    specs["ligo"].loss = lambda step, seed: curve_loss(3.0, 8.0, 5.0)(step, 0) + 0.08 * seed  # seeds far apart
    specs["ki"].loss = lambda step, seed: curve_loss(3.0, 10.0, 3.5)(step, 0)  # every seed the same curve
    written = write_baseline(make_run_dir(tmp_path / "run", specs), tmp_path / "b.json")
    noisy = written["methods"]["ligo"]["quantities"]
    # CI re-runs the same seeds: the seed spread is recorded, but FLOPs savings and loss are held to the floor
    # (no reproduction given: no reproduction noise measured)
    assert noisy["savings_flops"]["seed_standard_error"] > 2 * FLOORS["savings_flops"]
    assert noisy["final_val_loss"]["seed_standard_error"] > FLOORS["final_val_loss"]
    for column in ("savings_flops", "final_val_loss"):
        assert noisy[column]["tolerance"] == FLOORS[column] and noisy[column]["reproduction_noise"] is None
    assert noisy["savings_train_s"]["tolerance"] == max(FLOORS["savings_train_s"],
                                                        noisy["savings_train_s"]["seed_standard_error"])
    for quantity, entry in written["methods"]["ki"]["quantities"].items():
        assert entry["tolerance"] == FLOORS[quantity], quantity


def test_the_seed_spread_counts_every_finished_seed_not_only_those_that_reached(tmp_path):
    specs = gate_specs()
    # seeds 0 and 1 reach τ_s (ligo's curve), seed 2 ends above it: judged at its own loss, a negative saving
    specs["ligo"].loss = lambda step, seed: curve_loss(3.0 if seed < 2 else 3.6, 8.0, 5.0)(step, 0)
    written = write_baseline(make_run_dir(tmp_path / "run", specs), tmp_path / "b.json")
    savings = written["methods"]["ligo"]["quantities"]["savings_flops"]
    assert written["methods"]["ligo"]["reached"] is True and savings["seeds"] == 3
    assert savings["seed_standard_error"] > 0.1  # the short seed's negative saving against two near 46%


# --------------------------------------------------------------------------- the two-sided gate


def test_the_run_that_made_the_baseline_passes(baseline):
    run_dir, path, _ = baseline
    result = check(run_dir, path)
    assert result.ok, result.text
    assert all(row.verdict in ("ok", "n/a (target not reached)") for row in result.rows), result.text
    assert _verdicts(result, "mslt")["reaches target"] == "ok"
    assert not result.notes and not result.failures
    assert result.text.startswith("0 regression(s), 0 improvement(s) beyond tolerance, 0 books failure(s)")


def test_a_planted_flops_regression_fails(baseline, tmp_path):
    _, path, _ = baseline
    specs = gate_specs()
    specs["ligo"].loss = curve_loss(3.0, 8.0, 4.0)  # learns slower: reaches τ ~13 points of savings later
    result = check(gate_run_dir(tmp_path / "worse", specs), path)
    assert not result.ok
    assert _verdicts(result, "ligo")["FLOPs savings"] == "REGRESSION"
    assert _verdicts(result, "ki")["FLOPs savings"] == "ok"
    regressions = sum(row.verdict == "REGRESSION" for row in result.rows)
    assert result.text.startswith(f"{regressions} regression(s)")
    line = next(line for line in result.text.splitlines() if line.startswith("ligo") and "FLOPs savings" in line)
    assert "REGRESSION" in line and "pts" in line


def test_a_planted_improvement_fails_and_asks_for_a_new_baseline(baseline, tmp_path):
    run_dir, path, _ = baseline

    def lower_ligo_flops_savings(stored):  # the run now saves 10 points more than the baseline says
        stored["methods"]["ligo"]["quantities"]["savings_flops"]["value"] -= 0.10

    result = check(run_dir, _edit_baseline(path, tmp_path, lower_ligo_flops_savings))
    assert not result.ok
    assert _verdicts(result, "ligo")["FLOPs savings"] == IMPROVED_FAILS
    assert IMPROVED_FAILS == "improved — refresh the baseline with `bench baseline`"
    assert result.text.startswith("0 regression(s), 1 improvement(s) beyond tolerance")
    assert "`bench baseline`" in result.text.splitlines()[0]
    assert [row.quantity for row in result.failures] == ["FLOPs savings"]


def test_reaching_the_target_now_and_a_lower_loss_fail_as_improvements(baseline, tmp_path):
    run_dir, path, _ = baseline

    def as_if_worse_before(stored):
        stored["methods"]["mslt"]["reached"] = True  # mslt never reaches: a regression
        stored["methods"]["ligo"]["reached"] = False  # ligo reaches now: an improvement, which fails too
        stored["methods"]["scratch"]["quantities"]["final_val_loss"]["value"] += 0.1  # scratch's loss is lower now

    result = check(run_dir, _edit_baseline(path, tmp_path, as_if_worse_before))
    assert not result.ok
    assert _verdicts(result, "mslt")["reaches target"] == "REGRESSION"
    assert _verdicts(result, "ligo")["reaches target"] == IMPROVED_FAILS
    assert _verdicts(result, "ligo")["FLOPs savings"] == "n/a (target not reached)"  # judged only when both reach
    assert _verdicts(result, "scratch")["final val loss"] == IMPROVED_FAILS
    assert result.text.startswith("1 regression(s), 2 improvement(s) beyond tolerance")


def test_hardware_bound_improvements_never_fail(baseline, tmp_path):
    run_dir, path, _ = baseline

    def lower_wall_time_savings(stored):
        stored["methods"]["ligo"]["quantities"]["savings_train_s"]["value"] -= 0.40

    result = check(run_dir, _edit_baseline(path, tmp_path, lower_wall_time_savings))
    assert result.ok, result.text
    assert _verdicts(result, "ligo")["wall-time savings"] == "improved"
    assert "1 hardware-bound improvement(s), not failures" in result.text.splitlines()[0]


def test_losing_the_target_is_a_regression_and_gaining_one_fails_as_an_improvement(baseline, tmp_path):
    _, path, _ = baseline
    specs = gate_specs()
    specs["ligo"].loss = curve_loss(3.5, 8.0, 5.0)  # now ends above τ
    specs["ki"].loss = curve_loss(3.0, 10.0, 4.5)  # now reaches τ much earlier
    result = check(gate_run_dir(tmp_path / "moved", specs), path)
    assert not result.ok
    assert _verdicts(result, "ligo")["reaches target"] == "REGRESSION"
    assert _verdicts(result, "ki")["FLOPs savings"] == IMPROVED_FAILS
    assert _verdicts(result, "ki")["final val loss"] == IMPROVED_FAILS  # 3.21 -> 3.08 at the budget


def test_time_and_energy_are_judged_only_on_the_same_hardware(baseline, tmp_path):
    _, path, _ = baseline
    specs = gate_specs()
    specs["ligo"].seconds_per_step = 0.9  # same FLOPs, same losses, but ligo's steps take 80% longer
    same_machine = check(gate_run_dir(tmp_path / "slow-here", specs), path)
    assert not same_machine.ok
    assert _verdicts(same_machine, "ligo")["wall-time savings"] == "REGRESSION"
    assert _verdicts(same_machine, "ligo")["energy savings"] == "REGRESSION"

    other_machine = {**SYNTHETIC_CPU, "cpu_model": "Another CPU", "cpu_cores": 8}
    elsewhere = check(gate_run_dir(tmp_path / "slow-elsewhere", specs, hardware=other_machine), path)
    assert elsewhere.ok, elsewhere.text
    verdicts = _verdicts(elsewhere, "ligo")
    assert verdicts["wall-time savings"] == verdicts["energy savings"] == "skipped (other hardware)"
    assert verdicts["FLOPs savings"] == "ok"
    assert any("Hardware differs" in note for note in elsewhere.notes) and "note: Hardware differs" in elsewhere.text


def test_software_versions_do_not_count_as_other_hardware(baseline, tmp_path):
    _, path, _ = baseline
    upgraded = {**SYNTHETIC_CPU, "torch": "2.14.0", "platform": "Linux-6.9"}
    result = check(gate_run_dir(tmp_path / "upgraded", hardware=upgraded), path)
    assert result.ok and not any("Hardware differs" in note for note in result.notes)


def test_a_method_that_no_longer_finishes_is_a_regression(baseline, tmp_path):
    _, path, _ = baseline
    specs = gate_specs()
    specs["ligo"].states = {0: "diverged", 1: "diverged", 2: "diverged"}
    result = check(gate_run_dir(tmp_path / "broken", specs), path)
    assert not result.ok and _verdicts(result, "ligo") == {"finished runs": "REGRESSION"}
    assert not any(row.run.startswith("ligo") for row in result.books)  # only finished runs are audited
    with pytest.raises(BenchError, match="no finished run of ligo"):
        write_baseline(tmp_path / "broken", tmp_path / "from-broken.json")


@pytest.mark.parametrize("state", ["failed", "running", None, "not started"])
def test_check_and_baseline_refuse_unfinished_seeds_unless_allowed(baseline, tmp_path, state):
    """A seed that failed, is still running, has no status.json or no folder at all: the gate and the baseline
    refuse (exit 2) and name it; --allow-incomplete judges what is there and says what it went without."""
    _, path, _ = baseline
    run_dir = gate_run_dir(tmp_path / "partial", gate_specs())
    folder = run_dir / "runs" / "ligo-s1"
    if state == "not started":
        shutil.rmtree(folder)
    elif state is None:
        (folder / "status.json").unlink()
    else:
        status = json.loads((folder / "status.json").read_text())
        (folder / "status.json").write_text(json.dumps({**status, "state": state, "files": None}))
    named = "ligo-s1 (" + (state or "unknown") + ")"
    with pytest.raises(BenchError, match=re.escape(named)):
        check(run_dir, path)
    with pytest.raises(BenchError, match=re.escape(named)):
        write_baseline(run_dir, tmp_path / "partial.json")
    result = check(run_dir, path, allow_incomplete=True)
    assert any(named in note for note in result.notes), result.notes
    assert write_baseline(run_dir, tmp_path / "partial.json", allow_incomplete=True)["unfinished_runs"] == [named]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"format": "something-else/9"}), "format"),
    (json.dumps({"format": "growbench-baseline/1", "pair": "bert-nano:bert-micro"}), "lacks"),
    (json.dumps({"format": "growbench-baseline/1", "pair": "p", "budget": {}, "hardware_fingerprint": "",
                 "methods": {"ligo": {"reached": True, "quantities": {"savings_flops": {"value": 0.4,
                                                                                      "tolerance": "wide"}}}}}),
     "numeric 'tolerance'"),
])
def test_a_malformed_baseline_is_a_bench_error(baseline, tmp_path, content, message):
    run_dir, _, _ = baseline
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BenchError, match=message):
        check(run_dir, path)


def test_baseline_and_run_that_do_not_match_are_bench_errors(baseline, tmp_path):
    run_dir, path, _ = baseline
    with pytest.raises(BenchError, match="does not exist"):
        check(run_dir, tmp_path / "missing.json")
    specs = gate_specs()
    del specs["mslt"]
    with pytest.raises(BenchError, match="lacks method"):
        check(make_run_dir(tmp_path / "fewer", specs), path)
    with pytest.raises(BenchError, match="is for pair"):
        check(gate_run_dir(tmp_path / "other-pair", pair="bert-mini:bert-small"), path)


def test_noisy_quantities_are_judged_on_the_interval_not_one_mean():
    from bench.check import _judge

    wall = next(q for q in QUANTITIES if q.column == "savings_train_s")
    expected = {"value": 0.30, "tolerance": 0.10}
    # the mean fell 15 points, but the interval still reaches into the band: noise, not a verdict
    assert _judge(wall, expected, 0.15, "m", interval=(0.05, 0.25)).verdict == "ok"
    # the whole interval below the band: a regression
    assert _judge(wall, expected, 0.10, "m", interval=(0.05, 0.15)).verdict == "REGRESSION"
    # without an interval (one seed), the mean is judged
    assert _judge(wall, expected, 0.15, "m").verdict == "REGRESSION"
    # the better way: reported, never a failure, for a hardware-bound quantity ...
    assert _judge(wall, expected, 0.50, "m", interval=(0.45, 0.55)).verdict == "improved"
    # ... and a failure for a hardware-independent one
    flops = next(q for q in QUANTITIES if q.column == "savings_flops")
    assert _judge(flops, {"value": 0.30, "tolerance": 0.02}, 0.33, "m").verdict == IMPROVED_FAILS
    assert _judge(flops, {"value": 0.30, "tolerance": 0.02}, 0.31, "m").verdict == "ok"


# --------------------------------------------------------------------------- the books


def test_books_that_add_up_pass_every_audit(tmp_path):
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    rows = audit(run_dir)
    assert not _books(rows) and not [row for row in rows if row.verdict.startswith("n/a")
                                     and row.audit != "analytic FLOPs"]
    assert {row.run for row in rows} == {f"{m}-s{s}" for m in ("scratch", "ki", "ligo", "mslt") for s in SEEDS}
    assert [row.verdict for row in rows if row.run == "ligo-s0" and row.audit == "analytic FLOPs"] == [
        "n/a (analytic not available)", "ok"]  # the operator phase has no analytic count: n/a, not a pass
    assert format_audit(rows).startswith("books: 0 failure(s) over 12 finished run(s)")


def test_a_missing_teacher_charge_fails_against_the_runs_own_plain_phase(baseline, tmp_path):
    _, path, _ = baseline
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    # KI-like: 50 distillation steps with the teacher's forward, but charged what a plain step costs
    _ledger(run_dir, "ki", [_phase("distil", 50, STEP, extra_forwards=1), _phase("train", 50, STEP)])
    result = check(run_dir, path)
    assert not result.ok
    assert _books(result.books) == [(f"ki-s{seed}", "distil", "extra forwards") for seed in SEEDS]
    row = next(row for row in result.books if row.verdict == BOOKS)
    assert row.expected == "> 1.2e+11/step (its own train)" and row.recorded == "1.2e+11/step"
    assert "1 extra forward(s)" in row.detail
    assert result.text.startswith("0 regression(s), 0 improvement(s) beyond tolerance, 3 books failure(s)")
    assert "ki-s0  distil  extra forwards" in result.text

    # charged: 30 teacher-paying steps at 1.6e11 and 60 plain ones, 1.2e13 in all
    _ledger(run_dir, "ki", [_phase("distil", 30, 1.6e11, extra_forwards=1), _phase("train", 60, STEP)])
    assert not _books(audit(run_dir))


def test_without_a_plain_phase_of_its_own_the_teacher_charge_is_held_against_scratch(tmp_path):
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    _ledger(run_dir, "ki", [_phase("distil", 100, STEP, extra_forwards=1)])
    rows = audit(run_dir)
    assert _books(rows) == [(f"ki-s{seed}", "distil", "extra forwards") for seed in SEEDS]
    assert [row.expected for row in rows if row.verdict == BOOKS] == [
        f"> 1.2e+11/step (scratch-s{seed} train)" for seed in SEEDS]  # the same seed's scratch run

    _ledger(run_dir, "ki", [_phase("distil", 75, 1.6e11, extra_forwards=1)])
    rows = audit(run_dir)
    assert not _books(rows)
    assert sum(row.audit == "extra forwards" and row.verdict == "ok" for row in rows) == 3


@pytest.mark.parametrize("steps, ok", [(100, True), (101, True), (99, True), (102, False), (98, False)])
def test_the_flops_spent_must_equal_the_budget_within_one_step(tmp_path, steps, ok):
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    _ledger(run_dir, "scratch", [_phase("train", steps, STEP)], seeds=(0,))
    failures = _books(audit(run_dir))
    assert failures == ([] if ok else [("scratch-s0", "(all)", "budget")])


def test_an_overspent_run_fails_the_gate_with_the_numbers(baseline, tmp_path):
    _, path, _ = baseline
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    _ledger(run_dir, "scratch", [_phase("train", 102, STEP)], seeds=(0,))  # budget + 2 steps
    result = check(run_dir, path)
    assert not result.ok
    row = next(row for row in result.books if row.verdict == BOOKS)
    assert (row.run, row.audit, row.recorded) == ("scratch-s0", "budget", "1.224e+13")
    assert row.expected == "1.2e+13 ±1.2e+11 (one step)"
    assert "over the budget 1.2e+13 by 2.4e+11 = 2.00 of its dearest step" in row.detail


def test_a_phase_that_trains_must_be_charged(baseline, tmp_path):
    _, path, _ = baseline
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    # LiGO's operator fitted for 10 steps, charged nothing; the budget still adds up (100 plain steps)
    _ledger(run_dir, "ligo", [_phase("operator", 10, 0.0, plain_large=False, analytic=None),
                              _phase("train", 100, STEP)])
    result = check(run_dir, path)
    assert not result.ok
    assert _books(result.books) == [(f"ligo-s{seed}", "operator", "charged") for seed in SEEDS]
    assert "operator trains 10 step(s) but is charged 0 FLOPs" in result.text


@pytest.mark.parametrize("off, ok", [(0.10, False), (-0.10, False), (0.03, True), (-0.03, True)])
def test_the_analytic_count_must_be_within_five_percent(tmp_path, off, ok):
    run_dir = _new_books(gate_run_dir(tmp_path / "run"))
    _ledger(run_dir, "mslt", [_phase("growth-1", 50, STEP, plain_large=False, analytic=50 * STEP * (1 + off)),
                              _phase("joint", 50, STEP)], seeds=(1,))
    failures = _books(audit(run_dir))
    assert failures == ([] if ok else [("mslt-s1", "growth-1", "analytic FLOPs")])


def test_old_records_without_the_new_columns_are_not_applicable_not_a_crash(baseline, tmp_path):
    _, path, _ = baseline
    result = check(gate_run_dir(tmp_path / "old"), path)  # no plain_large / extra_forwards / trainable_parameters
    assert result.ok, result.text
    extra = {row.verdict for row in result.books if row.audit == "extra forwards"}
    assert extra == {"n/a (no extra_forwards column: records from before it)"}
    assert "extra forwards: 0 ok, 12 n/a (no extra_forwards column: records from before it)" in result.text

    bare = make_run_dir(tmp_path / "bare", gate_specs(), optional=False)  # no flops_analytic column either
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["budget"] = {"unit": "tokens", "value": 409600, "flops": None}
    (bare / "manifest.json").write_text(json.dumps(manifest))
    rows = audit(bare)
    assert not _books(rows)
    verdicts = {row.audit: row.verdict for row in rows if row.run == "ki-s0"}
    assert verdicts == {"budget": "n/a (budget in tokens)", "analytic FLOPs": "n/a (no flops_analytic column)",
                        "extra forwards": "n/a (no extra_forwards column: records from before it)",
                        "charged": "ok"}


def test_the_default_synthetic_ki_overspends_its_budget(tmp_path):
    """What the books catch in test_report's default comparison: 100 KI steps at 1.6e11 against 1.2e13."""
    rows = audit(make_run_dir(tmp_path / "run", default_specs()))
    assert _books(rows) == [(f"ki-s{seed}", "(all)", "budget") for seed in SEEDS]


def test_audit_needs_a_run_directory(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        audit(tmp_path / "nowhere")


def test_bench_check_on_the_command_line_exits_1_on_a_planted_improvement_and_bad_books(baseline, tmp_path):
    run_dir, path, _ = baseline

    def lower_ligo_flops_savings(stored):
        stored["methods"]["ligo"]["quantities"]["savings_flops"]["value"] -= 0.10

    edited = _edit_baseline(path, tmp_path, lower_ligo_flops_savings)
    _ledger(run_dir, "scratch", [_phase("train", 102, STEP)], seeds=(0,))
    done = subprocess.run([sys.executable, "-m", "bench", "check", str(run_dir), "--baseline", str(edited)],
                          check=False, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 1, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("0 regression(s), 1 improvement(s) beyond tolerance") and "`bench baseline`" in first
    assert "1 books failure(s)" in first
    assert IMPROVED_FAILS in done.stdout and "scratch-s0  (all)  budget" in done.stdout


def test_wall_time_and_energy_are_not_judged_where_the_baseline_was_contended(baseline, tmp_path):
    """A regression of wall-time savings measured on a machine that ran other work says nothing about the code."""
    run_dir, path, _ = baseline

    def contended_and_much_better(stored):
        stored["methods"]["ligo"]["time_contended"] = True
        stored["methods"]["ligo"]["quantities"]["savings_train_s"]["value"] += 0.60

    result = check(run_dir, _edit_baseline(path, tmp_path, contended_and_much_better))
    assert result.ok, result.text
    assert _verdicts(result, "ligo")["wall-time savings"].startswith("skipped (contended")
    assert _verdicts(result, "ligo")["reference-time savings"] != "skipped (contended: the machine ran other work)"


def test_reference_time_is_not_judged_where_the_baseline_s_calibration_was_unreliable(baseline, tmp_path):
    """Reference time is steps x calibrated step time: a table taken on a busy machine says nothing about the code."""
    run_dir, path, _ = baseline

    def unreliable_and_much_better(stored):
        stored["methods"]["ligo"]["reference_unreliable"] = True
        stored["methods"]["ligo"]["quantities"]["savings_reference_s"]["value"] += 0.60

    result = check(run_dir, _edit_baseline(path, tmp_path, unreliable_and_much_better))
    assert result.ok, result.text
    assert _verdicts(result, "ligo")["reference-time savings"] == "skipped (unreliable calibration)"

    def only_much_better(stored):
        stored["methods"]["ligo"]["quantities"]["savings_reference_s"]["value"] += 0.60

    (tmp_path / "reliable").mkdir()
    assert not check(run_dir, _edit_baseline(path, tmp_path / "reliable", only_much_better)).ok  # judged otherwise


# --------------------------------------------------------------------------- reproductions


def test_a_reproduction_sets_the_tolerance_from_how_far_it_moved(tmp_path):
    run = make_run_dir(tmp_path / "run", gate_specs())
    moved_specs = gate_specs()
    base = moved_specs["ligo"].loss
    moved_specs["ligo"].loss = lambda step, seed: base(step, seed) + (0.02 if step == 50 else 0.0)  # one eval point
    reproduction = make_run_dir(tmp_path / "again", moved_specs)
    written = write_baseline(run, tmp_path / "b.json", reproductions=[reproduction])
    savings = written["methods"]["ligo"]["quantities"]["savings_flops"]
    assert savings["reproduction_noise"] > 0
    assert savings["tolerance"] == pytest.approx(max(FLOORS["savings_flops"],
                                                     written["margin"] * savings["reproduction_noise"]))
    assert written["methods"]["ki"]["quantities"]["savings_flops"]["reproduction_noise"] == 0.0
    assert [entry["run_dir"] for entry in written["reproductions"]] == ["again"]


def test_a_missing_or_different_reproduction_is_one_line_and_exit_2(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run", gate_specs())
    other = make_run_dir(tmp_path / "other", gate_specs(), seeds=(0, 1))
    for given, expected in ((tmp_path / "nowhere", f"--reproduction {tmp_path / 'nowhere'}"),
                            (other, "is not the same comparison")):
        assert main(["baseline", str(run), "--out", str(tmp_path / "b.json"), "--reproduction", str(given)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not (tmp_path / "b.json").exists()
