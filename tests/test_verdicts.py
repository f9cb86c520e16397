"""report.md's "Verdicts, paired by seed" and verdicts.csv (bench/report/verdicts.py), on synthetic run directories
laid out as the training loop writes them (tests/test_report.py's make_run_dir)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from test_report import Spec, curve_loss, default_specs, make_run_dir

from bench.report import analyse, build_report
from bench.report.estimators import (
    compare_savings,
    final_loss_difference,
    run_curves,
    savings_at_targets,
    seeds_needed,
)
from bench.report.tables import format_markdown
from bench.report.verdicts import TARGETS, method_verdicts, pair_verdicts, paired_table

SECTION = "Verdicts, paired by seed"
SEEDS = (0, 1, 2, 3, 4)


def noisy(loss: Callable[[int, int], float], salt: int, sd: float = 0.01) -> Callable[[int, int], float]:
    """`loss` plus eval noise of `sd` nats, fixed per (seed, step) and different for each `salt` (method)."""
    return lambda step, seed: loss(step, seed) + sd * float(np.random.default_rng([salt, seed, step]).normal())


def noisy_specs() -> dict[str, Spec]:
    """scratch; "fast" reaches every loss with 60% of scratch's steps (exp(−5p) = exp(−3·p/0.6)): a 40% saving;
    "twin" is scratch's curve with its own eval noise."""
    return {"scratch": Spec(noisy(curve_loss(3.0, 10.0, 3.0), 1), needs_parent=False),
            "fast": Spec(noisy(curve_loss(3.0, 10.0, 5.0), 2)),
            "twin": Spec(noisy(curve_loss(3.0, 10.0, 3.0), 3))}


def section(markdown: str) -> str:
    return markdown.split(f"## {SECTION}\n", 1)[1].split("\n## ", 1)[0]


def row_cells(text: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row that starts with `first_cell`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_section_and_verdicts_csv_hold_the_estimators_own_numbers(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", noisy_specs(), seeds=SEEDS)
    report = build_report(run_dir)
    curves = run_curves(report.data)
    table = paired_table(report).set_index("method")
    written = pd.read_csv(run_dir / "verdicts.csv").set_index("method")
    assert run_dir / "verdicts.csv" in report.files
    assert list(written.index) == ["scratch", "fast", "twin"]
    text = section((run_dir / "report.md").read_text())
    for method in ("fast", "twin"):
        direct = savings_at_targets(curves[method], curves["scratch"], TARGETS)
        loss = final_loss_difference(curves[method], curves["scratch"]).interval
        for fraction, estimate in direct.items():
            for suffix, value in (("", estimate.savings.mean), ("_lo", estimate.savings.low),
                                  ("_hi", estimate.savings.high)):
                assert table.loc[method, f"savings_flops_{round(100 * fraction)}{suffix}"] == pytest.approx(value)
                assert written.loc[method, f"savings_flops_{round(100 * fraction)}{suffix}"] == pytest.approx(value)
        headline = direct[1.0]
        assert (table.loc[method, "speedup_flops_100"], table.loc[method, "final_loss_diff_lo"]) == pytest.approx(
            (headline.speedup.mean, loss.low))
        assert table.loc[method, "n_paired"] == 5 and table.loc[method, "unpaired"] == ""
        spread = float(np.std(list(headline.per_seed.values()), ddof=1))
        assert table.loc[method, "seeds_needed_5_points"] == seeds_needed(0.05, spread)
        cells = row_cells(text, method)
        assert cells[1] == "5"
        assert cells[2] == (f"{100 * headline.savings.mean:.1f}% [{100 * headline.savings.low:.1f}, "
                            f"{100 * headline.savings.high:.1f}]")
        assert cells[5] == f"{headline.speedup.mean:.2f}× [{headline.speedup.low:.2f}, {headline.speedup.high:.2f}]"
        assert cells[6] == f"{loss.mean:+.4f} [{loss.low:+.4f}, {loss.high:+.4f}]"
    fast, twin = (savings_at_targets(curves[m], curves["scratch"], (1.0,))[1.0] for m in ("fast", "twin"))
    comparison = compare_savings(fast, twin)
    differences = [fast.per_seed[seed] - twin.per_seed[seed] for seed in SEEDS]
    cells = row_cells(text, "fast − twin")
    assert cells[1] == (f"{100 * comparison.difference.mean:.1f} points [{100 * comparison.difference.low:.1f}, "
                        f"{100 * comparison.difference.high:.1f}]")
    assert cells[2] == f"{comparison.p_value:.3g}"
    assert cells[5] == str(seeds_needed(0.05, float(np.std(differences, ddof=1))))


def test_scratch_against_itself_reads_zero_and_a_clear_saving_differs_from_scratch(tmp_path):
    report = analyse(make_run_dir(tmp_path / "run", noisy_specs(), seeds=SEEDS))
    table = paired_table(report).set_index("method")
    zero_columns = [f"savings_flops_{round(100 * f)}{suffix}" for f in TARGETS for suffix in ("", "_lo", "_hi")]
    assert (table.loc["scratch", zero_columns] == 0).all()
    assert table.loc["scratch", "speedup_flops_100"] == 1 and table.loc["scratch", "final_loss_diff_hi"] == 0
    assert pd.isna(table.loc["scratch", "seeds_needed_5_points"])
    text = section(format_markdown(report))
    assert row_cells(text, "scratch (against itself)")[2:5] == ["0.0% [0.0, 0.0]"] * 3
    fast = table.loc["fast"]
    assert fast["savings_flops_100_lo"] > 0.3 and fast["savings_flops_75"] == pytest.approx(0.4, abs=0.03)
    assert fast["final_loss_diff_hi"] < 0 and fast["speedup_flops_100_lo"] > 1
    pairs = {(pair.first, pair.second): pair for pair in pair_verdicts(method_verdicts(report.data))}
    assert pairs[("fast", "scratch")].comparison.differ and pairs[("fast", "scratch")].comparison.p_value < 0.05
    assert pairs[("fast", "twin")].comparison.differ
    assert not pairs[("twin", "scratch")].comparison.differ  # the same curve with other noise
    assert row_cells(text, "fast − scratch")[3] == "yes" and row_cells(text, "twin − scratch")[3] == "no"


def test_a_method_that_never_gets_there_is_judged_at_its_own_loss_and_reads_negative(tmp_path):
    """mslt's floor (4.0) is above scratch's final loss: no seed reaches τ_s; matched at its own loss at the budget,
    where scratch needs 1 − ln(7/1.2)/3 ≈ 41% less: savings −70%, never the ≈ 0 of a censored seed."""
    report = analyse(make_run_dir(tmp_path / "run"))
    mslt = paired_table(report).set_index("method").loc["mslt"]
    assert mslt["at_own_loss_seeds"] == 3
    expected = 1 - 1 / (math.log(7 / 1.2) / 3)
    assert mslt["savings_flops_100"] == pytest.approx(expected, abs=0.05)
    assert row_cells(section(format_markdown(report)), "mslt")[7] == "3/3"


def test_unpaired_seeds_are_named_and_left_out(tmp_path):
    specs = default_specs()
    specs["ligo"].states = {1: "failed"}
    report = build_report(make_run_dir(tmp_path / "run", specs))
    ligo = pd.read_csv(tmp_path / "run" / "verdicts.csv", dtype={"unpaired": str}).set_index("method").loc["ligo"]
    assert ligo["n_paired"] == 2 and ligo["unpaired"] == "1"
    assert row_cells(section(format_markdown(report)), "ligo")[1] == "2 (unpaired: 1)"


def test_one_paired_seed_says_so_instead_of_an_interval(tmp_path):
    report = analyse(make_run_dir(tmp_path / "run", seeds=(0,)))
    text = section(format_markdown(report))
    assert "Fewer than 2 paired seeds for scratch, ligo, ki, mslt" in text
    assert row_cells(text, "ligo")[2].endswith("% (1 paired seed: no interval)")
    assert row_cells(text, "ligo − scratch")[3] == "n/a (fewer than 2 common seeds)"
    assert pd.isna(paired_table(report).set_index("method").loc["ligo", "savings_flops_100_lo"])


def test_an_older_run_directory_and_one_without_scratch_still_report(tmp_path):
    run_dir = make_run_dir(tmp_path / "old", parent=False, optional=False)
    build_report(run_dir)
    written = pd.read_csv(run_dir / "verdicts.csv")
    assert list(written["method"]) == ["scratch", "ligo", "ki", "mslt"]
    assert written.set_index("method").loc["ligo", "savings_flops_100"] > 0.3
    assert f"## {SECTION}" in (run_dir / "report.md").read_text()
    specs = default_specs()
    specs["scratch"].states = {0: "failed", 1: "failed", 2: "failed"}
    run_dir = make_run_dir(tmp_path / "no-scratch", specs)
    build_report(run_dir)
    assert section((run_dir / "report.md").read_text()).strip().startswith("No finished scratch run")
    assert len(pd.read_csv(run_dir / "verdicts.csv")) == 0
