"""`bench.meter`: the bill of any training stretch (executed FLOPs, time, energy, CO2, dollars), from the same
collectors `bench compare` uses, for any `nn.Module` and loss.

    with bench.meter(model, example_batch, loss=None) as m:
        for batch in batches:
            ...  # forward, backward, optimizer step: the caller's own loop
            m.step()
    m.row  # the phases.csv row of the stretch

What it charges (see shared spec accounting.md):
- flops_executed: ONE real step of `model` on `example_batch` with `loss` (forward and backward; no weight
  update) is counted under FlopCounterMode by the flops collector, once per phase, and every step `m.step()`
  reports is charged that count (x `accumulation` micro-batches). Steps on batches of other shapes are charged
  the example's count: give a batch of the shape the loop trains on.
- train_s, device_hours, energy, CO2, dollars: the collectors' windows. The stretch inside the `with` block is
  one "train" window; `m.paused("eval")` (or "overhead") takes work out of it, logged but not charged.
- reference_s: steps x a step time the clock measures once, at the phase's start.

`loss(model, batch) -> scalar tensor`; the default is the model's own loss: `model(**batch).loss` for a dict batch
(transformers models compute it when the batch has labels), `model(*batch)` for a tuple, `model(batch)` otherwise,
whose output must be a scalar tensor or carry `.loss`. Counting and calibrating leave the model's weights,
gradients, train/eval modes and the RNG streams as they were.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from bench.collectors import WINDOW_KINDS, CollectorSet, RunInfo, make_collectors
from bench.collectors.cost import load_prices
from bench.collectors.flops import count_executed_step
from bench.errors import BenchError
from bench.objective import lm_loss
from bench.phases import Phase
from bench.records import write_csv

Loss = Callable[[nn.Module, Any], torch.Tensor]

PHASES_FILE = "phases.csv"


class MeterError(BenchError):
    """The meter cannot count this model, batch or loss (the message says why and what to give instead)."""


def meter(model: nn.Module, example_batch: Any, loss: Loss | None = None, *, device: torch.device | str | None = None,
          prices: dict | str | Path | None = None, country: str = "WLD", run_dir: str | Path | None = None,
          name: str = "train", accumulation: int = 1) -> Meter:
    """A context manager that bills the training stretch inside it; see `Meter`."""
    return Meter(model, example_batch, loss, device=device, prices=prices, country=country, run_dir=run_dir,
                 name=name, accumulation=accumulation)


class Meter:
    """The collectors of `bench compare` around a caller's own training loop.

    model:         the module trained; its parameters with `requires_grad` are the trained ones (frozen ones get
                   no weight-gradient work, as counted).
    example_batch: one (micro-)batch of the shape the loop trains on (a dict of tensors, a tuple, a tensor); it is
                   moved to `device` for counting.
    loss:          loss(model, batch) -> scalar tensor; None: the model's own loss (module docstring).
    device:        where the model trains; default: where its first parameter is.
    prices:        the price table (a dict as `bench.collectors.cost.load_prices` returns), a price file, or
                   overrides such as {"cpu-core": 0.04, "H100": 2.99}; default bench/prices.toml.
    country:       ISO3 code of the grid the carbon intensity is taken from ("WLD": world average).
    run_dir:       a folder for the collectors' files (fvcore_<phase>.csv) and, at the end, phases.csv; default
                   a temporary folder, removed at the end.
    name:          the first phase's name in phases.csv.
    accumulation:  micro-batches per optimizer step (`example_batch` is one of them): every `step()` is charged
                   that many micro-batches.

    `step(n)` counts optimizer steps; `phase(name, ...)` ends the phase and starts another; `snapshot()` gives
    the cumulative figures so far (curve.csv's columns). After the block, `row` is the last phase's phases.csv row
    and `rows` all of them. A Meter is used once.
    """

    def __init__(self, model: nn.Module, example_batch: Any, loss: Loss | None = None, *,
                 device: torch.device | str | None = None, prices: dict | str | Path | None = None,
                 country: str = "WLD", run_dir: str | Path | None = None, name: str = "train",
                 accumulation: int = 1):
        if not isinstance(model, nn.Module):
            raise MeterError(f"bench.meter needs a torch.nn.Module, got {type(model).__name__}")
        if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
            raise MeterError(f"accumulation must be a whole number of micro-batches >= 1, got {accumulation!r}")
        self.model, self.example_batch, self.loss, self.name = model, example_batch, loss, name
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.prices = _price_table(prices)
        self.country, self.accumulation = country, accumulation
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self.flops_per_step: float | None = None  # executed FLOPs of one optimizer step of the current phase
        self._collectors: CollectorSet | None = None
        self._folder: Path | None = None
        self._window: contextlib.ExitStack | None = None
        self._kind: str | None = None
        self._state = "new"
        self._phase_name = name
        self._phase_steps = 0
        self._steps_done = 0  # steps of finished phases
        self._flops_done = 0.0
        self._tokens_done = 0
        self._tokens_per_step: int | None = None
        self._phase: Phase | None = None

    # ----------------------------------------------------------------------------------- the caller's API

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.stop(write=exc_type is None)

    def start(self) -> Meter:
        """Open the collectors, count the first phase's step and start its train window."""
        if self._state != "new":
            raise MeterError("a Meter is used once: make a new one with bench.meter(...)")
        self._state = "running"
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._folder = self.run_dir
        else:
            self._folder = Path(tempfile.mkdtemp(prefix="growbench-meter-"))
        try:
            self._collectors = CollectorSet(make_collectors(RunInfo(self.device, self._folder, self.prices,
                                                                    self.country, self.accumulation)))
            self._begin(self.name, self.model, self.example_batch, self.loss)
        except BaseException:
            self._state = "failed"
            self._shut()
            raise
        return self

    def step(self, n: int = 1) -> None:
        """Count `n` optimizer steps taken (each charged the phase's counted step)."""
        self._require_running("step")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise MeterError(f"step(n) takes a whole number of steps >= 0, got {n!r}")
        self._phase_steps += n

    def phase(self, name: str, model: nn.Module | None = None, example_batch: Any = None,
              loss: Loss | None = None) -> None:
        """End the current phase (its row goes to `rows`) and start another: by default the same model, example
        batch and loss, under a new name; give what changed (a grown model, another batch shape, another loss)."""
        self._require_running("phase")
        self._end()
        try:
            self._begin(name, self.model if model is None else model,
                        self.example_batch if example_batch is None else example_batch,
                        self.loss if model is None and loss is None else loss)
        except BaseException:  # the finished phases' rows stay in `rows`; the meter cannot go on
            self._state = "failed"
            self._shut()
            raise

    def switch(self, kind: str) -> None:
        """Close the open window and open one of `kind`: "train" (charged), "eval" or "overhead" (logged apart)."""
        self._require_running("switch")
        if kind not in WINDOW_KINDS:
            raise MeterError(f"unknown window kind {kind!r}: use one of {', '.join(WINDOW_KINDS)}")
        if kind != self._kind:
            self._close()
            self._open(kind)

    @property
    def running(self) -> bool:
        """Between `start()` (entering the block) and `stop()` (leaving it)."""
        return self._state == "running"

    @property
    def window_kind(self) -> str | None:
        """The kind of the open window (None when the meter is not running)."""
        return self._kind

    @contextlib.contextmanager
    def paused(self, kind: str = "eval") -> Iterator[None]:
        """Take a stretch out of the train window: evaluation ("eval") or anything else not charged ("overhead")."""
        previous = self._kind
        self.switch(kind)
        try:
            yield
        finally:
            if self._state == "running":
                self.switch(previous)

    def snapshot(self) -> dict[str, Any]:
        """Cumulative figures since the meter started, as curve.csv has them (step, tokens, flops, train_s, ...,
        energy_kwh, co2_kg, cost_cloud_usd, cost_energy_usd). Closes and reopens the open window."""
        self._require_running("snapshot")
        kind = self._kind
        self._close()
        try:
            row = {"step": self._steps_done + self._phase_steps, "tokens": self._tokens(self._phase_steps, total=True),
                   "flops": self._flops_done + self._phase_steps * self.flops_per_step, "phase": self._phase_name}
            return self._collectors.snapshot(row)
        finally:
            self._open(kind)

    def stop(self, write: bool = True) -> list[dict[str, Any]]:
        """End the last phase and close the collectors; with `write` and a `run_dir`, write run_dir/phases.csv.
        Returns `rows`. Stopping twice does nothing more."""
        if self._state != "running":
            return self.rows
        self._state = "stopped"
        try:
            self._end()
            if write and self.run_dir is not None:
                write_csv(self.run_dir / PHASES_FILE, self.rows)
        finally:
            self._shut()
        return self.rows

    @property
    def row(self) -> dict[str, Any] | None:
        """The last finished phase's phases.csv row (None before the first phase ends)."""
        return self.rows[-1] if self.rows else None

    # ----------------------------------------------------------------------------------- phases

    def _begin(self, name: str, model: nn.Module, example_batch: Any, loss: Loss | None) -> None:
        with self._collectors.window("overhead"):  # counting and calibrating are overhead, never charged
            batch = _to_device(example_batch, self.device)
            view, restore = _collector_view(batch)
            trainable = [p for p in model.parameters() if p.requires_grad]
            if not trainable:
                raise MeterError(f"{type(model).__name__} has no parameter that requires a gradient: nothing trains")
            compute = loss or _model_loss
            phase = Phase(name, model, trainable=trainable, loss=lambda b, step, progress: compute(model, restore(b)),
                          settings=_settings(loss, batch, self.accumulation))
            with _model_kept(model, trainable):
                try:
                    per_micro_batch = count_executed_step(phase, view)
                except Exception as error:  # any failure of the caller's step means the same thing
                    raise MeterError(
                        f"bench.meter counts one training step of {type(model).__name__} on example_batch, and that "
                        f"step failed: {type(error).__name__}: {error}. Give a batch the loop really trains on (it is "
                        f"moved to {self.device}) and a loss that works on it: loss=fn(model, batch) -> scalar tensor"
                        + ("" if loss else " (the default takes the model's own loss: model(**batch).loss)")
                    ) from error
                self._collectors.start_phase(phase, view, 1)
        self._phase, self._phase_name, self._phase_steps = phase, name, 0
        self.flops_per_step = float(per_micro_batch) * self.accumulation
        self._tokens_per_step = view["input_ids"].numel() * self.accumulation if _has_token_ids(batch) else None
        self._open("train")

    def _end(self) -> None:
        self._close()
        phase, steps = self._phase, self._phase_steps
        if phase is None:
            return
        row = {"phase": phase.name, "steps": steps, "tokens": self._tokens(steps),
               "flops_executed": steps * self.flops_per_step, "extra_forwards": 0,
               "parameters": sum(p.numel() for p in phase.model.parameters()),
               "trainable_parameters": sum(p.numel() for p in phase.trainable), "settings": phase.settings}
        row = self._collectors.end_phase(steps, row)
        if phase.settings["loss"] != _LM_LOSS and row.get("flops_analytic") is not None:
            row["flops_analytic"] = None
            row["flops_analytic_note"] = ("unavailable: the config formula counts growbench's LM loss "
                                          "(bench.objective.lm_loss), and this step runs another loss")
        row["plain_large"] = None  # no comparison, so no LARGE model whose plain training this would be
        self.rows.append(row)
        self._steps_done += steps
        self._flops_done += steps * self.flops_per_step
        self._tokens_done += self._tokens(steps) or 0
        self._phase = None

    def _tokens(self, steps: int, total: bool = False) -> int | None:
        if self._tokens_per_step is None:
            return self._tokens_done if total else None
        return (self._tokens_done if total else 0) + steps * self._tokens_per_step

    # ----------------------------------------------------------------------------------- windows

    def _open(self, kind: str) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self._collectors.window(kind))
        self._window, self._kind = stack, kind

    def _close(self) -> None:
        if self._window is not None:
            window, self._window, self._kind = self._window, None, None
            window.close()

    def _shut(self) -> None:
        try:
            self._close()
        finally:
            if self._collectors is not None:
                self._collectors.close()
            if self.run_dir is None and self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _require_running(self, what: str) -> None:
        if self._state != "running":
            raise MeterError(f"{what}() needs a running meter: use it inside `with bench.meter(...) as m:`")


# --------------------------------------------------------------------------------------- helpers

_LM_LOSS = f"{lm_loss.__module__}.{lm_loss.__qualname__}"
_DEFAULT_LOSS = "the model's own loss (model(**batch).loss)"


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _price_table(prices: dict | str | Path | None) -> dict:
    """The table itself, or bench/prices.toml (or a price file) with overrides applied."""
    if prices is None:
        return load_prices()
    if isinstance(prices, str | Path):
        return load_prices(prices)
    if isinstance(prices, Mapping) and "devices" in prices:
        return dict(prices)
    if isinstance(prices, Mapping):
        return load_prices(overrides=dict(prices))
    raise MeterError(f"prices must be a price table, a price file or overrides {{NAME: USD}}, got {type(prices).__name__}")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _has_token_ids(batch: Any) -> bool:
    return isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor)


def _collector_view(batch: Any) -> tuple[dict[str, torch.Tensor], Callable[[dict], Any]]:
    """(what the collectors see, a map from what they pass the loss back to the caller's batch).

    The collectors read `input_ids` (device, shape) and, for a transformers model, trace the loss on a batch of
    `input_ids` and `labels` only (fvcore); the caller's loss gets the caller's keys, those two taken from the
    traced batch and the others from the example."""
    if _has_token_ids(batch):
        view = dict(batch)
        view.setdefault("labels", view["input_ids"])
        return view, lambda b: {key: b.get(key, value) for key, value in batch.items()}
    tensor = _first_tensor(batch)
    if tensor is None:
        raise MeterError("example_batch holds no tensor: give one (micro-)batch of the shape the loop trains on")
    return {"input_ids": tensor, "labels": tensor}, lambda b: batch


def _model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The model's own loss: `model(**batch)` (a dict), `model(*batch)` (a tuple or list) or `model(batch)`."""
    if isinstance(batch, Mapping):
        output = model(**batch)
    elif isinstance(batch, tuple | list):
        output = model(*batch)
    else:
        output = model(batch)
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        return output
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise MeterError(f"{type(model).__name__}'s output ({type(output).__name__}) has no loss: give "
                         "loss=fn(model, batch) -> scalar tensor (a transformers model computes one when the batch "
                         "has labels)")
    return loss


def _loss_name(loss: Loss | None) -> str:
    if loss is None:
        return _DEFAULT_LOSS
    return f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', type(loss).__qualname__)}"


def _shape_of(batch: Any) -> str:
    tensor = batch.get("input_ids") if _has_token_ids(batch) else _first_tensor(batch)
    return "x".join(map(str, tensor.shape)) if tensor is not None else ""


def _settings(loss: Loss | None, batch: Any, accumulation: int) -> dict[str, Any]:
    """What the row was charged from, for phases.csv's settings column."""
    return {"metered": "bench.meter: every step charged one counted step of example_batch",
            "loss": _loss_name(loss), "example_batch": _shape_of(batch), "accumulation": accumulation}


@contextlib.contextmanager
def _model_kept(model: nn.Module, trainable: list[nn.Parameter]) -> Iterator[None]:
    """Count and calibrate in train mode, then give back the modules' modes and the caller's gradients (counting
    drops the gradients it made, and would drop gradients the caller is accumulating)."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(parameter, parameter.grad) for parameter in trainable]
    for parameter in trainable:
        parameter.grad = None  # else the counted backward would add into the caller's gradient tensors
    model.train()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, grad in grads:
            parameter.grad = grad


__all__ = ["PHASES_FILE", "Meter", "MeterError", "meter"]
