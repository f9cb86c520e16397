"""report.md's "Verdicts, paired by seed": which methods save FLOPs, which differ, and how many seeds would tell.

Seed s of every method sees the same batches and validation set as scratch seed s, so each method seed is judged
against its own scratch seed on monotone-smoothed curves (estimators.py, which also holds the evidence; the tables
are in docs/statistics.md). Per method: the paired FLOPs savings at 100% of the budget (the recommended headline:
the narrowest honest intervals on the example sweep's real curves, exactly 0 for scratch against itself), at 75%
and 50%, the speedup, and the paired final-loss difference against scratch. Per pair of methods: whether their
headline savings differ at 95%, and how many seeds a paired t-test needs to tell apart two methods 5 points apart
at the pair's measured spread. The 100% column is the main table's estimator (statistics.py), which the CI gate
judges; `paired_table` is the same numbers as a frame (verdicts.csv).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bench.report.estimators import (
    AT_OWN_LOSS,
    CONFIDENCE,
    Interval,
    LossDifference,
    SavingsComparison,
    SavingsEstimate,
    compare_savings,
    final_loss_difference,
    run_curves,
    savings_at_targets,
    seeds_needed,
)
from bench.report.read import REFERENCE_METHOD, RunData, method_order
from bench.report.sections import MarkdownTable

if TYPE_CHECKING:
    from bench.report import Report

HEADLINE_FRACTION = 1.0
TARGETS = (HEADLINE_FRACTION, 0.75, 0.5)
"""Target compute as a share of scratch's budget, the headline first."""
RESOLUTION = 0.05
"""The distance in savings (5 points) that the seeds-needed column asks a paired t-test to detect."""
RESOLUTION_WORDS = f"{100 * RESOLUTION:g} points"
POWER = 0.8
MAX_SEEDS = 1000
"""Beyond this many seeds the seeds-needed column says "more than MAX_SEEDS"."""
TITLE = "## Verdicts, paired by seed"


@dataclass(frozen=True)
class MethodVerdict:
    """One method against scratch, paired by seed: savings (monotone fit, "match") at each target share of the
    budget, and the raw final-loss difference at the budget."""

    method: str
    savings: dict[float, SavingsEstimate]
    loss_difference: LossDifference

    @property
    def headline(self) -> SavingsEstimate:
        return self.savings[HEADLINE_FRACTION]

    @property
    def at_own_loss(self) -> int:
        """Seeds that never reached τ_s at the headline target and were judged at their own loss ("match")."""
        return sum(seed.how == AT_OWN_LOSS for seed in self.headline.seeds)

    @property
    def spread(self) -> float:
        """SD of the per-seed headline savings (the spread of the paired differences against scratch)."""
        return _sd(list(self.headline.per_seed.values()))


@dataclass(frozen=True)
class PairVerdict:
    """Headline savings of `first` − `second` over their common seeds, and the seeds a paired t-test would need
    to detect RESOLUTION at POWER, at the SD of those per-seed differences (None: too few seeds to measure it, or
    more than MAX_SEEDS)."""

    first: str
    second: str
    comparison: SavingsComparison
    spread: float
    seeds_needed: int | None


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def _seeds_for_resolution(spread: float) -> int | None:
    """seeds_needed for RESOLUTION at POWER and 95%, None when the spread is unknown (under 2 seeds) or beyond
    MAX_SEEDS."""
    return None if math.isnan(spread) else seeds_needed(RESOLUTION, spread, POWER, 1 - CONFIDENCE, MAX_SEEDS)


def method_verdicts(data: RunData) -> list[MethodVerdict]:
    """Scratch (against itself) first, then every method with a finished run, in the report's order; empty without
    a finished scratch run."""
    curves = run_curves(data)
    scratch = curves.get(REFERENCE_METHOD)
    if not scratch:
        return []
    return [MethodVerdict(method, savings_at_targets(curves[method], scratch, TARGETS),
                          final_loss_difference(curves[method], scratch))
            for method in method_order(data) if method in curves]


def pair_verdicts(verdicts: list[MethodVerdict]) -> list[PairVerdict]:
    """Every pair of growth methods, then every growth method against scratch (difference = its savings)."""
    growth = [verdict for verdict in verdicts if verdict.method != REFERENCE_METHOD]
    reference = [verdict for verdict in verdicts if verdict.method == REFERENCE_METHOD]
    pairs = []
    for first, second in itertools.combinations(growth + reference, 2):
        a, b = first.headline.per_seed, second.headline.per_seed
        spread = _sd([a[seed] - b[seed] for seed in sorted(set(a) & set(b))])
        with warnings.catch_warnings():  # identical per-seed differences (savings all at 100%) make the t statistic
            warnings.simplefilter("ignore", RuntimeWarning)  # degenerate; the interval [d, d] says so already
            comparison = compare_savings(first.headline, second.headline)
        pairs.append(PairVerdict(first.method, second.method, comparison, spread, _seeds_for_resolution(spread)))
    return pairs


def _fraction_key(fraction: float) -> str:
    return f"{round(100 * fraction)}"


def _interval_columns(name: str, interval: Interval) -> dict[str, float]:
    return {name: interval.mean, f"{name}_lo": interval.low, f"{name}_hi": interval.high}


def paired_table(report: Report) -> pd.DataFrame:
    """One row per method (scratch against itself first): paired FLOPs savings at 100/75/50% of the budget and
    the headline's speedup (`savings_flops_100`, `_lo`, `_hi`, ..., `speedup_flops_100`, ...), the final-loss
    difference against scratch in nats (`final_loss_diff`, ...), `n_paired`, `unpaired` seeds ("0, 3"), the seeds
    read at their own loss, the SD of the headline's per-seed savings and the seeds needed to tell the method 5
    points from scratch (NA for scratch itself). Empty (with these columns) without a finished scratch run."""
    rows = []
    for verdict in method_verdicts(report.data):
        headline = verdict.headline
        row = {"method": verdict.method, "estimator": f"{headline.estimator}, match", "n_paired": headline.savings.n,
               "unpaired": ", ".join(str(seed) for seed in headline.unpaired)}
        for fraction, estimate in verdict.savings.items():
            row.update(_interval_columns(f"savings_flops_{_fraction_key(fraction)}", estimate.savings))
        row.update(_interval_columns(f"speedup_flops_{_fraction_key(HEADLINE_FRACTION)}", headline.speedup))
        row.update(_interval_columns("final_loss_diff", verdict.loss_difference.interval))
        row["at_own_loss_seeds"] = verdict.at_own_loss
        row["savings_sd"] = verdict.spread
        row["seeds_needed_5_points"] = (None if verdict.method == REFERENCE_METHOD
                                        else _seeds_for_resolution(verdict.spread))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_table_columns())
    frame["seeds_needed_5_points"] = frame["seeds_needed_5_points"].astype("Int64")
    return frame


def _table_columns() -> list[str]:
    names = ["method", "estimator", "n_paired", "unpaired"]
    for name in [*(f"savings_flops_{_fraction_key(f)}" for f in TARGETS),
                 f"speedup_flops_{_fraction_key(HEADLINE_FRACTION)}", "final_loss_diff"]:
        names += [name, f"{name}_lo", f"{name}_hi"]
    return names + ["at_own_loss_seeds", "savings_sd", "seeds_needed_5_points"]


# --------------------------------------------------------------------------- markdown


def _cell(interval: Interval, show: Callable[[float], str], unit: str = "") -> str:
    """'28.1% [20.4, 35.8]', or the value and why there is no interval (one seed, a value without an interval)."""
    if interval.n == 0:
        return "no paired seed"
    if math.isnan(interval.mean):
        return "n/a"
    mean = show(interval.mean) + ("" if math.isinf(interval.mean) else unit)
    if interval.n < 2:
        return f"{mean} (1 paired seed: no interval)"
    if math.isnan(interval.low):
        return f"{mean} (no interval)"
    return f"{mean} [{show(interval.low)}, {show(interval.high)}]"


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _ratio(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}"


def _nats(value: float) -> str:
    return f"{value:+.4f}"


def _seeds_cell(verdict: MethodVerdict) -> str:
    unpaired = verdict.headline.unpaired
    return str(verdict.headline.savings.n) + (f" (unpaired: {', '.join(map(str, unpaired))})" if unpaired else "")


def _method_rows(verdicts: list[MethodVerdict]) -> list[list[str]]:
    rows = []
    for verdict in verdicts:
        name = verdict.method + (" (against itself)" if verdict.method == REFERENCE_METHOD else "")
        rows.append([name, _seeds_cell(verdict), *(_cell(verdict.savings[f].savings, _points, "%") for f in TARGETS),
                     _cell(verdict.headline.speedup, _ratio, "×"), _cell(verdict.loss_difference.interval, _nats),
                     f"{verdict.at_own_loss}/{len(verdict.headline.seeds)}"])
    return rows


def _pair_rows(pairs: list[PairVerdict]) -> list[list[str]]:
    rows = []
    for pair in pairs:
        comparison = pair.comparison
        if len(comparison.seeds) < 2:
            differ = "n/a (fewer than 2 common seeds)"
        else:
            differ = "yes" if comparison.differ else "no"
        needed = ("n/a" if math.isnan(pair.spread) else
                  f"more than {MAX_SEEDS}" if pair.seeds_needed is None else str(pair.seeds_needed))
        rows.append([f"{pair.first} − {pair.second}", _cell(comparison.difference, _points, " points"),
                     "n/a" if math.isnan(comparison.p_value) else f"{comparison.p_value:.3g}", differ,
                     "n/a" if math.isnan(pair.spread) else f"{_points(pair.spread)} points", needed])
    return rows


LEAD = ("Paired FLOPs savings against scratch, seed by seed, on monotone-smoothed curves, at three targets; the "
        "savings at 100% of the budget are the headline, the same numbers as the main table's FLOPs column.")

HOW_TO_READ = (
    "**How to read.** Seed s of every method trains on the same batches and is scored on the same validation set "
    "as scratch seed s, so method seed s is compared with scratch seed s alone. Every run's eval points are "
    "smoothed by a monotone (isotonic, non-increasing) fit; τ_s is scratch seed s's own smoothed loss at the target "
    "compute (100%, 75% or 50% of its budget), and a seed's saving is 1 − the method's cost to τ_s / scratch's "
    "cost to τ_s, both read off the fits. The interval is a 95% Student-t interval on the mean of those per-seed "
    "savings, so it carries τ's own seed-to-seed uncertainty instead of hiding it in one mean τ: scratch against "
    "itself reads exactly 0 [0, 0], where a mean τ would let scratch's seeds \"save\" against it. A method seed whose fit never gets down to τ_s is not censored at the budget (which would read a worse "
    "seed as ≈ 0, never negative): under \"match\" it is judged at its own smoothed loss at the target compute, "
    "scratch's cost to that loss read off scratch's curve, so both costs stay inside the measured curves and a "
    "worse method reads negative (\"at own loss\" counts those seeds). The headline is the savings at 100% of the "
    "budget: it gives the narrowest intervals on the example sweep's real curves, and on synthetic curves its "
    "intervals hold 0 for a method like scratch at about the nominal rate; the price is a small bias toward 0 "
    "(about 1.5–2 points on a true 40% saving at that sweep's eval noise). 75% and 50% are nearly unbiased but ask "
    "about scratch's quality earlier in its run. The speedup is scratch's cost / the method's to the same level "
    "(geometric mean, interval on its log; ∞ where the method is there at its first eval point); the final-loss "
    "difference is the method's last eval loss minus scratch's, same seed, same budget (negative: better). "
    "Estimators, bias and coverage: growbench's docs/statistics.md.")


def verdicts_section(report: Report, table: MarkdownTable) -> str:
    """The section, its title included: the per-method table, the pair table, and how to read them."""
    verdicts = method_verdicts(report.data)
    if not verdicts:
        return f"{TITLE}\n\nNo finished scratch run: there is nothing to pair the methods' seeds with."
    parts = [TITLE, LEAD]
    few = [verdict.method for verdict in verdicts if verdict.headline.savings.n < 2]
    if few:
        parts.append(f"Fewer than 2 paired seeds for {', '.join(few)}: a mean without an interval, and no test of "
                     "whether they differ.")
    parts.append(table(["method", "paired seeds", "FLOPs saved at 100% (headline)", "at 75%", "at 50%",
                        "speedup at 100%", "final loss − scratch (nats)", "at own loss"], _method_rows(verdicts)))
    pairs = pair_verdicts(verdicts)
    if pairs:
        parts.append("**Do they differ?** Headline savings of one method minus another's over their common seeds "
                     f"(points, 95% t-interval; paired t-test p); \"seeds for {RESOLUTION_WORDS}\" is how many "
                     f"paired seeds a two-sided paired t-test at 95% needs to detect two methods {RESOLUTION_WORDS} "
                     f"apart with {POWER:.0%} power, at the SD of this pair's per-seed differences (itself rough "
                     "from few seeds).")
        parts.append(table(["pair", "difference", "p", "differ at 95%", "SD of paired differences",
                            f"seeds for {RESOLUTION_WORDS}"], _pair_rows(pairs)))
    parts.append(HOW_TO_READ)
    return "\n\n".join(parts)
