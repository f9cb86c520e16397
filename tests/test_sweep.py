"""`bench sweep`: budget specs and bad input, break-even on synthetic curves (bracketed, never crossing, crossing
twice, censored), amortisation arithmetic, the extrapolation's labelling, failed points shown as failed, and one tiny
end-to-end sweep."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from bench.records import DONE, FAILED
from bench.sweep import analysis
from bench.sweep.analysis import break_even, break_evens, collect
from bench.sweep.command import add_arguments, run
from bench.sweep.fit import extrapolated_break_even, fit_power_law
from bench.sweep.points import (
    Budget,
    Plan,
    make_points,
    parse_budget,
    parse_budgets,
    parse_parent_steps,
    resolve_budgets,
    write_plan,
)
from bench.sweep.report import build_sweep_report
from bench.sweep.run import write_point_status
from bench.sweep.tables import break_even_text

STEP_FLOPS = 1e9  # one step of LARGE in the synthetic sweeps
REFERENCE_STEPS = 100  # what 1x means there
PARENT_FLOPS = 2e10  # the synthetic parent's pretraining cost


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench sweep")
    add_arguments(parser)
    return parser


# --------------------------------------------------------------------------- budget specs and bad input


def test_budget_specs_relative_steps_and_flops():
    assert [(spec.kind, spec.value, spec.label) for spec in parse_budgets("0.25x, 2X,300,450steps,1e12flops")] == [
        ("relative", 0.25, "0.25x"), ("relative", 2.0, "2x"), ("steps", 300, "300steps"), ("steps", 450, "450steps"),
        ("flops", 1e12, "1e12flops")]
    budgets = resolve_budgets(parse_budgets("2x,0.5x,1e11flops"), 300, STEP_FLOPS)
    assert [(budget.label, budget.steps, budget.flops) for budget in budgets] == [
        ("1e11flops", None, 1e11), ("0.5x", 150, 1.5e11), ("2x", 600, 6e11)]  # sorted by FLOPs
    assert parse_parent_steps("500,1500") == [500, 1500] and parse_parent_steps(None) is None


@pytest.mark.parametrize("text, message", [
    ("fast", "unknown budget spec"), ("1y", "unknown budget spec"), ("0x", "must be positive"),
    ("-2x", "must be positive"), ("0", "must be positive"), ("0flops", "must be positive"),
    ("2.5", "must be whole"), ("1x,1.0x", "duplicate point"), ("300,300steps", "duplicate point"),
])
def test_bad_budget_specs_are_bench_errors(text, message):
    with pytest.raises(BenchError, match=message):
        parse_budgets(text)


def test_budgets_meaning_the_same_flops_are_duplicates_and_tiny_multiples_are_refused():
    with pytest.raises(BenchError, match="duplicate point"):
        resolve_budgets(parse_budgets("1x,300"), 300, STEP_FLOPS)
    with pytest.raises(BenchError, match="duplicate point"):
        resolve_budgets(parse_budgets("1x,3e11flops"), 300, STEP_FLOPS)
    with pytest.raises(BenchError, match="less than one step"):
        resolve_budgets([parse_budget("0.001x")], 300, STEP_FLOPS)


def test_a_stored_sweep_is_extended_by_new_budgets_but_not_mixed_with_another(tmp_path):
    from bench.sweep.points import merge_plans

    old, new = synthetic_plan([1, 2], ["ligo"]), synthetic_plan([2, 4], ["ligo"])
    merged = merge_plans(old, new)
    assert [point.name for point in merged.points] == ["1x-p300", "2x-p300", "4x-p300"]
    with pytest.raises(BenchError, match="different sweep.*methods"):
        merge_plans(old, synthetic_plan([1], ["stackbert"]))
    from bench.sweep.run import check_fresh

    (old.points[0].path(tmp_path) / "runs").mkdir(parents=True)
    with pytest.raises(BenchError, match="1x-p300 already hold"):
        check_fresh(old.points, tmp_path, resume=False)
    check_fresh(old.points, tmp_path, resume=True)
    check_fresh(old.points[1:], tmp_path, resume=False)  # another point of the same sweep may start alone


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "1x,soon"], "unknown budget spec"),
    (["--budgets=-1x"], "must be positive"),
    (["--budgets", "0.5x,1x,0.5x"], "duplicate point"),
    (["--parent-steps", "500,500"], "duplicate point"),
    (["--parent-steps", "0"], "must be positive"),
    (["--amortize", "0"], "amortize"),
    (["--amortize", "-3"], "amortize"),
    (["--report-only"], "--out"),
])
def test_bad_sweep_input_raises_before_any_work(argv, message, tmp_path):
    args = _parser().parse_args([*argv, "--out", str(tmp_path / "s")] if "--report-only" not in argv else argv)
    with pytest.raises(BenchError, match=message):
        run(args)
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- break-even on synthetic curves


def test_a_bracketed_crossing_is_interpolated_in_log_budget():
    result = break_even([1, 2, 4, 8], [0.5, 0.3, 0.1, -0.1])
    assert result.kind == "crossing" and len(result.crossings) == 1
    crossing = result.crossings[0]
    assert (crossing.low, crossing.high, crossing.direction, crossing.bound) == (4, 8, "stops", "≈")
    assert crossing.at == pytest.approx(math.sqrt(32))  # halfway between log 4 and log 8
    # any order of the points, NaN skipped
    again = break_even([8, 1, 4, 2, 16], [-0.1, 0.5, 0.1, 0.3, math.nan])
    assert again.crossings[0].at == pytest.approx(math.sqrt(32))


def test_never_crossing_says_which_way_it_goes():
    falling = break_even([1, 2, 4], [0.5, 0.4, 0.3])
    assert falling.kind == "saves everywhere" and not falling.crossings and falling.hints == ["beyond the largest"]
    flat = break_even([1, 2, 4], [0.3, 0.3, 0.3])
    assert flat.kind == "saves everywhere" and flat.hints == []
    rising_from_below = break_even([1, 2, 4], [-0.9, -0.5, -0.2])  # e.g. the parent charged at short budgets
    assert rising_from_below.kind == "saves nowhere" and rising_from_below.hints == ["beyond the largest"]
    assert break_even([], []).kind == "no data"


def test_a_curve_crossing_twice_lists_both_crossings():
    result = break_even([1, 2, 4, 8], [-0.2, 0.1, 0.2, -0.1])
    assert [(c.low, c.high, c.direction) for c in result.crossings] == [(1, 2, "starts"), (4, 8, "stops")]
    assert result.crossings[0].at == pytest.approx(2 ** (0.2 / 0.3))
    assert result.crossings[1].at == pytest.approx(4 * 2 ** (0.2 / 0.3))


def test_a_budget_not_reached_does_not_pay_and_bounds_the_crossing():
    # at 8 the method did not reach τ: its censored savings (+0.4%) are an upper bound, not a saving
    result = break_even([1, 2, 4, 8], [0.5, 0.3, 0.1, 0.004], [True, True, True, False])
    assert len(result.crossings) == 1
    crossing = result.crossings[0]
    assert crossing.direction == "stops" and crossing.bound == "≤" and crossing.at == pytest.approx(8)
    starting = break_even([1, 2], [0.003, 0.2], [False, True])
    assert starting.crossings[0].direction == "starts" and starting.crossings[0].bound == "≥"


# --------------------------------------------------------------------------- synthetic sweeps on disk


EVALS = 11  # eval points at 0, 1/10, ..., the budget


def _write_run(folder: Path, total_flops: float, losses: list[float], method: str, seed: int | None,
               state: str = DONE) -> None:
    """curve.csv, phases.csv and status.json as the training loop writes them; costs linear in the eval index."""
    folder.mkdir(parents=True)
    fractions = np.linspace(0, 1, EVALS)
    pd.DataFrame({"step": (fractions * 100).astype(int), "tokens": fractions * 1e6, "flops": fractions * total_flops,
                  "train_s": fractions * total_flops / 1e10, "reference_s": fractions * total_flops / 1e10,
                  "phase": "train", "train_loss": losses, "val_loss": losses}).to_csv(folder / "curve.csv", index=False)
    pd.DataFrame([{"phase": "train", "steps": 100, "flops_executed": total_flops, "train_s": total_flops / 1e10,
                   "reference_s": total_flops / 1e10, "plain_large": True}]).to_csv(folder / "phases.csv", index=False)
    status = {"state": state, "method": method, "seed": seed, "final_val_loss": losses[-1]}
    if state != DONE:
        status["reason"] = "loss became NaN"
    (folder / "status.json").write_text(json.dumps(status))


def write_point(folder: Path, budget_flops: float, savings: dict[str, float | None], seeds: int = 3,
                states: dict[tuple[str, int], str] | None = None, parent_flops: float = PARENT_FLOPS) -> None:
    """A point whose FLOPs savings (parent sunk) are `savings[method]` (± 1% per seed); None = never reaches τ.

    scratch's loss falls linearly from 10 to 6 (= τ); a method saving s reaches 6 at the fraction 1 − s of the
    budget, on a line, so its cost to τ is exactly (1 − s) · budget."""
    states = states or {}
    folder.mkdir(parents=True)
    manifest = {"pair": "bert-nano:bert-micro", "budget": {"unit": "flops", "value": budget_flops,
                                                           "flops": budget_flops},
                "seeds": list(range(seeds)), "methods": {"scratch": {"needs_parent": False},
                                                         **{m: {"needs_parent": True} for m in savings}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fractions = np.linspace(0, 1, EVALS)
    for seed in range(seeds):
        _write_run(folder / "runs" / f"scratch-s{seed}", budget_flops, list(10 - 4 * fractions), "scratch", seed)
        for method, value in savings.items():
            if value is None:
                losses = list(10 - 3 * fractions)  # ends at 7 > τ
            else:
                reach = 1 - (value + 0.01 * (seed - 1))
                losses = list(10 - 4 * fractions / reach)
            _write_run(folder / "runs" / f"{method.replace(':', '_')}-s{seed}", budget_flops, losses, method, seed,
                       states.get((method, seed), DONE))
    _write_run(folder / "parent", parent_flops, list(9 - fractions), "parent", None)


def synthetic_plan(ratios: list[float], methods: list[str], parents: tuple[int, ...] = (300,), seeds: int = 3,
                   amortize: float = 1.0) -> Plan:
    budgets = [Budget(f"{ratio:g}x", f"{ratio:g}x", "relative", ratio, round(ratio * REFERENCE_STEPS),
                      ratio * REFERENCE_STEPS * STEP_FLOPS) for ratio in ratios]
    return Plan("bert-nano:bert-micro", ["scratch", *methods], seeds, True, REFERENCE_STEPS, STEP_FLOPS, budgets,
                list(parents), amortize=amortize, points=make_points(budgets, list(parents)))


def synthetic_sweep(root: Path, curves: dict[str, list[float | None]], ratios: list[float],
                    failed: dict[str, str] | None = None, states: dict[str, dict] | None = None,
                    amortize: float = 1.0) -> Plan:
    """A sweep directory whose points hold `curves[method][i]` FLOPs savings at budget ratios[i]; a point named in
    `failed` has no runs and a failed status (its comparison raised), with that reason."""
    plan = synthetic_plan(ratios, list(curves), amortize=amortize)
    write_plan(root, plan)
    for index, point in enumerate(plan.points):
        if failed and point.name in failed:
            write_point_status(point, root, FAILED, reason=failed[point.name], seconds=1.0)
            continue
        write_point(point.path(root), plan.budgets[index].flops, {m: values[index] for m, values in curves.items()},
                    states=(states or {}).get(point.name))
        write_point_status(point, root, DONE, seconds=60.0)
    return plan


def _row(sweep, point: str, method: str) -> pd.Series:
    rows = sweep.rows[(sweep.rows["point"] == point) & (sweep.rows["method"] == method)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_savings_come_from_the_report_and_amortisation_shares_the_parent(tmp_path):
    plan = synthetic_sweep(tmp_path, {"ligo": [0.4, 0.2]}, [1, 2])
    sweep = collect(plan, tmp_path, amortize=4)
    row = _row(sweep, "1x-p300", "ligo")
    budget = 100 * STEP_FLOPS
    assert row["state"] == analysis.MEASURED and bool(row["reached"])
    assert row["savings_flops"] == pytest.approx(0.4)  # mean of 0.39, 0.40, 0.41
    assert row["savings_charged_flops"] == pytest.approx(0.4 - PARENT_FLOPS / budget)  # 0.2
    assert row["savings_amortized_flops"] == pytest.approx(0.4 - PARENT_FLOPS / budget / 4)  # 0.35
    assert row["savings_amortized_flops_lo"] == pytest.approx(row["savings_flops_lo"] - PARENT_FLOPS / budget / 4)
    assert row["amortize"] == 4
    at_2x = _row(sweep, "2x-p300", "ligo")  # the same parent weighs half as much against twice the budget
    assert at_2x["savings_charged_flops"] == pytest.approx(0.2 - PARENT_FLOPS / (2 * budget))
    charged_in_full = collect(plan, tmp_path, amortize=1)
    assert _row(charged_in_full, "1x-p300", "ligo")["savings_amortized_flops"] == pytest.approx(0.2)
    assert _row(sweep, "1x-p300", "scratch")["state"] == analysis.REFERENCE
    with pytest.raises(BenchError, match="amortize"):
        collect(plan, tmp_path, amortize=0)


def test_break_even_of_a_sweep_sunk_charged_and_quality(tmp_path):
    # sunk: 0.6, 0.3, 0.1 then not reached at 8x; charged (parent 2e10 = 0.2 of 1x): 0.4, 0.2, 0.05, -
    plan = synthetic_sweep(tmp_path, {"stackbert": [0.6, 0.3, 0.1, None], "ki": [None, None, None, None]},
                           [1, 2, 4, 8])
    sweep = collect(plan, tmp_path)
    rows = {(row.method, row.basis): row for row in break_evens(sweep)}
    sunk = rows["stackbert", "flops_sunk"].result
    assert [(c.low / 1e11, c.high / 1e11, c.bound) for c in sunk.crossings] == [(4, 8, "≤")]
    assert rows["stackbert", "flops_charged"].result.crossings[0].high == 8e11
    assert rows["ki", "flops_sunk"].result.kind == "saves nowhere"
    quality = rows["stackbert", "quality"].result  # better than scratch until its final loss passes 6 at 8x
    assert quality.crossings and quality.crossings[0].direction == "stops" and quality.crossings[0].high == 8e11
    text = break_even_text(sunk, sweep)
    assert text.startswith("stops paying ≤ ") and "between 4x and 8x" in text
    assert "never: saves at no budget measured" in break_even_text(rows["ki", "flops_sunk"].result, sweep)
    assert ("flops_amortized" not in {basis for _, basis in rows})  # K = 1: amortised is the charged column


def test_a_failed_point_shows_as_failed_not_as_a_gap(tmp_path):
    plan = synthetic_sweep(tmp_path, {"stackbert": [0.5, 0.3, 0.2], "ligo": [0.5, 0.4, 0.3]}, [1, 2, 4],
                           failed={"2x-p300": "BenchError: the budget is too small for ligo's operator phase"},
                           states={"4x-p300": {("ligo", 1): "diverged"}})
    report = build_sweep_report(plan, tmp_path)
    sweep = report.sweep
    assert set(sweep.rows[sweep.rows["point"] == "2x-p300"]["state"]) == {analysis.FAILED_STATE}
    assert _row(sweep, "4x-p300", "ligo")["state"] == analysis.FAILED_STATE  # one diverged seed of three
    assert "ligo-s1 diverged" in _row(sweep, "4x-p300", "ligo")["reason"]
    assert math.isnan(_row(sweep, "4x-p300", "ligo")["savings_flops"])  # the two survivors are not shown alone
    assert _row(sweep, "4x-p300", "stackbert")["state"] == analysis.MEASURED
    markdown = (tmp_path / "report.md").read_text()
    flops_table = markdown.split("### FLOPs saved, parent sunk")[1].split("###")[0]
    ligo_line = next(line for line in flops_table.splitlines() if line.startswith("| ligo"))
    assert ligo_line.count("**failed**") == 2 and "50.0%" in ligo_line
    assert "| 2x-p300 | failed |" in markdown and "too small for ligo" in markdown
    assert "not measured: 2x failed, 4x failed" in markdown
    csv = pd.read_csv(tmp_path / "sweep.csv")
    assert len(csv) == 9 and (csv["state"] == "failed").sum() == 4  # 3 methods at 2x, ligo at 4x
    assert (tmp_path / "plots" / "savings_vs_budget.png").stat().st_size > 10_000


def test_a_point_whose_comparison_raises_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    from bench.errors import RunsFailed
    from bench.sweep.run import Planned, SweepOptions, run_points

    plan = synthetic_plan([1, 2, 4], ["ligo"])
    write_plan(tmp_path, plan)

    def compare(config, echo):  # a stand-in for runner.compare: writes the point, or raises as a comparison can
        name = config.out.name
        if name == "2x-p300":
            raise RunsFailed("some runs failed:\nligo-s0: RuntimeError: NaN in the operator")
        write_point(config.out, plan.budget(name.split("-")[0]).flops, {"ligo": 0.3})

    planned = Planned(plan, plan.points, 0.1, 0.05, 16, {300: True})
    outcomes = run_points(planned, SweepOptions(out=tmp_path), echo=lambda line: None, compare=compare,
                          report=lambda folder: None)
    assert [outcome["state"] for outcome in outcomes.values()] == ["done", "failed", "done"]
    report = build_sweep_report(plan, tmp_path)
    assert set(report.sweep.rows[report.sweep.rows["point"] == "2x-p300"]["state"]) == {"failed"}
    assert "failed point(s): 2x-p300" in report.text
    assert "RunsFailed: some runs failed" in (tmp_path / "report.md").read_text()


def test_the_micro_batch_is_a_setting_of_every_points_comparison(tmp_path):
    from bench.sweep.command import options_from
    from bench.sweep.run import compare_config

    plan = synthetic_plan([1, 2], ["ligo"])
    options = options_from(_parser().parse_args(["--out", str(tmp_path), "--micro-batch", "4"]))
    assert {compare_config(plan, point, options, resume=False).micro_batch for point in plan.points} == {4}


def test_an_interrupted_point_is_incomplete_not_failed(tmp_path):
    plan = synthetic_sweep(tmp_path, {"ligo": [0.5, 0.3]}, [1, 2], states={"2x-p300": {("ligo", 2): "running"}})
    write_point_status(plan.points[1], tmp_path, "running")
    sweep = collect(plan, tmp_path)
    assert _row(sweep, "2x-p300", "ligo")["state"] == analysis.INCOMPLETE
    assert _row(sweep, "2x-p300", "scratch")["state"] == analysis.REFERENCE
    assert list(sweep.points["state"]) == ["done", "incomplete"]


# --------------------------------------------------------------------------- extrapolation


def test_the_power_law_fit_recovers_a_known_curve_and_its_break_even():
    budgets = [1e11, 2e11, 4e11, 8e11]
    scratch = fit_power_law(budgets, [5.0 + 2.0 * (c / 1e11) ** -0.5 for c in budgets])
    grown = fit_power_law(budgets, [5.3 + 1.0 * (c / 1e11) ** -0.5 for c in budgets])
    assert scratch.e == pytest.approx(5.0, abs=1e-3) and scratch.alpha == pytest.approx(0.5, rel=1e-2)
    assert max(abs(r) for r in grown.residuals) < 1e-4 and grown.dof == 1
    # the curves cross where 0.3 = 1.0·x^-0.5, x = 1/0.09: the grown model stops paying beyond it
    at, direction = extrapolated_break_even(grown, scratch, 8e11)
    assert direction == "stops" and at == pytest.approx(1e11 / 0.09, rel=1e-2)
    assert "at least 3" in fit_power_law(budgets[:2], [6.0, 5.9])
    assert "does not fall" in fit_power_law(budgets[:3], [5.0, 5.5, 6.0])


def test_extrapolated_values_never_appear_in_measured_tables(tmp_path):
    plan = synthetic_sweep(tmp_path, {"stackbert": [0.6, 0.4, 0.2, 0.1]}, [1, 2, 4, 8])
    report = build_sweep_report(plan, tmp_path)
    assert report.extrapolation is not None
    measured = pd.read_csv(tmp_path / "sweep.csv")
    assert not [column for column in measured.columns if "extrapol" in column]
    assert not [column for column in pd.read_csv(tmp_path / "breakeven.csv").columns if "extrapol" in column]
    extrapolated = pd.read_csv(tmp_path / "extrapolated.csv")
    keys = {"method", "parent_steps", "basis", "budget", "budget_flops", "final_val_loss", "table"}
    assert set(extrapolated.columns) - keys and all(column.startswith("extrapolated_")
                                                    for column in set(extrapolated.columns) - keys)
    markdown = (tmp_path / "report.md").read_text()
    before, heading, after = markdown.partition("## Extrapolation (fitted, not measured)")
    assert heading and "extrapol" not in before.replace(str(tmp_path), "SWEEP_DIR").lower()
    assert "Residuals (measured − fitted)" in after and "extrapolated_loss_fit.png" in after
    assert (tmp_path / "plots" / "extrapolated_loss_fit.png").exists()
    without = build_sweep_report(plan, tmp_path, extrapolation=False)
    assert without.extrapolation is None and "## Extrapolation" not in (tmp_path / "report.md").read_text()


def test_several_parents_give_a_table_and_heatmap_by_parent_and_budget(tmp_path):
    budgets = [Budget(f"{r}x", f"{r}x", "relative", r, r * REFERENCE_STEPS, r * REFERENCE_STEPS * STEP_FLOPS)
               for r in (1, 2)]
    plan = Plan("bert-nano:bert-micro", ["scratch", "ligo"], 2, True, REFERENCE_STEPS, STEP_FLOPS, budgets,
                [300, 900], points=make_points(budgets, [300, 900]))
    write_plan(tmp_path, plan)
    for point in plan.points:
        parent_flops = PARENT_FLOPS * point.parent_steps / 300
        write_point(point.path(tmp_path), plan.budget(point.budget).flops,
                    {"ligo": 0.3 if point.parent_steps == 300 else 0.5}, seeds=2, parent_flops=parent_flops)
        write_point_status(point, tmp_path, DONE)
    report = build_sweep_report(plan, tmp_path, amortize=3)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Savings by parent and budget" in markdown and "| 900 |" in markdown
    assert (tmp_path / "plots" / "savings_heatmap.png").exists()
    bases = {row.basis for row in report.break_evens}
    assert "flops_amortized" in bases and {row.parent_steps for row in report.break_evens} == {300, 900}


# --------------------------------------------------------------------------- end to end






@pytest.mark.slow
def test_a_tiny_sweep_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--pair", "bert-nano:bert-micro", "--methods", "scratch,stackbert", "--budgets", "0.02x,12",
            "--parent-steps", "4", "--seeds", "1", "--corpus", str(corpus), "--out", str(out), "--no-progress"]
    assert run(_parser().parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "estimate for the whole sweep" in printed and f"sweep: {out}/" in printed
    for point, steps in (("0.02x-p4", 6), ("12steps-p4", 12)):
        folder = out / "points" / point
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["budget"]["large_steps_equivalent"] == pytest.approx(steps)
        for run_dir in ("scratch-s0", "stackbert-s0"):
            assert json.loads((folder / "runs" / run_dir / "status.json").read_text())["state"] == "done"
        assert (folder / "report.md").exists() and (folder / "parent" / "curve.csv").exists()
        assert json.loads((out / "status" / f"{point}.json").read_text())["state"] == "done"
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 4 and set(table["state"]) == {"measured", "reference"}
    assert list(table[table["method"] == "stackbert"]["budget"]) == ["0.02x", "12steps"]
    assert (out / "sweep.parquet").exists() and (out / "breakeven.csv").exists()
    markdown = (out / "report.md").read_text()
    assert "## Break-even budgets: FLOPs" in markdown and "| stackbert |" in markdown
    assert (out / "plots" / "savings_vs_budget.png").exists() and (out / "plots" / "loss_vs_budget.png").exists()
    # again without --resume: refused before anything runs; with --resume every run is skipped
    with pytest.raises(BenchError, match="already hold a comparison"):
        run(_parser().parse_args(argv))
    assert run(_parser().parse_args([*argv, "--resume", "--point", "12steps-p4"])) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 2
    with pytest.raises(BenchError, match="no point"):
        run(_parser().parse_args([*argv, "--resume", "--point", "3x-p4"]))
