"""`CostCallback`: the growbench bill of a `transformers.Trainer` run, from `bench.meter` (the same collectors as
`bench compare`; no count of its own).

    callback = CostCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    callback.row  # the phases.csv row of the run; also in args.output_dir/growbench_phases.csv

- on_train_begin: a meter around the model; it counts one training step (forward and backward of the model's own
  loss, or `loss`) on `example_batch`, or on the first `per_device_train_batch_size` examples of the train
  dataset collated as the train dataloader collates them (no sampler is drawn and the RNG streams are restored,
  so the run trains on what it would have without the callback). With `gradient_accumulation_steps` = k, each
  optimizer step is charged k of those micro-batches.
- on_step_end: one optimizer step; when an evaluation or a checkpoint follows, its time goes to the meter's
  "eval" / "overhead" window (logged, not charged) until the next step begins.
- on_log: the cumulative figures so far (growbench/flops_executed, train_s, reference_s, device_hours, energy_kwh,
  co2_kg, cost_cloud_usd, cost_energy_usd; numbers only, and only those measured) join the log, in `logs` and in
  `state.log_history`. Reporting callbacks (TensorBoard, W&B, MLflow) see them only if this callback runs before
  them: `Trainer(callbacks=[...])` puts it after them, `callback.add_to(trainer)` before them.
- on_train_end: the phase's row (every phases.csv column, labels included) goes to `rows`, to
  `state.log_history` (keys prefixed "growbench/") and to args.output_dir/growbench_phases.csv (written atomically,
  by the main process only; each `train()` call adds a row).

Each process of a distributed run meters its own device; the rows are per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from bench.hardware import rng_preserved
from bench.metering import Loss, Meter, MeterError, meter
from bench.records import write_csv

PHASES_FILE = "growbench_phases.csv"
LOG_PREFIX = "growbench/"
# cumulative figures added to each log: (log key, Meter.snapshot key)
LOG_COLUMNS = (("flops_executed", "flops"), ("train_s", "train_s"), ("reference_s", "reference_s"),
               ("device_hours", "device_hours"), ("energy_kwh", "energy_kwh"), ("co2_kg", "co2_kg"),
               ("cost_cloud_usd", "cost_cloud_usd"), ("cost_energy_usd", "cost_energy_usd"))


class CostCallback(TrainerCallback):
    """Meters a `Trainer` run with `bench.meter` (module docstring).

    example_batch: one micro-batch as the model receives it (default: built from the train dataloader).
    loss:          loss(model, batch) -> scalar tensor, when the Trainer computes another loss than the model's
                   own (a `compute_loss` override, label smoothing); default `model(**batch).loss`.
    prices, country, run_dir: as `bench.meter` takes them.
    name:          the phase's name in the rows.
    file_name:     the rows' file in args.output_dir (None: write none).
    """

    def __init__(self, example_batch: Any = None, loss: Loss | None = None, *, prices: dict | str | Path | None = None,
                 country: str = "WLD", run_dir: str | Path | None = None, name: str = "train",
                 file_name: str | None = PHASES_FILE):
        self.example_batch, self.loss = example_batch, loss
        self.prices, self.country, self.run_dir, self.name, self.file_name = prices, country, run_dir, name, file_name
        self.rows: list[dict[str, Any]] = []
        self.meter: Meter | None = None
        self.batch_used: Any = None  # the batch the last run's step was counted on

    @property
    def row(self) -> dict[str, Any] | None:
        """The last run's phases.csv row (None before a run ended)."""
        return self.rows[-1] if self.rows else None

    def add_to(self, trainer) -> CostCallback:
        """Add the callback to `trainer` ahead of its reporting callbacks, so that they log the cost columns too."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        flow = [i for i, callback in enumerate(callbacks) if isinstance(callback, DefaultFlowCallback)]
        callbacks.insert(flow[0] + 1 if flow else 0, self)
        return self

    # ----------------------------------------------------------------------------------- Trainer events

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if model is None:
            raise MeterError("CostCallback: the Trainer passed no model to on_train_begin")
        batch = self.example_batch
        if batch is None:
            batch = first_batch(train_dataloader, args.per_device_train_batch_size)
        self.batch_used = batch
        self.meter = meter(model, batch, loss=self.loss, device=args.device, prices=self.prices, country=self.country,
                           run_dir=self.run_dir, name=self.name, accumulation=args.gradient_accumulation_steps)
        self.meter.start()

    def on_step_begin(self, args, state, control, **kwargs):
        self._switch("train")

    def on_step_end(self, args, state, control, **kwargs):
        if self._running():
            self.meter.step()
            self._leave_train_for(control)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._switch("train")

    def on_epoch_end(self, args, state, control, **kwargs):
        self._leave_train_for(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._running() or logs is None:
            return
        snapshot = self.meter.snapshot()
        columns = {LOG_PREFIX + key: snapshot[column] for key, column in LOG_COLUMNS
                   if _is_number(snapshot.get(column))}
        entry = state.log_history[-1] if state.log_history else None
        logs.update(columns)
        if entry is not None and entry.get("step") == state.global_step and all(
                entry.get(key) == value for key, value in logs.items() if key not in columns):
            entry.update(columns)  # the Trainer appended a copy of `logs` before calling on_log

    def on_train_end(self, args, state, control, **kwargs):
        if not self._running():
            return
        row = self.meter.stop()[-1]
        self.rows.append(row)
        state.log_history.append({**{LOG_PREFIX + key: value for key, value in row.items()},
                                  "step": state.global_step})
        if self.file_name and state.is_world_process_zero:
            write_csv(Path(args.output_dir) / self.file_name, self.rows)

    # ----------------------------------------------------------------------------------- helpers

    def _running(self) -> bool:
        return self.meter is not None and self.meter.running

    def _switch(self, kind: str) -> None:
        if self._running():
            self.meter.switch(kind)

    def _leave_train_for(self, control) -> None:
        """An evaluation or a checkpoint follows the step: its time is not charged."""
        if control.should_evaluate:
            self._switch("eval")
        elif control.should_save:
            self._switch("overhead")


def first_batch(dataloader, batch_size: int) -> Any:
    """One micro-batch as `dataloader` would give it, without drawing from its sampler or any RNG stream: the first
    `batch_size` examples of a map-style dataset collated by its collate_fn (an iterable dataset: its first batch)."""
    if dataloader is None:
        raise MeterError("CostCallback: no train dataloader to take an example batch from; give "
                         "CostCallback(example_batch=...)")
    base = getattr(dataloader, "base_dataloader", dataloader)  # accelerate wraps the torch DataLoader
    dataset, collate = getattr(base, "dataset", None), getattr(base, "collate_fn", None)
    with rng_preserved(torch.device("cpu")):
        if dataset is not None and collate is not None and not isinstance(dataset, IterableDataset) \
                and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and len(dataset) > 0:
            return collate([dataset[index] for index in range(min(batch_size, len(dataset)))])
        try:
            return next(iter(base))
        except StopIteration:
            raise MeterError("CostCallback: the train dataloader is empty") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
