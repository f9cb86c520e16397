"""Budget specs, parent lists and the layout of a sweep: one point per (budget, parent steps).

A budget spec is one of
- `Nx`: N times the pair's reference budget, the default budget (`--no-quick`) or the quick one (`--quick`,
  the sweep's default), in steps of LARGE trained from scratch (`0.25x`, `2x`);
- `N` or `Nsteps`: N steps of LARGE from scratch, what `bench compare --budget-steps N` means (`300`);
- `Fflops`: F training FLOPs, what `bench compare --budget F` means (`1e12flops`, `2.5e13flops`).

Every point is a normal run directory, `SWEEP_DIR/points/<budget>-p<parent steps>/` (e.g. `1x-p300`), that
`bench report` reads on its own. `SWEEP_DIR/sweep.json` holds the plan (what was asked, and every budget
resolved to FLOPs), `SWEEP_DIR/status/<point>.json` what became of each point when the sweep ran it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.records import read_json, write_json

PLAN_FILE = "sweep.json"
POINTS_DIR = "points"
STATUS_DIR = "status"
PLAN_KIND = "growbench-sweep"
CORE_KEYS = ("pair", "methods", "method_args", "seeds", "quick", "reference_budget_steps", "data")
"""What makes two plans the same sweep; their points may differ (a later call may add budgets or parents)."""

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RELATIVE = re.compile(rf"^(?P<value>[+-]?{_NUMBER})\s*[x×]$", re.IGNORECASE)
_STEPS = re.compile(rf"^(?P<value>[+-]?{_NUMBER})\s*(?:steps?)?$", re.IGNORECASE)
_FLOPS = re.compile(rf"^(?P<value>[+-]?{_NUMBER})\s*flops?$", re.IGNORECASE)


@dataclass(frozen=True)
class BudgetSpec:
    """One budget as the user wrote it, and what it means."""

    text: str
    kind: str  # "relative" | "steps" | "flops"
    value: float  # the multiple, the steps or the FLOPs

    @property
    def label(self) -> str:
        """The budget's part of a point name: `0.25x`, `300steps`, `1e12flops`."""
        if self.kind == "relative":
            return f"{self.value:g}x"
        if self.kind == "steps":
            return f"{int(self.value)}steps"
        return f"{_compact(self.value)}flops"

    def steps(self, reference_steps: int) -> int | None:
        """The budget in steps of LARGE from scratch, or None for a FLOPs budget (its steps need the step's FLOPs)."""
        if self.kind == "flops":
            return None
        steps = round(self.value * reference_steps) if self.kind == "relative" else int(self.value)
        if steps < 1:
            raise BenchError(f"budget {self.text}: {self.value:g} × the reference budget of {reference_steps} steps "
                             "is less than one step")
        return steps


def _compact(value: float) -> str:
    """1e12 -> '1e12', 2.5e13 -> '2.5e13', 3e9 -> '3e9' (no '+' nor leading zeros in the exponent)."""
    mantissa, _, exponent = f"{value:.6g}".partition("e")
    return mantissa if not exponent else f"{mantissa}e{int(exponent)}"


def parse_budget(text: str) -> BudgetSpec:
    """One spec (`0.25x`, `300`, `300steps`, `1e12flops`) or BenchError."""
    spec = text.strip()
    for kind, pattern in (("relative", _RELATIVE), ("flops", _FLOPS), ("steps", _STEPS)):
        match = pattern.match(spec)
        if match is None:
            continue
        value = float(match["value"])
        if not math.isfinite(value) or value <= 0:
            raise BenchError(f"budget {text!r} must be positive")
        if kind == "steps" and value != int(value):
            raise BenchError(f"budget {text!r}: a plain number is steps of LARGE and must be whole; write "
                             f"{value:g}x for a multiple of the reference budget or {value:g}flops for FLOPs")
        return BudgetSpec(spec, kind, value)
    raise BenchError(f"unknown budget spec {text!r}: use Nx (a multiple of the pair's budget, e.g. 0.5x), N steps "
                     "(e.g. 300) or FLOPs (e.g. 1e12flops)")


def parse_budgets(text: str) -> list[BudgetSpec]:
    """Comma-separated specs; the same spec twice is a duplicate point (BenchError)."""
    specs = [parse_budget(item) for item in text.split(",") if item.strip()]
    if not specs:
        raise BenchError("--budgets needs at least one budget (e.g. 0.5x,1x,2x)")
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise BenchError(f"--budgets: duplicate point(s) {', '.join(repeated)}")
    return specs


def parse_parent_steps(text: str | None) -> list[int] | None:
    """Comma-separated positive whole numbers, each once; None when not given (the pair's default)."""
    if text is None:
        return None
    values = []
    for item in (item.strip() for item in text.split(",")):
        if not item:
            continue
        if not re.fullmatch(r"[+-]?\d+", item):
            raise BenchError(f"--parent-steps: {item!r} is not a whole number of steps")
        if int(item) < 1:
            raise BenchError(f"--parent-steps: {item} must be positive")
        values.append(int(item))
    if not values:
        raise BenchError("--parent-steps needs at least one number")
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise BenchError(f"--parent-steps: duplicate point(s) with parent steps {', '.join(map(str, repeated))}")
    return values


# --------------------------------------------------------------------------- the plan


@dataclass
class Budget:
    """A budget of the plan, resolved: its FLOPs, and its steps when it was given in steps."""

    label: str
    spec: str
    kind: str
    value: float
    steps: int | None  # what compare gets as budget_steps; None for a FLOPs budget
    flops: float  # planned FLOPs (steps × LARGE's step FLOPs); a point's manifest is authoritative once it ran

    def ratio(self, reference_flops: float) -> float:
        return self.flops / reference_flops if reference_flops > 0 else math.nan


@dataclass
class Point:
    name: str
    budget: str  # Budget.label
    parent_steps: int

    def path(self, root: Path) -> Path:
        return Path(root) / POINTS_DIR / self.name

    def status_path(self, root: Path) -> Path:
        return Path(root) / STATUS_DIR / f"{self.name}.json"


def point_name(budget_label: str, parent_steps: int) -> str:
    return f"{budget_label}-p{parent_steps}"


@dataclass
class Plan:
    """What a sweep is: the settings every point shares, its budgets and parents, and the points."""

    pair: str
    methods: list[str]
    seeds: int
    quick: bool
    reference_budget_steps: int  # what `1x` means, in steps of LARGE from scratch
    large_step_flops: float
    budgets: list[Budget]
    parent_steps: list[int]
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # corpus and tokenizer as given (None = built in)
    amortize: float = 1.0
    points: list[Point] = field(default_factory=list)

    @property
    def reference_flops(self) -> float:
        return self.reference_budget_steps * self.large_step_flops

    def budget(self, label: str) -> Budget:
        for budget in self.budgets:
            if budget.label == label:
                return budget
        raise KeyError(label)

    def point(self, name: str) -> Point:
        for point in self.points:
            if point.name == name:
                return point
        raise BenchError(f"no point {name!r} in this sweep; its points: {', '.join(p.name for p in self.points)}")

    def to_json(self) -> dict:
        return {"kind": PLAN_KIND, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        if not isinstance(data, dict) or data.get("kind") != PLAN_KIND:
            raise BenchError("not a growbench sweep plan (sweep.json)")
        try:
            budgets = [Budget(**budget) for budget in data["budgets"]]
            points = [Point(**point) for point in data["points"]]
            return cls(data["pair"], list(data["methods"]), int(data["seeds"]), bool(data["quick"]),
                       int(data["reference_budget_steps"]), float(data["large_step_flops"]), budgets,
                       [int(steps) for steps in data["parent_steps"]], data.get("method_args") or {},
                       data.get("data") or {}, float(data.get("amortize", 1.0)), points)
        except (KeyError, TypeError, ValueError) as error:
            raise BenchError(f"sweep.json is malformed ({type(error).__name__}: {error})") from None


def resolve_budgets(specs: list[BudgetSpec], reference_steps: int, large_step_flops: float) -> list[Budget]:
    """Every spec resolved to FLOPs, sorted by FLOPs; two specs meaning the same budget are duplicates."""
    budgets = []
    for spec in specs:
        steps = spec.steps(reference_steps)
        flops = spec.value if spec.kind == "flops" else steps * large_step_flops
        budgets.append(Budget(spec.label, spec.text, spec.kind, spec.value, steps, float(flops)))
    budgets.sort(key=lambda budget: budget.flops)
    for low, high in itertools.pairwise(budgets):
        if math.isclose(low.flops, high.flops, rel_tol=1e-9):
            raise BenchError(f"--budgets: {low.spec} and {high.spec} are the same budget ({low.flops:.4g} FLOPs): "
                             "duplicate point")
    return budgets


def make_points(budgets: list[Budget], parent_steps: list[int]) -> list[Point]:
    """One point per (parent steps, budget): parents in the order given, budgets from the smallest."""
    return [Point(point_name(budget.label, parent), budget.label, parent) for parent in parent_steps
            for budget in budgets]


def merge_plans(old: Plan, new: Plan) -> Plan:
    """The stored plan extended by the new one's budgets and parents; BenchError when they are different sweeps."""
    old_json, new_json = old.to_json(), new.to_json()
    differing = [key for key in CORE_KEYS if _canonical(old_json.get(key)) != _canonical(new_json.get(key))]
    if differing:
        raise BenchError(f"the sweep directory holds a different sweep ({', '.join(differing)} differ(s)); "
                         "use another --out")
    budgets = {budget.label: budget for budget in old.budgets}
    for budget in new.budgets:
        known = budgets.get(budget.label)
        if known is not None and not math.isclose(known.flops, budget.flops, rel_tol=1e-6):
            raise BenchError(f"budget {budget.label} means {budget.flops:.4g} FLOPs now but {known.flops:.4g} in "
                             "the stored sweep")
        budgets.setdefault(budget.label, budget)
    merged_budgets = sorted(budgets.values(), key=lambda budget: budget.flops)
    for low, high in itertools.pairwise(merged_budgets):
        if math.isclose(low.flops, high.flops, rel_tol=1e-9):
            raise BenchError(f"budget {high.spec} is the stored sweep's {low.spec} ({low.flops:.4g} FLOPs): "
                             "duplicate point")
    parents = list(dict.fromkeys([*old.parent_steps, *new.parent_steps]))
    points = {point.name: point for point in old.points}
    for point in new.points:
        points.setdefault(point.name, point)
    order = {budget.label: index for index, budget in enumerate(merged_budgets)}
    ordered = sorted(points.values(), key=lambda point: (parents.index(point.parent_steps), order[point.budget]))
    return Plan(new.pair, new.methods, new.seeds, new.quick, new.reference_budget_steps, new.large_step_flops,
                merged_budgets, parents, new.method_args, new.data, new.amortize, ordered)


def _canonical(value) -> str:
    """A value as sweep.json stores it (tuples as lists, odd types as text), for comparing plans."""
    return json.dumps(value, sort_keys=True, default=str)


def read_plan(root: Path) -> Plan:
    path = Path(root) / PLAN_FILE
    if not path.exists():
        raise BenchError(f"{root} holds no sweep ({PLAN_FILE} is missing)")
    return Plan.from_json(read_json(path))


def write_plan(root: Path, plan: Plan) -> None:
    write_json(Path(root) / PLAN_FILE, plan.to_json())


def select_points(plan: Plan, names: list[str] | None) -> list[Point]:
    """The points named (`--point 1x-p300,2x-p300`), or all; BenchError for a name not in the plan."""
    if not names:
        return list(plan.points)
    selected = [plan.point(name) for name in dict.fromkeys(names)]
    return sorted(selected, key=plan.points.index)
