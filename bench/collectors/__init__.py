"""Cost collectors: context-managed observers of phases, registered by name.

A collector knows no method. The loop tells it when a phase starts (it may look at the phase's
modules, an example batch and the number of steps the phase will take), wraps every stretch of work in `window(kind)`, asks for cumulative
figures at each eval point (`snapshot`) and for the phase's bill when it ends (`end_phase`). A mid-run checkpoint
keeps its running totals (`state_dict`), which a resumed run hands back (`load_state_dict`).
Under torchrun every rank measures its own part; at each snapshot and phase end the set gathers every rank's
columns and the collector's `combine` makes one row of them (time: the slowest rank; device-hours and GPU energy:
sums over the ranks' devices; CPU and RAM energy: each node once), from which later collectors derive.
`row` holds the columns earlier collectors (in registry order) already produced, so a collector
can derive from them (dollars from device-hours and kWh). A collector that cannot measure says so
in a labelled column; it never reports 0.

A new collector is one new file in this package (or a `growbench.collectors` entry point).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bench import distributed
from bench.phases import Phase
from bench.registry import Registry

WINDOW_KINDS = ("train", "eval", "overhead")


@dataclass
class RunInfo:
    """What collectors may know about the run as a whole."""

    device: torch.device
    run_dir: Any  # pathlib.Path of the run (or parent) directory, None on torchrun's other ranks (they write nothing)
    prices: dict = field(default_factory=dict)  # the price table in use (see bench/prices.toml)
    country: str = "WLD"
    accumulation: int = 1  # micro-batches per optimizer step: collectors see one and scale per-step figures
    calibration: Any = None  # the comparison's bench.calibration.CalibrationTable, or None (the clock calibrates)


class Collector:
    name: ClassVar[str]
    order: ClassVar[int] = 50  # lower runs first; derived collectors (cost) run last

    def __init__(self, run: RunInfo):
        self.run = run

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        pass

    @contextlib.contextmanager
    def window(self, kind: str) -> Iterator[None]:
        yield

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        """Cumulative figures since the run started, for curve.csv."""
        return {}

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        """This phase's columns for phases.csv."""
        return {}

    def combine(self, columns: list[dict[str, Any]]) -> dict[str, Any]:
        """One row of every rank's `snapshot` or `end_phase` columns (torchrun). Default: rank 0's, right for a
        collector that derives from earlier collectors' columns, which are combined already."""
        return columns[0]

    def close(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """The running totals a mid-run checkpoint keeps (numbers, strings, tensors and containers of them),
        so that a resumed run reports the sums of its sessions. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s totals; called after `start_phase` of the phase being resumed."""


_REGISTRY = Registry("collector", __name__, "growbench.collectors")
register_collector = _REGISTRY.register


def collector_names() -> list[str]:
    classes = _REGISTRY.classes()
    return sorted(classes, key=lambda name: (classes[name].order, name))


def make_collectors(run: RunInfo, names: list[str] | None = None) -> list[Collector]:
    """All registered collectors (or `names`), in the order their columns build on each other."""
    return [_REGISTRY.classes()[name](run) for name in collector_names() if names is None or name in names]


class CollectorSet:
    """Fans the loop's calls out to every collector and merges their columns."""

    def __init__(self, collectors: list[Collector]):
        self.collectors = collectors

    def start_phase(self, phase: Phase, batch: dict[str, torch.Tensor], steps: int = 1) -> None:
        for collector in self.collectors:
            collector.start_phase(phase, batch, steps)

    @contextlib.contextmanager
    def window(self, kind: str) -> Iterator[None]:
        assert kind in WINDOW_KINDS, kind
        with contextlib.ExitStack() as stack:
            for collector in self.collectors:
                stack.enter_context(collector.window(kind))
            yield

    def snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        for collector in self.collectors:
            row.update(_combined(collector, collector.snapshot(row)))
        return row

    def end_phase(self, steps: int, row: dict[str, Any]) -> dict[str, Any]:
        for collector in self.collectors:
            row.update(_combined(collector, collector.end_phase(steps, row)))
        return row

    def close(self) -> None:
        for collector in self.collectors:
            collector.close()

    def state_dict(self) -> list[dict[str, dict[str, Any]]]:
        """Every rank's collectors' totals, in rank order (one entry without torchrun)."""
        return distributed.gather({_key(collector): collector.state_dict() for collector in self.collectors})

    def load_state_dict(self, ranks: list[dict[str, dict[str, Any]]]) -> None:
        states = ranks[distributed.world().rank]
        for collector in self.collectors:
            if _key(collector) in states:
                collector.load_state_dict(states[_key(collector)])


def _combined(collector: Collector, columns: dict[str, Any]) -> dict[str, Any]:
    return collector.combine(distributed.gather(columns)) if distributed.world().distributed else columns


def _key(collector: Collector) -> str:
    return getattr(collector, "name", type(collector).__name__)
