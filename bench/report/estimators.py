"""Savings estimators that can tell methods apart: smoothed curves, paired seeds, honest intervals, resolving power.

Why (issue 19, issue 25): today's estimator (statistics.py) reads each seed's first raw eval point at or below
τ = the mean of scratch's final losses. The curves approach τ at a shallow angle while eval-to-eval noise is
~0.02–0.03 nats, so one noisy point moves the crossing by ~15% of the budget; every method seed is judged against
a mean τ that carries its own noise; and a seed that misses τ is censored at the budget (≈ 0 saved), which biases
the mean upward (a worse seed is recorded as 0, never negative): scratch judged against its own τ "saves" +3 to +8%.

What this module does instead:
- smoothing that uses every eval point: a monotone non-increasing fit (isotonic regression, drawn through the
  centres of its pooled blocks so that a flat block does not pull the crossing to its start) or a saturating
  power law L(C) = a + b·(C/C_ref)^(−c) (C_ref = the run's last compute, so b is the excess loss at the budget);
- pairing by seed: seed s of every method sees the same batches and validation set as scratch seed s, so method
  seed s is compared with scratch seed s, at a target loss read off that scratch seed's own smoothed curve;
- no censoring bias ("match", the default): savings = 1 − (method's cost / scratch's cost) to one loss level.
  The level is scratch's smoothed loss at the target compute T (the usual definition); where the method's curve
  never gets there, the level is instead the method's own smoothed loss at T, and scratch's cost to it is read off
  scratch's curve (the FLOPs scratch needs to match the method). Both costs then always lie inside the measured
  curves (nothing is extrapolated or censored); a method whose curve is scratch's with the cost scaled by k is
  estimated as 1 − k at any level; and at T = the budget, swapping the two runs turns the speedup r into exactly
  1/r, so a method distributed like scratch has a log-speedup distribution symmetric about 0 and its interval
  covers 0 at the nominal rate (measured in tests/test_estimators.py). The two other policies are kept to measure
  against: "censor" (a miss counts as the method's budget: biased upward, a worse seed reads ≈ 0, never negative)
  and "extrapolate" (power law only: the crossing beyond the budget on the fitted law, labelled extrapolated;
  infinite when the level is at or below the fitted floor a, which makes the mean −∞).
- intervals: Student-t on the mean of the per-seed values (quantiles from scipy.stats.t.ppf); the speedup
  (scratch's cost / the method's) as a geometric mean with a t-interval on its log, because a ratio is skewed.
- resolving power: whether two methods' savings differ (paired t-test over seeds), and how many seeds a two-sided
  paired t-test at 95% needs for 80% power (noncentral t) to tell apart two methods a given distance apart.

Measured on synthetic power-law curves (tests/test_estimators.py; 5 seeds, 20 eval points): a method like scratch
gets 95% intervals holding 0 in 96–97% of 300 draws with the paired monotone estimator, against 54% for today's
(bias +10 points); a true 40% saving is estimated within 1 point at targets of 50% and 75% of the budget. At 100%
the monotone fit's end value is biased low (isotonic regression keeps the lower of the trailing means), which
shrinks savings toward 0: −1.4 to −2 points on a true 40% at the example sweep's eval noise (0.011 nats per
point), −6 at 0.025. The power law has no end to be biased at, but on the sweep's real curves it misses the last
points by 0.005–0.01 nats, as much as the differences between methods at the larger budgets.

Every value here is per seed first; a seed whose value cannot be computed (a power-law fit that failed) is NaN and
makes the interval NaN rather than being dropped (no survivor bias). Seeds present on one side only are listed in
`unpaired` and left out of a paired estimate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bench.report.read import RunData

TARGET_FRACTIONS = (0.5, 0.75, 1.0)
"""Target compute as a share of the budget: τ_s is scratch seed s's smoothed loss there."""
CONFIDENCE = 0.95
POWER_LAW_FIT_FROM = 0.2
"""The power law is fitted to the eval points from this share of the run's compute on: the first few points of a
run from scratch fall far faster than any power law that also fits the rest (9.0 → 6.9 nats over the first 15%
of the budget on bert-micro), and the targets that matter lie at 50–100% of the budget."""
POWER_LAW_BOUNDS = ((0.0, 0.0, 1e-3), (np.inf, np.inf, 5.0))  # a, b, c
MIN_POWER_LAW_POINTS = 5  # 3 parameters; at least 2 residual degrees of freedom

INTERPOLATED, EXTRAPOLATED, NOT_REACHED = "interpolated", "extrapolated", "not reached"
"""How a crossing was found: inside the measured curve, beyond its last eval point (power law), or never."""
REACHED, AT_OWN_LOSS, CENSORED, FIT_FAILED = ("reached", "at the method's own loss", "censored at the budget",
                                             "power-law fit failed")
"""How a seed's savings were read: the method reached the target level; it did not, and both costs are read at its
own loss at the target compute ("match"); it did not, and its budget was taken ("censor"); no value (NaN)."""
BEYOND_POLICIES = ("match", "censor", "extrapolate")


# --------------------------------------------------------------------------- crossing point


def crossing_position(val_loss: Sequence[float], target: float) -> float | None:
    """Fractional eval-point index where the loss first reaches `target` (≤), or None if it never does.

    Between the last point above τ and the first at or below it the loss is taken as linear. The
    losses are the scored eval points only (the caller drops rows without a validation loss)."""
    losses = np.asarray(val_loss, dtype=float)
    hits = np.flatnonzero(losses <= target)
    if len(hits) == 0:
        return None
    first = int(hits[0])
    if first == 0:
        return 0.0
    above = losses[first - 1]
    return first - 1 + (above - target) / (above - losses[first])


def value_at(values: Sequence[float], position: float) -> float:
    """Linear interpolation of `values` at a fractional index (NaN when a bracketing value is NaN)."""
    values = np.asarray(values, dtype=float)
    below = math.floor(position)
    if below == position:
        return float(values[below])
    fraction = position - below
    return float(values[below] + fraction * (values[below + 1] - values[below]))


# --------------------------------------------------------------------------- curves


def scored_rows(curve: pd.DataFrame) -> pd.DataFrame:
    """A curve.csv frame's rows with a validation loss, one per FLOPs value: the first row of each phase is its
    start, at the cost where the phase before ended; of the two the later is kept (the model that training
    continues from, should a growth step have changed the loss)."""
    scored = curve.dropna(subset=["val_loss", "flops"])
    return scored[~scored["flops"].duplicated(keep="last")]


def cost_at_flops(scored: pd.DataFrame, flops: float, column: str) -> float:
    """A cumulative cost column of `scored_rows` read at an executed-FLOPs value (linear between eval points; NaN
    when the column is absent or unmeasured there): where a crossing found on the FLOPs curve lies in seconds,
    energy or dollars."""
    if column not in scored.columns or not math.isfinite(flops):
        return math.nan
    return float(np.interp(flops, scored["flops"].to_numpy(dtype=float), scored[column].to_numpy(dtype=float)))


@dataclass(frozen=True)
class EvalCurve:
    """One run's scored eval points: cumulative executed FLOPs (non-decreasing) and validation loss."""

    flops: np.ndarray
    loss: np.ndarray

    @classmethod
    def from_frame(cls, curve: pd.DataFrame) -> EvalCurve:
        scored = scored_rows(curve)
        return cls(scored["flops"].to_numpy(dtype=float), scored["val_loss"].to_numpy(dtype=float))

    @property
    def budget(self) -> float:
        return float(self.flops[-1])

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])


def run_curves(data: RunData) -> dict[str, dict[int, EvalCurve]]:
    """Every counted run's curve, method -> seed -> curve."""
    curves: dict[str, dict[int, EvalCurve]] = {}
    for record in data.runs:
        if record.counted and record.curve is not None and record.seed is not None:
            curves.setdefault(record.method, {})[int(record.seed)] = EvalCurve.from_frame(record.curve)
    return curves


@dataclass(frozen=True)
class Crossing:
    """Where a curve first reaches a loss level: its cost (inf when never) and how it was found."""

    flops: float
    label: str  # INTERPOLATED, EXTRAPOLATED or NOT_REACHED


@dataclass(frozen=True)
class MonotoneFit:
    """A non-increasing fit of loss against FLOPs: isotonic regression, then the straight lines through the centres
    of its pooled blocks (a block's mean loss belongs at its mean cost), flat before the first centre and after
    the last. `fitted` is the isotonic value at each eval point."""

    curve: EvalCurve
    fitted: np.ndarray
    centre_flops: np.ndarray
    centre_loss: np.ndarray

    def loss_at(self, flops: float) -> float:
        return float(np.interp(flops, self.centre_flops, self.centre_loss))

    def crossing(self, level: float) -> Crossing:
        position = crossing_position(self.centre_loss, level)
        if position is None:
            return Crossing(math.inf, NOT_REACHED)
        flops = float(self.curve.flops[0]) if position == 0 else value_at(self.centre_flops, position)
        return Crossing(flops, INTERPOLATED)


def monotone_fit(curve: EvalCurve) -> MonotoneFit:
    """The isotonic (non-increasing) fit of `curve`'s losses, every eval point weighted alike."""
    result = optimize.isotonic_regression(curve.loss, increasing=False)
    fitted, starts = np.asarray(result.x), np.asarray(result.blocks)
    centres = np.add.reduceat(curve.flops, starts[:-1]) / np.diff(starts)
    return MonotoneFit(curve, fitted, centres, fitted[starts[:-1]])


@dataclass(frozen=True)
class PowerLawCurve:
    """L(C) = a + b·(C/c_ref)^(−c) fitted to a run's eval points from `fit_from` on; `residuals` = measured −
    fitted at those points (for the report to show)."""

    a: float
    b: float
    c: float
    c_ref: float
    curve: EvalCurve
    fitted_flops: np.ndarray
    residuals: np.ndarray

    def loss_at(self, flops: float) -> float:
        return float(self.a + self.b * (flops / self.c_ref) ** (-self.c)) if flops > 0 else math.inf

    def crossing(self, level: float) -> Crossing:
        """Analytic; beyond the curve's last eval point it is EXTRAPOLATED, at or below the floor a NOT_REACHED."""
        if level <= self.a:
            return Crossing(math.inf, NOT_REACHED)
        flops = float(self.c_ref * (self.b / (level - self.a)) ** (1 / self.c)) if self.b > 0 else 0.0
        if level < self.loss_at(self.curve.budget):  # judged on the loss, so that the budget's own loss is inside
            return Crossing(flops, EXTRAPOLATED)
        return Crossing(min(flops, self.curve.budget), INTERPOLATED)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals))))


def fit_power_law_curve(curve: EvalCurve, fit_from: float = POWER_LAW_FIT_FROM) -> PowerLawCurve | None:
    """The bounded least-squares fit (scipy curve_fit, a ≥ 0, b ≥ 0, 1e-3 ≤ c ≤ 5) of the eval points at or past
    fit_from × the run's last FLOPs, or None when there are too few points or the fit fails. Starting values: for
    c on a log grid the law is linear in (a, b); the best such (a, b, c) starts the fit."""
    c_ref = curve.budget
    keep = (curve.flops > 0) & (curve.flops >= fit_from * c_ref)
    if not c_ref > 0 or keep.sum() < MIN_POWER_LAW_POINTS:
        return None
    x, y = curve.flops[keep] / c_ref, curve.loss[keep]

    def law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a + b * x ** (-c)

    def gradient(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        power = x ** (-c)
        return np.column_stack([np.ones_like(x), power, -b * power * np.log(x)])

    starts = []
    for c in np.geomspace(0.05, 4.0, 16):
        basis = np.column_stack([np.ones_like(x), x ** (-c)])
        (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
        if a > 0 and b > 0:
            starts.append((float(np.sum((a + b * x ** (-c) - y) ** 2)), (a, b, c)))
    start = min(starts)[1] if starts else (float(y.min()) * 0.99, float(y.max() - y.min()) + 1e-3, 0.5)
    try:
        with warnings.catch_warnings():  # a covariance that cannot be estimated is no failure of the fit itself
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            (a, b, c), _ = optimize.curve_fit(law, x, y, p0=start, jac=gradient, bounds=POWER_LAW_BOUNDS,
                                              maxfev=5000)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return None
    if not np.all(np.isfinite([a, b, c])):
        return None
    return PowerLawCurve(float(a), float(b), float(c), c_ref, curve, curve.flops[keep], y - law(x, a, b, c))


SmoothCurve = MonotoneFit | PowerLawCurve
_FITTERS: dict[str, Callable[[EvalCurve], SmoothCurve | None]] = {"monotone": monotone_fit,
                                                                   "power_law": fit_power_law_curve}
SMOOTHERS = tuple(_FITTERS)


def smooth(curve: EvalCurve, smoother: str) -> SmoothCurve | None:
    """`curve` smoothed by "monotone" or "power_law" (None when the power law cannot be fitted)."""
    if smoother not in _FITTERS:
        raise ValueError(f"unknown smoother {smoother!r}; choose from {', '.join(SMOOTHERS)}")
    return _FITTERS[smoother](curve)


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its two-sided interval; NaN bounds when n < 2 or a value is NaN or infinite."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean ± t(1 − (1 − confidence)/2, n − 1)·s/√n over all the values (paired values: one per seed)."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean()) if len(data) else math.nan
    if len(data) < 2 or not np.all(np.isfinite(data)):
        return Interval(mean, math.nan, math.nan, len(data))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return Interval(mean, mean - half, mean + half, len(data))


def geometric_interval(ratios: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The geometric mean of positive ratios with the t-interval of their logs, mapped back."""
    with np.errstate(divide="ignore"):  # a ratio of 0 (a method that never gets there) is a log of −∞, kept
        logs = mean_interval(np.log(np.asarray(ratios, dtype=float)), confidence)
    return Interval(*(float(np.exp(value)) for value in (logs.mean, logs.low, logs.high)), logs.n)


# --------------------------------------------------------------------------- savings estimators


@dataclass(frozen=True)
class SeedSavings:
    """One method seed against scratch: both costs to the same loss level, and how they were read."""

    seed: int
    level: float
    method_cost: float
    scratch_cost: float
    how: str  # REACHED, AT_OWN_LOSS, CENSORED, EXTRAPOLATED, NOT_REACHED or FIT_FAILED

    @property
    def savings(self) -> float:
        return 1 - self.method_cost / self.scratch_cost if self.scratch_cost > 0 else math.nan

    @property
    def speedup(self) -> float:
        """Scratch's cost / the method's (inf for a method already at the level when it starts)."""
        if self.method_cost > 0:
            return self.scratch_cost / self.method_cost
        return math.inf if self.scratch_cost > 0 else math.nan


@dataclass(frozen=True)
class SavingsEstimate:
    """One estimator's savings of one method against scratch: per-seed values, the savings' mean with its
    t-interval, the speedup's geometric mean with its interval, and the seeds that had no partner."""

    estimator: str
    target_fraction: float
    seeds: tuple[SeedSavings, ...]
    savings: Interval
    speedup: Interval
    unpaired: tuple[int, ...] = ()

    @property
    def per_seed(self) -> dict[int, float]:
        return {seed.seed: seed.savings for seed in self.seeds}


def _estimate(estimator: str, fraction: float, seeds: list[SeedSavings], unpaired: Sequence[int] = (),
              confidence: float = CONFIDENCE) -> SavingsEstimate:
    return SavingsEstimate(estimator, fraction, tuple(seeds), mean_interval([s.savings for s in seeds], confidence),
                           geometric_interval([s.speedup for s in seeds], confidence), tuple(unpaired))


def _pairs(method: Mapping[int, EvalCurve], scratch: Mapping[int, EvalCurve]) -> tuple[list[int], list[int]]:
    common = sorted(set(method) & set(scratch))
    return common, sorted(set(method) ^ set(scratch))


def first_crossing_savings(method: Mapping[int, EvalCurve], scratch: Mapping[int, EvalCurve],
                           confidence: float = CONFIDENCE) -> SavingsEstimate:
    """Today's estimator, for comparison: τ = mean of scratch's final raw losses; each method seed's cost = the
    cost at its first raw eval point ≤ τ (linear with the point before), or its own budget when it never gets
    there (censored); savings = 1 − cost / scratch's mean budget. Not paired."""
    if not scratch:
        raise ValueError("no scratch runs to take τ from")
    target = float(np.mean([curve.final_loss for curve in scratch.values()]))
    budget = float(np.mean([curve.budget for curve in scratch.values()]))
    seeds = []
    for seed, curve in sorted(method.items()):
        position = crossing_position(curve.loss, target)
        cost, how = (curve.budget, CENSORED) if position is None else (value_at(curve.flops, position), REACHED)
        seeds.append(SeedSavings(seed, target, cost, budget, how))
    return _estimate("first crossing (mean τ, censored)", 1.0, seeds, confidence=confidence)


def seed_savings(seed: int, method: SmoothCurve, scratch: SmoothCurve, target_flops: float, beyond: str = "match",
                 level: float | None = None) -> SeedSavings:
    """One method seed against its scratch seed: the level is scratch's smoothed loss at `target_flops` unless
    given, both costs are first crossings of it on the two smoothed curves, `beyond` decides a miss
    (paired_savings)."""
    level = scratch.loss_at(target_flops) if level is None else level
    scratch_cost = scratch.crossing(level).flops
    reached = method.crossing(level)
    if reached.label == INTERPOLATED:
        return SeedSavings(seed, level, reached.flops, scratch_cost, REACHED)
    if beyond == "censor":
        return SeedSavings(seed, level, method.curve.budget, scratch_cost, CENSORED)
    if beyond == "extrapolate":
        return SeedSavings(seed, level, reached.flops, scratch_cost, reached.label)
    own = method.loss_at(min(target_flops, method.curve.budget))
    return SeedSavings(seed, own, method.crossing(own).flops, scratch.crossing(own).flops, AT_OWN_LOSS)


def paired_savings(method: Mapping[int, EvalCurve], scratch: Mapping[int, EvalCurve], target_fraction: float = 1.0,
                   smoother: str = "monotone", beyond: str = "match",
                   confidence: float = CONFIDENCE) -> SavingsEstimate:
    """Method seed s against scratch seed s at T = target_fraction × scratch seed s's budget: the level is
    scratch's smoothed loss at T, both costs are first crossings of it on the two smoothed curves, and where the
    method does not reach it within its curve, `beyond` decides ("match": both costs at the method's own smoothed
    loss at T, see the module docstring; "censor": the method's budget; "extrapolate": on its power law)."""
    if beyond not in BEYOND_POLICIES:
        raise ValueError(f"unknown policy {beyond!r}; choose from {', '.join(BEYOND_POLICIES)}")
    if smoother not in _FITTERS:
        raise ValueError(f"unknown smoother {smoother!r}; choose from {', '.join(SMOOTHERS)}")
    if beyond == "extrapolate" and smoother != "power_law":
        raise ValueError("only a power law can be extrapolated beyond the budget")
    common, unpaired = _pairs(method, scratch)
    seeds = []
    for seed in common:
        mine, theirs = smooth(method[seed], smoother), smooth(scratch[seed], smoother)
        if mine is None or theirs is None:
            seeds.append(SeedSavings(seed, math.nan, math.nan, math.nan, FIT_FAILED))
            continue
        seeds.append(seed_savings(seed, mine, theirs, target_fraction * scratch[seed].budget, beyond))
    name = f"paired {smoother.replace('_', ' ')}" + ("" if beyond == "match" else f" ({beyond})")
    return _estimate(name, target_fraction, seeds, unpaired, confidence)


def savings_at_targets(method: Mapping[int, EvalCurve], scratch: Mapping[int, EvalCurve],
                       fractions: Sequence[float] = TARGET_FRACTIONS, smoother: str = "monotone",
                       beyond: str = "match") -> dict[float, SavingsEstimate]:
    """paired_savings with τ from scratch at each share of the budget (50%, 75%, 100% by default)."""
    return {fraction: paired_savings(method, scratch, fraction, smoother, beyond) for fraction in fractions}


@dataclass(frozen=True)
class LossDifference:
    """Equal-budget quality: method − scratch final loss per paired seed, with its t-interval."""

    smoother: str
    differences: dict[int, float]
    interval: Interval
    unpaired: tuple[int, ...] = ()


def final_loss_difference(method: Mapping[int, EvalCurve], scratch: Mapping[int, EvalCurve], smoother: str = "raw",
                          confidence: float = CONFIDENCE) -> LossDifference:
    """Each pair's final loss difference: the last eval point's loss ("raw") or the smoothed loss at each run's
    own budget ("monotone", "power_law")."""
    def final(curve: EvalCurve) -> float:
        if smoother == "raw":
            return curve.final_loss
        fitted = smooth(curve, smoother)
        return fitted.loss_at(curve.budget) if fitted is not None else math.nan

    common, unpaired = _pairs(method, scratch)
    differences = {seed: final(method[seed]) - final(scratch[seed]) for seed in common}
    return LossDifference(smoother, differences, mean_interval(list(differences.values()), confidence),
                          tuple(unpaired))


# --------------------------------------------------------------------------- resolving power


@dataclass(frozen=True)
class SavingsComparison:
    """Method a − method b savings per common seed: the interval of the mean difference and the paired t-test."""

    difference: Interval
    p_value: float
    seeds: tuple[int, ...]

    @property
    def differ(self) -> bool:
        """Whether the interval excludes 0 (the same as p < 1 − confidence)."""
        return not math.isnan(self.difference.low) and not self.difference.contains(0.0)


def compare_savings(a: SavingsEstimate, b: SavingsEstimate, confidence: float = CONFIDENCE) -> SavingsComparison:
    """Whether two methods' savings (from the same estimator, paired by seed) differ at `confidence`."""
    first, second = a.per_seed, b.per_seed
    common = sorted(set(first) & set(second))
    x, y = np.array([first[s] for s in common]), np.array([second[s] for s in common])
    p_value = float(stats.ttest_rel(x, y).pvalue) if len(common) >= 2 else math.nan
    return SavingsComparison(mean_interval(x - y, confidence), p_value, tuple(common))


def paired_test_power(n_seeds: int, difference: float, spread: float, alpha: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided paired t-test at level alpha with n_seeds pairs, when the true mean difference is
    `difference` and the per-seed differences have standard deviation `spread`: P(|T| > t_crit) under the
    noncentral t with n − 1 degrees of freedom and noncentrality difference·√n / spread."""
    if n_seeds < 2:
        return math.nan
    df = n_seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = difference * math.sqrt(n_seeds) / spread
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def seeds_needed(difference: float, spread: float, power: float = 0.8, alpha: float = 1 - CONFIDENCE,
                 max_seeds: int = 10_000) -> int | None:
    """The fewest seeds for which a two-sided paired t-test at level alpha (95%) detects a true difference of
    `difference` (e.g. 0.05 = 5 points of savings) with probability `power` (80%), when per-seed differences
    have standard deviation `spread`; None beyond max_seeds. `spread` is the SD of the paired differences
    between the two methods (√2 × one method's per-seed SD if the two are uncorrelated)."""
    if not spread > 0:
        return 2
    high = 2  # doubling, then bisection: power rises with n, and the noncentral t is never asked about huge n
    while paired_test_power(high, difference, spread, alpha) < power:
        if high >= max_seeds:
            return None
        high = min(2 * high, max_seeds)
    low = max(2, high // 2)
    while low < high:
        middle = (low + high) // 2
        if paired_test_power(middle, difference, spread, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return low
