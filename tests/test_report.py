"""Savings, statistics and the report, from synthetic run directories laid out as the training loop writes them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.data.reference import reference_warning
from bench.errors import BenchError
from bench.report import CI_METHOD, PLOT_FILES, analyse, build_report, crossing_position, t_interval, value_at
from bench.report.plots import method_colours, plot_curves
from bench.report.statistics import t_quantile
from bench.report.tables import format_markdown
from bench.runner.comparison import report as report_command

EVAL_STEPS = list(range(0, 101, 10))  # the budget is 100 steps; eval every 10, the first before training
SCRATCH_FLOPS_PER_STEP = 1.2e11  # scratch spends 1.2e13 FLOPs at the budget
SYNTHETIC_PEAK = 1e12  # FLOP/s: scratch's 1.2e11 FLOPs per 0.5 s step is an MFU of 24%
SYNTHETIC_PEAK_SOURCE = "measured matmul peak: float32 1024x1024 torch.mm, 2 threads, Synthetic CPU"
SYNTHETIC_CPU = {"cpu_model": "Synthetic CPU", "cpu_cores": 2, "torch_threads": 2, "platform": "Linux",
                 "torch": "2.13.0", "gpu_count": 0, "gpu_model": None, "gpu_driver": None}


@dataclass
class Spec:
    """A synthetic method: its validation loss as a function of (step, seed) and what each step costs."""

    loss: Callable[[int, int], float]
    flops_per_step: float = SCRATCH_FLOPS_PER_STEP
    seconds_per_step: float = 0.5
    phases: tuple[tuple[str, int], ...] = (("train", 100),)  # (name, steps), adding up to the budget
    needs_parent: bool = True
    states: dict[int, str] = field(default_factory=dict)  # seed -> state other than "done"


def curve_loss(floor: float, start: float, rate: float) -> Callable[[int, int], float]:
    """floor + (start - floor)·exp(-rate·progress), each seed 0.01 higher than the one before."""
    return lambda step, seed: floor + (start - floor) * math.exp(-rate * step / 100) + 0.01 * seed


def default_specs() -> dict[str, Spec]:
    """scratch; ligo reaches τ near step 53 (≈ +47%); ki reaches it near step 85 but pays 1.6e11 FLOPs per
    step for its teacher (≈ -13%); mslt never gets there."""
    return {
        "scratch": Spec(curve_loss(3.0, 10.0, 3.0), needs_parent=False),
        "ligo": Spec(curve_loss(3.0, 8.0, 5.0), phases=(("operator", 10), ("train", 90))),
        "ki": Spec(curve_loss(3.0, 10.0, 3.5), flops_per_step=1.6e11),
        "mslt": Spec(curve_loss(4.0, 8.0, 3.0), phases=(("growth-1", 50), ("joint", 50))),
    }


def _write_csv(path: Path, rows: list[dict], optional: list[str], keep_optional: bool) -> None:
    frame = pd.DataFrame(rows)
    if not keep_optional:
        frame = frame.drop(columns=optional)
    frame.to_csv(path, index=False)


def _write_run(folder: Path, spec: Spec, seed: int | None, method: str, optional: bool) -> None:
    folder.mkdir(parents=True)
    phase_of_step = [name for name, steps in spec.phases for _ in range(steps)]
    curve = []
    for step in EVAL_STEPS:
        train_s = step * spec.seconds_per_step
        energy = train_s * 2e-5
        curve.append({"step": step, "tokens": step * 4096, "flops": step * spec.flops_per_step, "train_s": train_s,
                      "phase": phase_of_step[max(step - 1, 0)], "train_loss": spec.loss(step, seed or 0) + 0.05,
                      "val_loss": spec.loss(step, seed or 0), "reference_s": 0.9 * train_s, "wall_s": 1.2 * train_s,
                      "eval_s": 0.1 * step, "energy_kwh": energy, "co2_kg": 0.475 * energy,
                      "cost_cloud_usd": train_s / 3600 * 0.085, "cost_energy_usd": energy * 1.58 * 0.13,
                      "mfu": spec.flops_per_step / (spec.seconds_per_step * SYNTHETIC_PEAK) if step else math.nan})
    _write_csv(folder / "curve.csv", curve, ["reference_s", "wall_s", "eval_s", "energy_kwh", "co2_kg",
                                              "cost_cloud_usd", "cost_energy_usd", "mfu"], optional)
    phases = []
    for name, steps in spec.phases:
        train_s = steps * spec.seconds_per_step
        flops = steps * spec.flops_per_step
        phases.append({"phase": name, "steps": steps, "flops_executed": flops, "flops_fvcore": flops,
                       "flops_analytic": flops, "train_s": train_s, "eval_s": 0.1 * steps, "overhead_s": 0.2,
                       "reference_s": 0.9 * train_s, "device_hours": train_s / 3600, "energy_kwh": train_s * 2e-5,
                       "energy_method": "cpu:tdp_estimate+ram:ram_heuristic", "co2_kg": 0.475 * train_s * 2e-5,
                       "carbon_source": "world average", "cost_cloud_usd": train_s / 3600 * 0.085,
                       "cost_cloud_price": "cpu-core $0.0425/vCPU-hour", "cost_energy_usd": train_s * 2e-5 * 1.58 * 0.13,
                       "mfu": flops / (train_s * SYNTHETIC_PEAK), "mfu_peak_flops": SYNTHETIC_PEAK,
                       "mfu_peak_source": SYNTHETIC_PEAK_SOURCE})
    _write_csv(folder / "phases.csv", phases, ["flops_fvcore", "flops_analytic", "eval_s", "overhead_s",
                                                "reference_s", "device_hours", "energy_kwh", "energy_method",
                                                "co2_kg", "carbon_source", "cost_cloud_usd", "cost_cloud_price",
                                                "cost_energy_usd", "mfu", "mfu_peak_flops", "mfu_peak_source"],
               optional)
    state = spec.states.get(seed, "done")
    status = {"state": state, "reason": None if state == "done" else "loss became NaN", "method": method,
              "seed": seed, "final_val_loss": spec.loss(100, seed or 0)}
    (folder / "status.json").write_text(json.dumps(status))


def make_run_dir(root: Path, specs: dict[str, Spec] | None = None, *, seeds=(0, 1, 2), parent: bool = True,
                 optional: bool = True, hardware: dict | None = None, pair: str = "bert-nano:bert-micro") -> Path:
    """A run directory as the training loop writes it (manifest, runs/<method>-s<seed>/, parent/)."""
    specs = default_specs() if specs is None else specs
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "pair": pair,
        "budget": {"unit": "flops", "value": 1.2e13, "flops": 1.2e13},
        "seeds": list(seeds),
        "methods": {name: {"needs_parent": spec.needs_parent, "lr": 1e-3} for name, spec in specs.items()},
        "hardware": hardware or SYNTHETIC_CPU,
        "prices": {"as_of": "2026-11-01"},
        "data": {}, "train": {}, "versions": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    for name, spec in specs.items():
        for seed in seeds:
            _write_run(root / "runs" / f"{name.replace(':', '_')}-s{seed}", spec, seed, name, optional)
    if parent:
        _write_run(root / "parent", Spec(curve_loss(3.6, 10.0, 4.0), flops_per_step=3e10, seconds_per_step=0.1),
                   None, "parent", optional)
    return root


def _row(frame: pd.DataFrame, method: str, seed: int | None = None) -> pd.Series:
    rows = frame[frame["method"] == method]
    if seed is not None:
        rows = rows[rows["seed"] == seed]
    assert len(rows) == 1
    return rows.iloc[0]


# --------------------------------------------------------------------------- crossing point


def test_crossing_is_interpolated_between_the_bracketing_eval_points():
    position = crossing_position([10.0, 8.0, 6.0, 4.0], target=7.0)
    assert position == pytest.approx(1.5)
    assert value_at([0.0, 10.0, 20.0, 30.0], position) == pytest.approx(15.0)
    assert crossing_position([10.0, 8.0, 7.0, 4.0], target=7.0) == pytest.approx(2.0)  # exactly on a point


def test_reaching_at_the_first_eval_costs_that_points_cost():
    position = crossing_position([5.0, 4.0, 3.0], target=6.0)
    assert position == 0.0
    assert value_at([2.5e9, 1e10, 2e10], position) == 2.5e9


def test_never_reaching_is_none_not_a_cost():
    assert crossing_position([10.0, 8.0, 6.5, 6.1], target=6.0) is None


def test_non_monotone_curve_uses_the_first_crossing():
    # reaches 7 between points 0 and 1, bounces back above, and crosses again between 2 and 3
    position = crossing_position([10.0, 6.0, 9.0, 5.0], target=7.0)
    assert position == pytest.approx(0.75)


def test_value_at_propagates_an_unmeasured_cost():
    assert math.isnan(value_at([0.0, float("nan"), 2.0], 0.5))


# --------------------------------------------------------------------------- savings


def test_savings_follow_the_definition_exactly(tmp_path):
    # scratch ends at 4.0 on every seed -> τ = 4.0; "linear" falls 0.1 per step and reaches 4.0 at step 60 exactly
    specs = {"scratch": Spec(lambda step, seed: 4.0 + 6.0 * (1 - step / 100), needs_parent=False),
             "linear": Spec(lambda step, seed: 10.0 - 0.1 * step)}
    report = analyse(make_run_dir(tmp_path / "run", specs))
    assert report.target == pytest.approx(4.0)
    run = _row(report.runs, "linear", 0)
    assert run["cost_to_target_flops"] == pytest.approx(60 * SCRATCH_FLOPS_PER_STEP)
    assert run["savings_flops"] == pytest.approx(0.4)
    assert run["savings_train_s"] == pytest.approx(0.4)
    # parent: 100 steps at 3e10 FLOPs = 3e12 = a quarter of scratch's budget
    assert report.parent_cost["flops"] == pytest.approx(3e12)
    assert run["savings_charged_flops"] == pytest.approx(0.4 - 0.25)
    scratch = _row(report.runs, "scratch", 0)
    assert scratch["savings_flops"] == pytest.approx(0.0)
    assert scratch["savings_charged_flops"] == scratch["savings_flops"]  # scratch uses no parent


def test_cheaper_is_positive_dearer_is_negative_and_never_reaching_is_distinct(tmp_path):
    report = analyse(make_run_dir(tmp_path / "run"))
    table = report.table.set_index("method")
    assert table.at["ligo", "savings_flops"] > 0.3
    assert table.at["ki", "savings_flops"] < -0.05  # reaches τ only after more FLOPs than scratch's whole budget
    assert table.at["ki", "n_reached"] == 3
    mslt = table.loc["mslt"]
    assert not mslt["reached"] and mslt["n_reached"] == 0
    # no seed gets to its τ_s: each is judged at its own loss, which scratch reaches sooner, so the saving is negative
    assert mslt["savings_flops"] < -0.3
    for seed in (0, 1, 2):
        run = _row(report.runs, "mslt", seed)
        assert not run["reached"] and run["at_own_loss"]
        assert run["target"] == pytest.approx(curve_loss(4.0, 8.0, 3.0)(100, seed))  # its own final loss
        assert run["cost_to_target_flops"] > run["scratch_cost_to_target_flops"]
    mslt_line = next(line for line in report.text.splitlines() if line.startswith("mslt"))
    assert "not reached" in mslt_line and "0/3 reached" in mslt_line
    assert "0.0%" not in mslt_line and "100" not in mslt_line
    # the target shown is the mean of τ_s, scratch's final losses here (strictly falling curves: the fit is the curve)
    scratch_final = [curve_loss(3.0, 10.0, 3.0)(100, seed) for seed in (0, 1, 2)]
    assert report.target == pytest.approx(np.mean(scratch_final))


def test_a_given_target_replaces_scratchs(tmp_path):
    report = analyse(make_run_dir(tmp_path / "run"), target=4.3)
    assert report.target == 4.3 and report.target_source == "given, for every seed"
    assert bool(report.table.set_index("method").at["mslt", "reached"])  # 4.3 is within mslt's reach


def test_without_a_finished_scratch_run_there_are_no_savings(tmp_path):
    specs = default_specs()
    specs["scratch"].states = {0: "failed", 1: "failed", 2: "failed"}
    run_dir = make_run_dir(tmp_path / "run", specs)
    report = analyse(run_dir)
    assert math.isnan(report.target) and report.table["savings_flops"].isna().all()
    assert any("No finished scratch run" in note for note in report.notes)
    given = analyse(run_dir, target=3.4)
    ligo = given.table.set_index("method").loc["ligo"]
    assert ligo["reached"] and math.isnan(ligo["savings_flops"])  # reached, but against no scratch cost
    assert "n/a" in next(line for line in given.text.splitlines() if line.startswith("ligo"))


def test_method_intervals_cover_the_mean_and_only_runs_that_finished_count(tmp_path):
    specs = default_specs()
    specs["ligo"].states = {2: "diverged"}
    report = analyse(make_run_dir(tmp_path / "run", specs))
    ligo = report.table.set_index("method").loc["ligo"]
    assert (ligo["n_runs"], ligo["n_done"], ligo["n_reached"]) == (3, 2, 2)
    assert ligo["savings_flops_lo"] <= ligo["savings_flops"] <= ligo["savings_flops_hi"]
    # each seed's curves sit 0.01 higher than the seed before in ligo and scratch alike: τ_s moves with them, so
    # pairing cancels the shift that a mean τ would turn into seed-to-seed spread
    targets = report.runs[report.runs["method"] == "ligo"]["target"].dropna()
    assert targets.diff().dropna().tolist() == pytest.approx([0.01])
    assert ligo["savings_flops_hi"] - ligo["savings_flops_lo"] < 1e-9
    diverged = _row(report.runs, "ligo", 2)
    assert diverged["state"] == "diverged" and pd.isna(diverged["reached"]) and math.isnan(diverged["savings_flops"])
    assert any("ligo-s2: diverged" in note for note in report.notes)


def test_t_quantiles_match_the_tables():
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(1000) == pytest.approx(1.962, abs=1e-3)  # scipy's, not a cut-off at the normal's 1.96
    with pytest.raises(ValueError):
        t_quantile(0)


def test_t_interval_is_mean_plus_minus_t_standard_errors_and_needs_two_values():
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, s 1, n 3: 2 ± 4.303/√3 (t rounded as printed)
    assert (low, high) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)), abs=1e-3)
    values = [0.41, 0.47, 0.44, 0.52]
    low, high = t_interval(values)
    assert low < np.mean(values) < high
    assert (low + high) / 2 == pytest.approx(np.mean(values))
    assert t_interval([0.4, math.nan, 0.5]) == t_interval([0.4, 0.5])  # a NaN is not a seed
    assert all(math.isnan(bound) for bound in t_interval([0.4]))
    assert all(math.isnan(bound) for bound in t_interval([]))


def _seed_dependent(reaching_seeds: set[int]) -> Spec:
    """Reaches τ (≈ 3.51) around step 43 on `reaching_seeds`; the others level off at 4.0, above τ."""
    return Spec(lambda step, seed: (3.0 if seed in reaching_seeds else 4.0) + 5.0 * math.exp(-5.0 * step / 100))


def test_seeds_short_of_their_target_count_at_their_own_loss(tmp_path):
    specs = {"scratch": default_specs()["scratch"], "mixed": _seed_dependent({0, 1})}
    report = analyse(make_run_dir(tmp_path / "run", specs))
    runs = report.runs[report.runs["method"] == "mixed"].set_index("seed")
    assert list(runs["reached"]) == [True, True, False] and list(runs["at_own_loss"]) == [False, False, True]
    scratch_budget = 100 * SCRATCH_FLOPS_PER_STEP
    survivors = [1 - runs.at[seed, "cost_to_target_flops"] / scratch_budget for seed in (0, 1)]
    # seed 2 ends at 4.03, which scratch seed 2 reaches after about 64 of its 100 steps: the method's whole budget
    # buys what 64 steps of scratch buy, a negative saving (a censored estimator would read 0 here)
    short = runs.loc[2]
    assert short["target"] == pytest.approx(_seed_dependent({0, 1}).loss(100, 2))
    assert short["cost_to_target_flops"] == pytest.approx(scratch_budget)
    assert 0.6 * scratch_budget < short["scratch_cost_to_target_flops"] < 0.7 * scratch_budget
    matched = 1 - scratch_budget / short["scratch_cost_to_target_flops"]
    assert short["savings_flops"] == pytest.approx(matched) and matched < -0.4
    mixed = report.table.set_index("method").loc["mixed"]
    assert (mixed["n_done"], mixed["n_reached"], mixed["n_seeds"], mixed["n_paired"]) == (3, 2, 3, 3)
    assert mixed["reached"]
    assert mixed["savings_flops"] == pytest.approx(np.mean([*survivors, matched]))
    assert mixed["savings_flops"] < np.mean(survivors) - 0.3  # the survivor-only mean overstates it
    assert (mixed["savings_flops_lo"], mixed["savings_flops_hi"]) == pytest.approx(
        t_interval([*survivors, matched]))
    assert mixed["ci_method"] == CI_METHOD and "paired" in CI_METHOD and "own loss" in CI_METHOD
    line = next(line for line in report.text.splitlines() if line.startswith("mixed"))
    assert "2/3 reached" in line and f"{100 * mixed['savings_flops']:.1f}%" in line
    assert "a seed short of τ_s at its own loss [95% t-interval]" in report.text


def test_a_seed_without_a_scratch_partner_is_named_and_left_out(tmp_path):
    specs = default_specs()
    specs["scratch"].states = {2: "failed"}
    report = analyse(make_run_dir(tmp_path / "run", specs))
    ligo = report.table.set_index("method").loc["ligo"]
    assert (ligo["n_done"], ligo["n_paired"]) == (3, 2)
    paired = report.runs[(report.runs["method"] == "ligo") & report.runs["paired"]]
    assert ligo["savings_flops"] == pytest.approx(paired["savings_flops"].mean())
    assert math.isnan(_row(report.runs, "ligo", 2)["savings_flops"])
    assert any(note.startswith("ligo-s2") and "pair" in note for note in report.notes)


def test_fewer_than_half_the_seeds_reaching_is_not_reached(tmp_path):
    specs = {"scratch": default_specs()["scratch"], "mixed": _seed_dependent({0})}
    report = analyse(make_run_dir(tmp_path / "run", specs))
    mixed = report.table.set_index("method").loc["mixed"]
    assert (mixed["n_done"], mixed["n_reached"]) == (3, 1) and not mixed["reached"]
    line = next(line for line in report.text.splitlines() if line.startswith("mixed"))
    assert "1/3 reached" in line and "not reached" in line and line.count("%") == 1  # the MFU's; no savings
    markdown = format_markdown(report)
    savings_rows = [line for line in markdown.splitlines() if line.startswith("| mixed |")][:3]
    assert len(savings_rows) == 3  # main table, sunk, charged
    for row in savings_rows:
        assert "1/3 reached" in row and "not reached" in row


def test_method_name_with_a_variant_is_read_from_status(tmp_path):
    specs = {"scratch": default_specs()["scratch"],
             "stackbert:progressive": Spec(curve_loss(3.0, 10.0, 4.0), needs_parent=False)}
    run_dir = make_run_dir(tmp_path / "run", specs, seeds=(0,))
    assert (run_dir / "runs" / "stackbert_progressive-s0").is_dir()
    report = analyse(run_dir)
    row = report.table.set_index("method").loc["stackbert:progressive"]
    assert row["n_done"] == 1 and not row["needs_parent"]
    assert row["savings_flops"] == row["savings_charged_flops"]
    assert math.isnan(row["savings_flops_lo"])  # one seed: a mean, no interval


# --------------------------------------------------------------------------- files and plots


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_report_writes_tables_markdown_and_plots(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", pair="bert-small:bert-base")
    report = build_report(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert len(summary) == 4 * 3 and {"method", "seed", "savings_flops", "reached", "at_own_loss", "final_val_loss",
                                      "cost_to_target_flops", "outside_plain_large"} <= set(summary)
    assert summary.loc[summary["method"] == "mslt", "at_own_loss"].all()
    assert not summary.loc[summary["method"] == "ligo", "at_own_loss"].any()
    parquet = pd.read_parquet(run_dir / "summary.parquet")
    assert parquet["savings_flops"].equals(report.runs["savings_flops"])
    for name in PLOT_FILES:
        assert _is_png(run_dir / "plots" / name), name
    markdown = (run_dir / "report.md").read_text()
    for expected in ("bert-small:bert-base", "2026-11-01", "Synthetic CPU", "not reached", "parent (SMALL)",
                     "plots/savings.png", '"lr": 0.001', "parent charged", "cpu:tdp_estimate+ram:ram_heuristic",
                     "cpu-core $0.0425/vCPU-hour", "How to read", "own loss", "95% Student-t",
                     "n = 3 finished seed(s) per method", "fewer than 5 seeds", "outside plain LARGE",
                     "3/3 reached", "0/3 reached"):
        assert expected in markdown, expected
    assert "bootstrap" not in markdown
    assert "ligo" in report.text and "parent (SMALL)" in report.text
    assert set(report.files) >= {run_dir / "summary.csv", run_dir / "report.md"}


def test_report_copes_without_parent_and_without_optional_columns(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", parent=False, optional=False)
    out = tmp_path / "elsewhere"
    report = build_report(run_dir, out=out)
    for name in PLOT_FILES:
        assert _is_png(out / "plots" / name), name
    assert (out / "report.md").exists() and not (run_dir / "report.md").exists()
    ligo = report.table.set_index("method").loc["ligo"]
    assert ligo["savings_flops"] > 0.3  # FLOPs and train time are always there
    for unmeasured in ("savings_energy_kwh", "savings_cost_cloud_usd", "savings_reference_s", "total_energy_kwh",
                       "total_co2_kg", "savings_charged_flops"):
        assert math.isnan(ligo[unmeasured]), unmeasured  # not measured is n/a, never 0
    assert ligo["energy_method"] == "n/a"
    assert any("parent's cost is unknown" in note for note in report.notes)
    assert "n/a" in next(line for line in report.text.splitlines() if line.startswith("ligo"))


def test_parent_cost_from_the_manifest_when_there_is_no_parent_folder(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", parent=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["parent"] = {"source": "hf-hub", "cost": {"flops": 6e12}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    report = analyse(run_dir)
    ligo = report.table.set_index("method").loc["ligo"]
    assert report.parent_source == "manifest"
    assert ligo["savings_charged_flops"] == pytest.approx(ligo["savings_flops"] - 0.5)
    assert math.isnan(ligo["savings_charged_train_s"])  # the parent's time is unknown


# --------------------------------------------------------------------------- bad input


def test_bad_run_directories_are_bench_errors(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        analyse(tmp_path / "nowhere")
    run_dir = make_run_dir(tmp_path / "run")
    (run_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BenchError, match="not valid JSON"):
        analyse(run_dir)
    run_dir = make_run_dir(tmp_path / "run2")
    curve = run_dir / "runs" / "ligo-s0" / "curve.csv"
    pd.read_csv(curve).drop(columns=["val_loss"]).to_csv(curve, index=False)
    with pytest.raises(BenchError, match="lacks the column"):
        analyse(run_dir)


# --------------------------------------------------------------------------- budget outside plain LARGE training


def _column(markdown: str, method: str, header: str) -> str:
    """The cell of `method` under `header` in report.md's main table."""
    lines = markdown.split("## Main table", 1)[1].splitlines()
    headers = next(line for line in lines if line.startswith("| method |")).strip("|").split("|")
    row = next(line for line in lines if line.startswith(f"| {method} |")).strip("|").split("|")
    return row[[cell.strip() for cell in headers].index(header)].strip()


def _mark_plain_large(run_dir: Path, folder: str, flags: list[str]) -> None:
    path = run_dir / "runs" / folder / "phases.csv"
    phases = pd.read_csv(path)
    phases["plain_large"] = flags
    phases.to_csv(path, index=False)


def test_share_outside_plain_large_comes_from_the_phase_flag(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    for seed in (0, 1, 2):
        _mark_plain_large(run_dir, f"ligo-s{seed}", ["False", "true"])  # operator 10 steps, then 90 plain steps
        _mark_plain_large(run_dir, f"scratch-s{seed}", ["True"])
        _mark_plain_large(run_dir, f"mslt-s{seed}", ["0", "1"])  # 50 shallow steps, 50 joint
    _mark_plain_large(run_dir, "ki-s0", ["False"])  # ki-s1, ki-s2 are older records without the flag
    report = analyse(run_dir)
    table = report.table.set_index("method")
    assert _row(report.runs, "ligo", 0)["outside_plain_large"] == pytest.approx(0.1)
    assert table.at["ligo", "outside_plain_large"] == pytest.approx(0.1)
    assert table.at["scratch", "outside_plain_large"] == 0.0
    assert table.at["mslt", "outside_plain_large"] == pytest.approx(0.5)
    assert _row(report.runs, "ki", 0)["outside_plain_large"] == 1.0
    assert math.isnan(table.at["ki", "outside_plain_large"])  # not a mean of the one seed that says
    markdown = format_markdown(report)
    assert _column(markdown, "ligo", "outside plain LARGE") == "10.0%"
    assert _column(markdown, "scratch", "outside plain LARGE") == "0.0%"
    assert _column(markdown, "ki", "outside plain LARGE") == "n/a"
    assert "operator fitting" in markdown and "teacher forward passes" in markdown


def test_share_outside_plain_large_is_na_for_records_without_the_flag(tmp_path):
    report = analyse(make_run_dir(tmp_path / "run"))
    assert report.runs["outside_plain_large"].isna().all()
    assert report.table["outside_plain_large"].isna().all()
    markdown = format_markdown(report)
    for method in ("scratch", "ligo", "ki", "mslt"):
        assert _column(markdown, method, "outside plain LARGE") == "n/a"


# --------------------------------------------------------------------------- MFU


def _recomputed_mfu(run_dir: Path, folder: str) -> float:
    """Σ flops_executed / (Σ train_s × devices × peak) from a run's phases.csv (a CPU phase is one device)."""
    phases = pd.read_csv(run_dir / folder / "phases.csv")
    (peak,) = phases["mfu_peak_flops"].unique()
    return phases["flops_executed"].sum() / (phases["train_s"].sum() * 1 * peak)


def test_mfu_is_the_runs_flops_over_its_train_seconds_times_the_peak(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    for seed, slower in ((0, 4.0), (1, 2.0), (2, 1.0)):  # ligo's operator phase slower than its main phase
        path = run_dir / "runs" / f"ligo-s{seed}" / "phases.csv"
        phases = pd.read_csv(path)
        phases.loc[0, "train_s"] *= slower
        phases["mfu"] = phases["flops_executed"] / (phases["train_s"] * SYNTHETIC_PEAK)
        phases.to_csv(path, index=False)
    report = build_report(run_dir)
    expected = [_recomputed_mfu(run_dir, f"runs/ligo-s{seed}") for seed in (0, 1, 2)]
    assert expected[0] < expected[1] < expected[2] == pytest.approx(0.24)  # not a plain mean of the phases' MFUs
    for seed in (0, 1, 2):
        assert _row(report.runs, "ligo", seed)["mfu"] == pytest.approx(expected[seed])
    table = report.table.set_index("method")
    assert table.at["ligo", "mfu"] == pytest.approx(np.mean(expected))
    assert table.at["scratch", "mfu"] == pytest.approx(_recomputed_mfu(run_dir, "runs/scratch-s0")) == 0.24
    assert table.at["ligo", "mfu_peak_source"] == SYNTHETIC_PEAK_SOURCE
    summary = pd.read_csv(run_dir / "summary.csv")
    assert {"mfu", "mfu_peak_source"} <= set(summary)
    markdown = (run_dir / "report.md").read_text()
    assert _column(markdown, "ligo", "MFU") == f"{100 * np.mean(expected):.3g}%"
    assert _column(markdown, "scratch", "MFU") == "24%"
    assert _column(markdown, "parent (SMALL)", "MFU") == f"{100 * _recomputed_mfu(run_dir, 'parent'):.3g}%"
    assert markdown.count(SYNTHETIC_PEAK_SOURCE) == 1 and f"- MFU peak: {SYNTHETIC_PEAK_SOURCE}" in markdown
    assert "MFU" in report.text.splitlines()[2]  # the terminal table's header


def test_mfu_without_a_known_peak_reads_unavailable_never_zero(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    _set_phase_columns(run_dir, "ki-s0", mfu=[math.nan], mfu_peak_flops=[math.nan],
                       mfu_peak_source=["unavailable: mps not in the peak table"])
    report = analyse(run_dir)
    assert math.isnan(_row(report.runs, "ki", 0)["mfu"]) and _row(report.runs, "ki", 1)["mfu"] > 0
    ki = report.table.set_index("method").loc["ki"]
    assert math.isnan(ki["mfu"])  # not the mean of the two seeds that had a peak
    markdown = format_markdown(report)
    assert _column(markdown, "ki", "MFU") == "unavailable" and _column(markdown, "ligo", "MFU") == "24%"
    assert "unavailable: mps not in the peak table" in markdown
    assert "unavailable" in next(line for line in report.text.splitlines() if line.startswith("ki "))
    older = format_markdown(analyse(make_run_dir(tmp_path / "older", optional=False)))
    assert _column(older, "ligo", "MFU") == "n/a"  # records written before MFU: not measured, not unavailable


# --------------------------------------------------------------------------- contention and calibration


def _set_phase_columns(run_dir: Path, folder: str, **columns) -> None:
    path = run_dir / "runs" / folder / "phases.csv"
    phases = pd.read_csv(path)
    for name, values in columns.items():
        phases[name] = values
    phases.to_csv(path, index=False)


def test_a_contended_scratch_run_makes_every_methods_wall_and_energy_savings_unreliable(tmp_path):
    from bench.report.contention import UNRELIABLE

    run_dir = make_run_dir(tmp_path / "run")
    for folder in [path.name for path in (run_dir / "runs").iterdir()]:
        rows = len(pd.read_csv(run_dir / "runs" / folder / "phases.csv"))
        _set_phase_columns(run_dir, folder, slowdown=[1.05] * rows, load_avg=[1.9] * rows, contended=[False] * rows)
    _set_phase_columns(run_dir, "scratch-s1", slowdown=[2.4], load_avg=[5.2], contended=[True])
    report = analyse(run_dir)
    assert _row(report.runs, "scratch", 1)["contended"] and not _row(report.runs, "ligo", 0)["contended"]
    assert _row(report.runs, "scratch", 1)["slowdown"] == pytest.approx(2.4)
    table = report.table.set_index("method")
    assert table["time_contended"].all() and (table["contended_runs"] == "scratch-s1").all()
    markdown = format_markdown(report)
    assert _column(markdown, "ligo", "wall saved") == UNRELIABLE
    assert _column(markdown, "ligo", "FLOPs saved").endswith("]")  # FLOPs savings stay numbers
    assert "train ×2.4 (load 5.2)" in markdown and "rerun on a quiet machine" in markdown
    assert "inherits wall time's contention" in markdown  # the synthetic runs' energy is a TDP estimate
    assert "Contended runs" in report.text and "scratch-s1" in report.text
    assert not math.isnan(table.at["ligo", "savings_train_s"])  # the number is kept for the gate and summary.csv


def test_a_contended_method_run_spoils_only_that_methods_wall_time(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    _set_phase_columns(run_dir, "ligo-s2", slowdown=[1.1, 3.0])
    _set_phase_columns(run_dir, "ki-s0", slowdown=[1.6], steps=[4])  # too few steps to judge
    table = analyse(run_dir).table.set_index("method")
    assert table.at["ligo", "time_contended"] and not table.at["ki", "time_contended"]
    assert not table.at["scratch", "time_contended"]


def test_older_records_are_judged_against_the_fastest_run_of_the_same_plain_large_phase(tmp_path):
    """No slowdown column: the plain LARGE phases of all runs train the same model, so one 2x slower is flagged."""
    run_dir = make_run_dir(tmp_path / "run")
    for seed in (0, 1, 2):
        _mark_plain_large(run_dir, f"scratch-s{seed}", ["True"])
        _mark_plain_large(run_dir, f"ligo-s{seed}", ["False", "True"])
    path = run_dir / "runs" / "ligo-s1" / "phases.csv"
    phases = pd.read_csv(path)
    phases.loc[1, "train_s"] *= 2
    phases.to_csv(path, index=False)
    report = analyse(run_dir)
    assert _row(report.runs, "ligo", 1)["contended"] and not _row(report.runs, "ligo", 0)["contended"]
    assert pd.isna(_row(report.runs, "ki", 0)["contended"])  # nothing to compare its phase with: not judged
    assert report.table.set_index("method").at["ligo", "time_contended"]
    assert "calibrated inside each run" in format_markdown(report)


def test_report_says_when_the_calibration_after_the_last_run_moved(tmp_path):
    from bench.calibration import CALIBRATION_FILE, CalibrationTable, Timing

    run_dir = make_run_dir(tmp_path / "run")
    table = CalibrationTable({"a": Timing("a", [0.10, 0.11, 0.105], 0.12, phases=["scratch/train"])})
    table.after = {"a": Timing("a", [0.20, 0.21, 0.22], 0.23)}
    table.save(run_dir / CALIBRATION_FILE)
    markdown = format_markdown(analyse(run_dir))
    assert "calibration table (calibration.csv): 1 phase signature(s)" in markdown
    assert "beyond their spread for 1 of 1" in markdown and "+100%" in markdown
    assert "None found" not in markdown and "Not judged" in markdown  # the synthetic records carry no slowdown


# --------------------------------------------------------------------------- no impossible numbers (issue 19)

SIGNATURES = {"train": "plainlarge01", "joint": "plainlarge01", "operator": "operator0001", "growth-1": "shallow00001"}
FULL_STEP_S = 0.45  # every synthetic step takes 0.5 s: a slowdown of 1.11


def _calibrated_run_dir(root: Path, poisoned: bool) -> Path:
    """A run directory whose phases were charged from a comparison calibration, as the clock writes them, with
    scratch-s1's plain LARGE phase 5x slow. Poisoned: the plain LARGE signature's before value disagreed with the
    after table (found after the runs had judged themselves against it), the shallow one's rounds disagreed (known
    to the runs), and ligo-s0's phases.csv holds an MFU of 260% (a peak measured on a busy machine)."""
    from bench.calibration import (
        CALIBRATION_FILE,
        CalibrationTable,
        Timing,
        contention_verdict,
        marked_unreliable,
        rounds_disagreement,
    )

    run_dir = make_run_dir(root)
    shallow_rounds = [0.2, 1.04, 0.9] if poisoned else [0.2, 0.21, 0.2]
    table = CalibrationTable({
        "plainlarge01": Timing("plainlarge01", [0.4, 0.41, 0.4], FULL_STEP_S),
        "operator0001": Timing("operator0001", [0.4, 0.4, 0.42], FULL_STEP_S),
        "shallow00001": Timing("shallow00001", shallow_rounds, FULL_STEP_S,
                               unreliable_reason=rounds_disagreement(shallow_rounds, 3))})
    table.after = {signature: Timing(signature, list(timing.rounds), timing.full_step_s)
                   for signature, timing in table.before.items()}
    if poisoned:
        table.after["plainlarge01"] = Timing("plainlarge01", [0.034, 0.035, 0.034, 0.034], 0.04)
        table.mark_drift()
    table.save(run_dir / CALIBRATION_FILE)
    for folder in [path.name for path in (run_dir / "runs").iterdir()]:
        phases = pd.read_csv(run_dir / "runs" / folder / "phases.csv")
        if folder == "scratch-s1":
            phases["train_s"] *= 5
        signatures = [SIGNATURES[name] for name in phases["phase"]]
        sources = [marked_unreliable("comparison calibration", table.before[signature].unreliable_reason if
                                     signature == "shallow00001" else "") for signature in signatures]
        slowdown = phases["train_s"] / phases["steps"] / FULL_STEP_S
        _set_phase_columns(run_dir, folder, train_s=phases["train_s"], signature=signatures, reference_source=sources,
                           slowdown=slowdown, load_avg=[1.0] * len(phases),
                           contended=[contention_verdict(value, steps, "unreliable" not in source) for value, steps,
                                      source in zip(slowdown, phases["steps"], sources, strict=True)])
    if poisoned:
        _set_phase_columns(run_dir, "ligo-s0", mfu=[0.24, 2.6])
    return run_dir


def _stored_and_judged_agree(report) -> None:
    """phases.csv's `contended` and the report's verdict are one judgement wherever the calibration stands."""
    from bench.report.contention import judged_phases

    for folder, frame in judged_phases(report.data).items():
        kept = frame[(frame["calibration_problem"] == "") & frame["stored"].notna()]
        assert len(kept) == 0 or (kept["stored"] == kept["contended"]).all(), (folder, kept)


def test_a_poisoned_calibration_and_peak_leave_no_impossible_number_anywhere(tmp_path):
    from bench.report.contention import UNRELIABLE_CALIBRATION

    run_dir = _calibrated_run_dir(tmp_path / "run", poisoned=True)
    report = build_report(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    markdown = (run_dir / "report.md").read_text()
    assert not (summary["mfu"] > 1).any() and math.isnan(_row(report.runs, "ligo", 0)["mfu"])
    assert _row(report.runs, "ligo", 0)["mfu_peak_source"].startswith("unreliable: above the peak (measured matmul")
    for text in (markdown, report.text):
        assert "260%" not in text and "unreliable: above the peak" in text
    assert _column(markdown, "ligo", "MFU") == "unreliable: above the peak" and _column(markdown, "ki", "MFU") == "32%"

    assert not summary["calibration_reliable"].any()  # every run has a plain LARGE or shallow phase
    problems = _row(report.runs, "mslt", 0)["calibration_problem"]
    assert "growth-1: rounds disagree" in problems and "joint: before and after the runs disagree" in problems
    sunk = markdown.split("## Savings by cost, parent sunk", 1)[1].split("##", 1)[0]
    header, ligo = ([cell.strip() for cell in line.strip("|").split("|")] for line in sunk.splitlines()
                    if line.startswith(("| method |", "| ligo |")))
    cells = dict(zip(header, ligo, strict=True))
    assert cells["reference time"] == UNRELIABLE_CALIBRATION and cells["FLOPs"].endswith("]")
    assert "not a measurement for 2 of 3 phase signature(s)" in markdown and UNRELIABLE_CALIBRATION in report.text

    # contention: judged against the fastest run where the calibration is no measurement, and said so
    scratch = _row(report.runs, "scratch", 1)
    assert scratch["contended"] and "train ×5.0 vs the fastest run" in scratch["contended_phases"]
    assert not _row(report.runs, "scratch", 0)["contended"]
    assert "`contended` of 12 phase(s) (ki-s0 train, " in markdown  # the plain LARGE ones: judged, then set aside
    assert "and 8 more) was judged while the run trained" in markdown
    _stored_and_judged_agree(report)


def test_a_normal_calibration_stays_reliable_and_the_report_takes_phases_csvs_verdicts(tmp_path):
    run_dir = _calibrated_run_dir(tmp_path / "run", poisoned=False)
    report = analyse(run_dir)
    assert report.runs["calibration_reliable"].all() and (report.runs["calibration_problem"] == "").all()
    stored = pd.read_csv(run_dir / "runs" / "scratch-s1" / "phases.csv")
    assert stored["contended"].tolist() == [True] and stored["reference_source"].tolist() == ["comparison calibration"]
    scratch = _row(report.runs, "scratch", 1)
    assert scratch["contended"] and scratch["contended_phases"] == "train ×5.6 (load 1.0)"  # against the calibration
    _stored_and_judged_agree(report)
    markdown = format_markdown(report)
    assert "not a measurement" not in markdown and "unreliable: calibration" not in markdown
    assert "within 25%" in markdown and _column(markdown, "ligo", "MFU") == "24%"


def test_old_records_with_an_impossible_slowdown_mark_the_calibration_unreliable(tmp_path):
    """A run directory written before the calibration was checked: a calibration made on a loaded machine (0.845 s
    a step), runs 12x faster than it, phases.csv's `contended` all False, and an MFU of 263%."""
    run_dir = make_run_dir(tmp_path / "run")
    for folder in [path.name for path in (run_dir / "runs").iterdir()]:
        rows = len(pd.read_csv(run_dir / "runs" / folder / "phases.csv"))
        _set_phase_columns(run_dir, folder, slowdown=[0.068 / 0.845] * rows, contended=[False] * rows,
                           reference_source=["comparison calibration"] * rows)
    _set_phase_columns(run_dir, "mslt-s1", mfu=[2.63, 2.63])
    report = analyse(run_dir)
    assert not report.runs["calibration_reliable"].any()
    assert report.runs["calibration_problem"].str.contains("ran 12x faster than calibrated").all()
    assert report.runs["contended"].isna().all()  # nothing to judge against: no signatures, no plain LARGE flags
    assert "unreliable: above the peak" in report.table.set_index("method").at["mslt", "mfu_peak_source"]
    markdown = format_markdown(report)
    assert "263%" not in markdown and _column(markdown, "mslt", "MFU") == "unreliable: above the peak"
    assert _column(markdown, "ligo", "wall saved") != "unreliable: calibration"  # only reference time rests on it


# --------------------------------------------------------------------------- reference lines, growth bump, recipe

REFERENCE_LINES = {"unigram": 6.66, "unigram_copy": 6.17, "predictions": 10080, "how": "context-free predictors"}


def _update_manifest(run_dir: Path, **entries) -> None:
    path = run_dir / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].strip()


def test_reference_lines_sit_beside_tau_and_no_warning_when_tau_is_below(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    _update_manifest(run_dir, reference_lines=REFERENCE_LINES)
    report = analyse(run_dir)
    markdown = format_markdown(report)
    tau = next(line for line in markdown.splitlines() if line.startswith("- target validation loss τ"))
    assert tau.endswith("context-free lines on the same 10,080 predictions: unigram 6.66, unigram + copy 6.17 — "
                        f"τ is {6.17 - report.target:.3g} below the unigram + copy line")
    assert reference_warning(report.target, REFERENCE_LINES) is None
    assert not any("context-free" in note for note in report.notes)
    assert "not below the context-free" not in markdown and "not below the context-free" not in report.text


def test_tau_above_the_unigram_copy_line_is_warned_in_report_md_and_on_stderr(tmp_path, capsys):
    run_dir = make_run_dir(tmp_path / "run")
    lines = {**REFERENCE_LINES, "unigram": 3.9, "unigram_copy": 3.2}  # τ ≈ 3.358: below unigram, above the copy line
    _update_manifest(run_dir, reference_lines=lines)
    report = analyse(run_dir)
    warning = reference_warning(report.target, lines)
    assert warning is not None and "unigram_copy line 3.2000" in warning
    assert warning in report.notes
    markdown = format_markdown(report)
    assert warning in _section(markdown, "Notes")
    assert f"τ is {report.target - 3.2:.3g} above the unigram + copy line" in markdown
    assert warning not in report.text  # the terminal's stdout: the warning goes to stderr, once
    report_command(run_dir)
    assert capsys.readouterr().err.count(warning) == 1


def _boundary_cells(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(method, phase) -> the other cells of the growth-bump table."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in _section(markdown, "What growth cost at the boundary").splitlines() if line.startswith("| ")]
    return {(row[0], row[1]): row[2:] for row in rows[1:]}


def test_the_growth_bump_table_shows_every_phase_boundary(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    for seed in (0, 1, 2):
        _set_phase_columns(run_dir, f"ligo-s{seed}", val_loss_start=[7.0 + seed, 4.0],
                           val_loss_after_1pct=[7.5 + seed, 3.9], steps_1pct=[1, 1])
        _set_phase_columns(run_dir, f"mslt-s{seed}", val_loss_start=[5.0, 4.5], val_loss_after_1pct=[4.8, 4.6],
                           steps_1pct=[1, 1])
        _set_phase_columns(run_dir, f"ki-s{seed}", val_loss_start=[10.0], val_loss_after_1pct=[9.0 if seed < 2 else
                                                                                               math.nan],
                           steps_1pct=[1])
        _set_phase_columns(run_dir, f"scratch-s{seed}", val_loss_start=[10.0], val_loss_after_1pct=[9.9],
                           steps_1pct=[1])
    cells = _boundary_cells(format_markdown(analyse(run_dir)))
    parent = f"{curve_loss(3.6, 10.0, 4.0)(100, 0):.4f}"  # the parent's final validation loss
    ligo_operator_end = np.mean([curve_loss(3.0, 8.0, 5.0)(10, seed) for seed in (0, 1, 2)])
    mslt_growth_end = np.mean([curve_loss(4.0, 8.0, 3.0)(50, seed) for seed in (0, 1, 2)])
    assert cells[("ligo", "operator")] == [parent, "8.0000", "8.5000", "1", "+0.5"]
    assert cells[("ligo", "train")] == [f"{ligo_operator_end:.4f}", "4.0000", "3.9000", "1", "-0.1"]
    assert cells[("mslt", "growth-1")] == [parent, "5.0000", "4.8000", "1", "-0.2"]
    assert cells[("mslt", "joint")] == [f"{mslt_growth_end:.4f}", "4.5000", "4.6000", "1", "+0.1"]
    assert cells[("ki", "train")] == [parent, "10.0000", "not recorded", "1", "not recorded"]  # one seed lacks it
    assert not any(method == "scratch" for method, _ in cells)


def test_an_older_run_directory_reports_the_missing_numbers_as_not_recorded(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")  # no reference lines, boundary columns, recipe or schedule settings
    report = build_report(run_dir)
    markdown = (run_dir / "report.md").read_text()
    assert "context-free lines: not recorded" in markdown
    assert _section(markdown, "What growth cost at the boundary").startswith("Not recorded: these run records predate")
    trained = _section(markdown, "How it was trained")
    assert "- recipe: not recorded" in trained and "- optimizer: not recorded" in trained
    assert "  - ligo: schedule not recorded" in trained
    assert not any("context-free" in note for note in report.notes)
    labels = plot_curves(report, "flops", "FLOPs", method_colours(report.table["method"])).axes[0] \
        .get_legend_handles_labels()[1]
    assert "ligo (mean of 3)" in labels and not any("context-free" in label for label in labels)


def test_how_it_was_trained_names_the_recipe_the_optimizer_and_each_methods_schedule(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    methods = manifest["methods"]
    methods["ligo"] |= {"schedule": "continue", "lr_scale": 1.0}
    methods["mslt"] |= {"schedule": "rewarm", "lr_scale": 0.5, "optimizer": "carry", "embeddings": "output"}
    methods["ki"] |= {"optimizer": "fresh"}
    _update_manifest(run_dir, methods=methods, train={
        "optim": {"lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_fraction": 0.06,
                  "grad_clip": 1.0},
        "recipe": {"name": "growbench-cpu", "source": "growbench's CPU recipe, measured"}})
    trained = _section(format_markdown(analyse(run_dir)), "How it was trained")
    assert "- recipe: growbench-cpu; source: growbench's CPU recipe, measured" in trained
    assert ("- optimizer: AdamW, peak lr 0.001, betas (0.9, 0.98), eps 1e-06, weight decay 0.01 (matrices only), "
            "linear warmup over the first 6% of the budget") in trained and "gradient norm clipped at 1" in trained
    lines = {line.split(":", 1)[0].strip(" -"): line.split(":", 1)[1] for line in trained.splitlines()
             if line.startswith("  - ")}
    assert lines["scratch"] == " the recipe's schedule"
    assert lines["ligo"] == " schedule continue (no warmup after growth: the grown model starts at the peak lr), lr ×1"
    assert lines["mslt"].startswith(" schedule rewarm (the recipe's warmup again, as scratch), lr ×0.5, "
                                    "optimizer carry (") and lines["mslt"].endswith("embeddings output")
    assert lines["ki"] == " the recipe's schedule, optimizer fresh (a new AdamW per stage)"


def test_the_loss_plots_draw_the_reference_lines_labelled(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    _update_manifest(run_dir, reference_lines={"unigram": 11.0, "bigram": 2.5, "predictions": 4096, "how": "causal"})
    report = analyse(run_dir)
    colours = method_colours(report.table["method"])
    for x, label in (("flops", "cumulative executed FLOPs"), ("train_s", "cumulative train time (s)")):
        axes = plot_curves(report, x, label, colours).axes[0]
        handles, labels = axes.get_legend_handles_labels()
        drawn = dict(zip(labels, handles, strict=True))
        assert list(drawn["context-free unigram = 11"].get_ydata()) == [11.0, 11.0]
        assert list(drawn["context-free bigram = 2.5"].get_ydata()) == [2.5, 2.5]
        low, high = axes.get_ylim()
        assert low < 2.5 and high > 11.0  # below every curve, above their 95th percentile: still in view
    assert "unigram 11, bigram 2.5 — τ is" in format_markdown(report)
