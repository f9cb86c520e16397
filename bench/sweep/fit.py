"""EXTRAPOLATION, not measurement: a saturating power law of final loss against compute, and the break-even it implies
beyond the budgets measured.

Per method (and parent), the mean final validation loss at each measured budget C (FLOPs) is fitted with

    L(C) = E + A · (C / C0)^(−α),   A > 0, α > 0,   C0 = the smallest budget fitted,

by least squares with E ≥ 0: for a fixed α the model is linear in (E, A), so α is searched on a log grid and refined
by golden-section search (numpy only; scipy is not installed and not a dependency). Three parameters need at least
three budgets; with exactly three the fit has no residual degrees of freedom (its residuals are 0 unless E or α sit
at a bound). A fit whose α sits at the edge of its range, or whose E is held at 0, says so in its notes.

The fitted curves treat each budget's final loss as the loss reachable with that compute (every run's schedule ends
at its budget). What they imply, beyond the largest budget measured:
- parent sunk: savings(B) = 1 − C_m(B) / B, with C_m(B) the compute at which the method's fitted loss equals
  scratch's fitted loss at B; it is 0 where the two fitted curves cross;
- parent charged (or amortised over K): savings(B) = 1 − (C_m(B) + parent FLOPs / K) / B.
Every value here is named `extrapolated_*` and never enters the measured tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MIN_BUDGETS = 3
SEARCH_FACTOR = 1000.0  # look for an extrapolated break-even up to this many times the largest budget measured
ALPHA_RANGE = (1e-3, 5.0)


@dataclass
class PowerLawFit:
    """L(C) = E + A · (C / C0)^(−α) over the budgets fitted, with its residuals (measured − fitted)."""

    e: float
    a: float
    alpha: float
    c0: float
    budgets: list[float]
    losses: list[float]
    residuals: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why to trust it less: α at a bound, E held at 0, no dof

    def __call__(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.e + self.a * (np.asarray(compute, dtype=float) / self.c0) ** (-self.alpha)

    def compute_for(self, loss: float) -> float:
        """The compute at which the fitted loss equals `loss` (inf when `loss` ≤ E: never reached)."""
        if loss <= self.e:
            return math.inf
        return float(self.c0 * ((loss - self.e) / self.a) ** (-1 / self.alpha))

    @property
    def dof(self) -> int:
        return len(self.budgets) - 3

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.residuals)))) if self.residuals else math.nan


def _linear(x: np.ndarray, losses: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(E, A, SSE) of the least-squares fit at a fixed α, with E ≥ 0 (a loss has no negative floor): when the free
    fit puts E below 0, the best fit on the boundary E = 0 (the problem is convex, so that is the constrained one)."""
    basis = x ** (-alpha)
    matrix = np.column_stack([np.ones_like(basis), basis])
    (e, a), *_ = np.linalg.lstsq(matrix, losses, rcond=None)
    if e < 0:
        e, a = 0.0, float(basis @ losses / (basis @ basis))
    sse = float(np.sum((e + a * basis - losses) ** 2))
    return float(e), float(a), sse


def fit_power_law(budgets: Sequence[float], losses: Sequence[float]) -> PowerLawFit | str:
    """The fit, or why there is none (a sentence): too few budgets, or a loss that does not fall with compute."""
    pairs = sorted((float(c), float(loss)) for c, loss in zip(budgets, losses, strict=True)
                   if c > 0 and not math.isnan(loss))
    if len({c for c, _ in pairs}) < MIN_BUDGETS:
        return f"needs at least {MIN_BUDGETS} measured budgets, has {len({c for c, _ in pairs})}"
    c = np.array([c for c, _ in pairs])
    y = np.array([loss for _, loss in pairs])
    c0 = float(c.min())
    x = c / c0

    def objective(log_alpha: float) -> float:
        _, a, sse = _linear(x, y, math.exp(log_alpha))
        return sse if a > 0 else math.inf

    grid = np.linspace(math.log(ALPHA_RANGE[0]), math.log(ALPHA_RANGE[1]), 400)
    scores = np.array([objective(value) for value in grid])
    if not np.isfinite(scores).any():
        return "the final loss does not fall with compute over the budgets measured"
    best = int(np.nanargmin(scores))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    log_alpha = _golden(objective, low, high)
    if objective(log_alpha) > scores[best]:
        log_alpha = grid[best]
    alpha = math.exp(log_alpha)
    e, a, _ = _linear(x, y, alpha)
    fit = PowerLawFit(e, a, alpha, c0, c.tolist(), y.tolist())
    fit.residuals = (y - fit(c)).tolist()
    if best in (0, len(grid) - 1):
        fit.notes.append(f"α at the edge of its search range ({ALPHA_RANGE[0]:g}–{ALPHA_RANGE[1]:g}): the curve is not "
                         "identified by these budgets")
    if e == 0.0:
        fit.notes.append("E held at 0: the losses keep falling about linearly in log budget, no floor in sight")
    if fit.dof == 0:
        fit.notes.append("no residual degrees of freedom (3 budgets, 3 parameters)")
    return fit


def _golden(function: Callable[[float], float], low: float, high: float, steps: int = 60) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(steps):
        if function(c) < function(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return (a + b) / 2


def extrapolated_savings(method: PowerLawFit, scratch: PowerLawFit, budget: float, parent_flops: float = 0.0) -> float:
    """1 − (compute the method needs to match scratch's fitted loss at `budget` + parent_flops) / budget."""
    needed = method.compute_for(float(scratch(budget)))
    return 1 - (needed + parent_flops) / budget if math.isfinite(needed) else -math.inf


def extrapolated_break_even(method: PowerLawFit, scratch: PowerLawFit, start: float, parent_flops: float = 0.0,
                            factor: float = SEARCH_FACTOR) -> tuple[float | None, str]:
    """The first budget above `start` (the largest measured) where the extrapolated savings change sign, found on a
    log grid and refined by bisection in log budget: (FLOPs or None, 'stops' | 'starts' | why there is none)."""
    grid = np.geomspace(start, start * factor, 600)
    values = np.array([extrapolated_savings(method, scratch, budget, parent_flops) for budget in grid])
    paying = values > 0
    changes = np.flatnonzero(paying[1:] != paying[:-1])
    if not len(changes):
        return None, (f"saves at every budget up to {factor:g}× the largest measured" if paying[0] else
                      f"saves at no budget up to {factor:g}× the largest measured")
    index = int(changes[0])
    low, high = math.log(grid[index]), math.log(grid[index + 1])
    for _ in range(60):
        middle = (low + high) / 2
        if (extrapolated_savings(method, scratch, math.exp(middle), parent_flops) > 0) == paying[index]:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2), "stops" if paying[index] else "starts"


@dataclass
class Extrapolation:
    """The fits and what they imply, as tables whose every value column is named extrapolated_*."""

    fits: dict[tuple[str, int], PowerLawFit | str]  # (method, parent steps) -> fit, or why there is none
    parameters: pd.DataFrame  # method, parent_steps, extrapolated_E, extrapolated_A, extrapolated_alpha, ...
    residuals: pd.DataFrame  # method, parent_steps, budget, budget_flops, measured loss, extrapolated_fitted_loss, ...
    break_even: pd.DataFrame  # method, parent_steps, basis, extrapolated_break_even_flops, ..._direction, ..._note


def extrapolate(rows: pd.DataFrame, methods: Sequence[str], parents: Sequence[int], parent_flops: dict[int, float],
                amortize: float = 1.0, reference_flops: float = math.nan, reference: str = "scratch") -> Extrapolation:
    """Fit every method's measured final loss against budget (per parent) and extrapolate its break-even beyond the
    largest budget measured, parent sunk, charged and (K ≠ 1) amortised over K."""
    fits: dict[tuple[str, int], PowerLawFit | str] = {}
    parameters, residuals, breaks = [], [], []
    for parent in parents:
        for method in methods:
            mine = rows[(rows["method"] == method) & (rows["parent_steps"] == parent)
                        & rows["state"].isin(["measured", "reference"])].sort_values("budget_flops")
            fit = fit_power_law(mine["budget_flops"].tolist(), mine["final_val_loss"].astype(float).tolist())
            fits[(method, parent)] = fit
            if isinstance(fit, str):
                parameters.append({"method": method, "parent_steps": parent, "extrapolated_note": fit})
                continue
            parameters.append({"method": method, "parent_steps": parent, "extrapolated_E": fit.e,
                               "extrapolated_A": fit.a, "extrapolated_alpha": fit.alpha, "extrapolated_C0": fit.c0,
                               "extrapolated_rmse": fit.rmse, "extrapolated_dof": fit.dof,
                               "extrapolated_note": "; ".join(fit.notes)})
            labels = dict(zip(mine["budget_flops"], mine["budget"], strict=True))
            for budget, loss, residual in zip(fit.budgets, fit.losses, fit.residuals, strict=True):
                residuals.append({"method": method, "parent_steps": parent, "budget": labels.get(budget, ""),
                                  "budget_flops": budget, "final_val_loss": loss,
                                  "extrapolated_fitted_loss": loss - residual, "extrapolated_residual": residual})
    for parent in parents:
        scratch = fits.get((reference, parent))
        for method in methods:
            if method == reference:
                continue
            fit = fits[(method, parent)]
            bases = [("flops_sunk", 0.0), ("flops_charged", parent_flops.get(parent, math.nan))]
            if amortize != 1:
                bases.append(("flops_amortized", parent_flops.get(parent, math.nan) / amortize))
            for basis, charge in bases:
                row = {"method": method, "parent_steps": parent, "basis": basis,
                       "extrapolated_break_even_flops": math.nan, "extrapolated_break_even_ratio": math.nan,
                       "extrapolated_direction": "", "extrapolated_note": ""}
                if isinstance(fit, str) or isinstance(scratch, str) or scratch is None:
                    row["extrapolated_note"] = "no fit: " + (fit if isinstance(fit, str) else
                                                             "scratch: " + (scratch or "not measured"))
                elif math.isnan(charge):
                    row["extrapolated_note"] = "the parent's cost is unknown"
                else:
                    start = max(max(fit.budgets), max(scratch.budgets))
                    at, what = extrapolated_break_even(fit, scratch, start, charge)
                    row["extrapolated_savings_at_largest"] = extrapolated_savings(fit, scratch, start, charge)
                    if at is None:
                        row["extrapolated_note"] = what
                    else:
                        row["extrapolated_break_even_flops"] = at
                        row["extrapolated_break_even_ratio"] = at / reference_flops
                        row["extrapolated_direction"] = what
                breaks.append(row)
    return Extrapolation(fits, pd.DataFrame(parameters), pd.DataFrame(residuals), pd.DataFrame(breaks))


__all__ = ["MIN_BUDGETS", "Extrapolation", "PowerLawFit", "extrapolate", "extrapolated_break_even",
           "extrapolated_savings", "fit_power_law"]
