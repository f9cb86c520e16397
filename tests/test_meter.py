"""bench.meter around a caller's own loop, and CostCallback around a transformers Trainer: the bill of
`bench compare`'s collectors, with the flops collector's own count of one step."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench
from bench.collectors.flops import fvcore_step
from bench.metering import MeterError
from bench.objective import IGNORE, lm_loss
from bench.phases import Phase
from bench.sizes import get_size
from bench.train import LoopConfig, step_flops

VOCAB, BATCH, SEQ = 128, 4, 16


def mlm_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = input_ids.clone()
    labels[torch.rand(BATCH, SEQ, generator=generator) > 0.15] = IGNORE
    labels[:, 0] = input_ids[:, 0]  # at least one scored position per row
    return {"input_ids": input_ids, "labels": labels}


def test_meter_bills_a_hand_written_loop_with_the_flops_collector_s_count(tmp_path):
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with bench.meter(model, mlm_batch(), loss=lm_loss, run_dir=tmp_path) as m:
        for step in range(6):
            loss = lm_loss(model, mlm_batch(step))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            m.step()
        with m.paused("eval"), torch.no_grad():
            lm_loss(model, mlm_batch(99))
        so_far = m.snapshot()
    row = m.row

    per_step = step_flops(Phase("train", model), mlm_batch(), LoopConfig())
    assert m.flops_per_step == per_step
    assert row["steps"] == 6 and row["flops_executed"] == 6 * per_step
    assert row["tokens"] == 6 * BATCH * SEQ
    assert row["flops_fvcore"] == pytest.approx(row["flops_executed"], rel=0.05)  # accounting.md's cross-check
    assert row["flops_analytic"] == row["flops_executed"]  # lm_loss is the loss the formula describes
    assert row["train_s"] > 0 and row["eval_s"] > 0 and row["reference_s"] > 0
    assert row["device_hours"] > 0 and row["device_kind"] == "cpu-core-hours"
    assert row["energy_kwh"] is None or row["energy_kwh"] > 0
    assert row["energy_method"] and row["energy_gpu_method"].startswith("not_used")
    assert re.match(r"(rapl|tdp_estimate|unavailable)", row["energy_cpu_method"])
    assert row["co2_kg"] is None or row["co2_kg"] > 0
    assert row["cost_cloud_usd"] > 0 and row["cost_cloud_price"].startswith("cpu-core")
    assert so_far["step"] == 6 and so_far["flops"] == row["flops_executed"] and so_far["train_s"] > 0
    written = pd.read_csv(tmp_path / "phases.csv")
    assert list(written.columns) == list(row) and written.loc[0, "flops_executed"] == row["flops_executed"]


def test_default_loss_is_the_model_s_own_and_counts_what_it_runs():
    """transformers' BertForMaskedLM loss runs the head on every position: counted as run, checked against fvcore,
    and the config formula (growbench's loss: masked positions only) is withheld, with the reason."""
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    batch = {**mlm_batch(), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}
    with bench.meter(model, batch) as m:
        m.step(3)
    own = Phase("own", model, loss=lambda b, step, progress: model(**batch).loss)
    assert m.flops_per_step == step_flops(own, batch, LoopConfig())
    # fvcore also counts LayerNorm: ~1% at this size; accounting.md's cross-check allows 5%
    assert m.flops_per_step == pytest.approx(fvcore_step(own, batch).training_flops, rel=0.05)
    assert m.flops_per_step > step_flops(Phase("lm", model), batch, LoopConfig())
    assert m.row["flops_fvcore"] == pytest.approx(3 * m.flops_per_step, rel=0.05)
    assert m.row["flops_analytic"] is None and m.row["flops_analytic_note"].startswith("unavailable")


def test_any_module_and_loss_frozen_layers_and_the_caller_s_state_kept():
    """A plain MLP on an (x, y) tuple: Linear(16, 32) is frozen, so it runs forward only, and Linear(32, 4), the
    lowest trainable layer, forward and weight gradient (no gradient flows below it); x 2 micro-batches a step.
    Counting leaves the caller's gradients, modes and flags as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model[0].requires_grad_(False)
    model.eval()
    batch = (torch.randn(8, 16), torch.randint(0, 4, (8,)))
    model[2].weight.grad = torch.ones_like(model[2].weight)  # a gradient being accumulated
    with bench.meter(model, batch, loss=lambda net, b: F.cross_entropy(net(b[0]), b[1]), accumulation=2) as m:
        m.step(5)
    assert m.flops_per_step == 2 * (2 * 8 * 16 * 32 + 2 * (2 * 8 * 32 * 4))
    assert m.row["flops_executed"] == 5 * m.flops_per_step
    assert m.row["trainable_parameters"] == 32 * 4 + 4 and m.row["tokens"] is None
    assert m.row["flops_fvcore"] is None and m.row["flops_fvcore_note"].startswith("unavailable")
    assert torch.equal(model[2].weight.grad, torch.ones_like(model[2].weight))
    assert not model.training and not model[0].weight.requires_grad and model[2].weight.requires_grad


def test_phases_make_one_row_each_and_snapshots_add_up():
    model = get_size("gpt2-nano").build(VOCAB, SEQ, seed=0)
    batch = {"input_ids": mlm_batch()["input_ids"], "labels": mlm_batch()["input_ids"]}
    small = {key: value[:2] for key, value in batch.items()}
    with bench.meter(model, batch, name="warmup") as m:
        m.step(2)
        m.phase("main", example_batch=small)
        m.step(3)
        total = m.snapshot()
    assert [row["phase"] for row in m.rows] == ["warmup", "main"]
    first, second = m.rows
    assert second["flops_executed"] / 3 == pytest.approx(first["flops_executed"] / 2 / 2, rel=0.01)
    assert total["step"] == 5 and total["flops"] == first["flops_executed"] + second["flops_executed"]


def test_a_loss_that_fails_on_the_example_batch_is_a_clear_error():
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    no_labels = {"input_ids": mlm_batch()["input_ids"]}
    with (pytest.raises(MeterError, match=r"one training step of BertForMaskedLM .*failed: KeyError"),
          bench.meter(model, no_labels, loss=lambda net, b: lm_loss(net, b))):
        pytest.fail("the block must not run")
    with pytest.raises(MeterError, match="has no loss"):  # no labels: the model computes no loss
        bench.meter(model, no_labels).start()
    with pytest.raises(MeterError, match="nothing trains"):
        bench.meter(model.requires_grad_(False), mlm_batch()).start()


# --------------------------------------------------------------------------------------- transformers.Trainer

class TokenRows(torch.utils.data.Dataset):
    def __init__(self, rows: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (rows, SEQ), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


class LogRecorder:
    """Stands for a reporting callback (TensorBoard, W&B, MLflow): what it was given to log."""

    def __init__(self):
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                recorder.logs.append(dict(logs))

        self.logs, self.callback = [], Callback()


def train_tiny_gpt2(output_dir, callback=None, recorder=None):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), max_steps=20, per_device_train_batch_size=BATCH,
                             learning_rate=1e-3, logging_steps=5, eval_strategy="steps", eval_steps=10,
                             per_device_eval_batch_size=BATCH, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenRows(), eval_dataset=TokenRows(8, seed=1),
                      callbacks=[recorder.callback] if recorder else None)
    if callback is not None:
        callback.add_to(trainer)
    trainer.train()
    return trainer


def test_cost_callback_bills_a_trainer_run_like_the_meter(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from bench.integrations.transformers import LOG_PREFIX, PHASES_FILE, CostCallback

    callback, recorder = CostCallback(), LogRecorder()
    trainer = train_tiny_gpt2(tmp_path / "metered", callback, recorder)
    row = callback.row
    with bench.meter(trainer.model, callback.batch_used) as m:
        m.step(20)
    assert row["steps"] == 20 and row["flops_executed"] == m.row["flops_executed"] > 0
    assert row["train_s"] > 0 and row["eval_s"] > 0 and row["energy_method"] and row["cost_cloud_usd"] > 0
    written = pd.read_csv(tmp_path / "metered" / PHASES_FILE)
    assert len(written) == 1 and written.loc[0, "flops_executed"] == row["flops_executed"]

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [5, 10, 15, 20]
    assert [entry[LOG_PREFIX + "flops_executed"] for entry in logged] == [s * m.flops_per_step for s in (5, 10, 15, 20)]
    assert all(entry[LOG_PREFIX + "train_s"] > 0 for entry in logged)
    final = trainer.state.log_history[-1]
    assert final[LOG_PREFIX + "flops_executed"] == row["flops_executed"]
    assert final[LOG_PREFIX + "energy_method"] == row["energy_method"]
    reported = [logs for logs in recorder.logs if "loss" in logs]  # a reporter after the callback sees the cost
    assert [logs[LOG_PREFIX + "flops_executed"] for logs in reported] == [e[LOG_PREFIX + "flops_executed"]
                                                                          for e in logged]

    plain = train_tiny_gpt2(tmp_path / "plain")  # counting and calibrating change nothing the run trains on
    assert [e["loss"] for e in plain.state.log_history if "loss" in e] == [e["loss"] for e in logged]


# --------------------------------------------------------------------------------------- the README section
# README.md's "Use the meter in your own training" shows exactly this code (test_readme_section_is_the_tested_code).

README_EXAMPLE = """\
import torch, bench
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from bench.integrations.transformers import CostCallback
model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=16, n_embd=32, n_layer=2, n_head=2))
ids = torch.randint(0, 128, (4, 16))
batch = {"input_ids": ids, "labels": ids}  # a batch of the shape the loop trains on
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
with bench.meter(model, batch) as m:  # the model's own loss, or loss=fn(model, batch)
    for step in range(20):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        m.step()
print(m.row["flops_executed"], m.row["train_s"], m.row["energy_kwh"], m.row["cost_cloud_usd"])

# the same bill for a transformers.Trainer run (the Trainer needs accelerate)
data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 128, (64, 16))]
args = TrainingArguments("out", max_steps=20, per_device_train_batch_size=4, report_to=[], use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=data)
callback = CostCallback().add_to(trainer)  # ahead of TensorBoard / W&B / MLflow: they log the cost too
trainer.train()  # logs gain growbench/flops_executed, train_s, energy_kwh, ...; rows: out/growbench_phases.csv
"""

README_HEADING = "## Use the meter in your own training"


def test_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(README_EXAMPLE, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["m"].row["steps"] == 20 and math.isfinite(namespace["m"].row["flops_executed"])
    assert namespace["callback"].row["flops_executed"] == namespace["m"].row["flops_executed"]
    assert (tmp_path / "out" / "growbench_phases.csv").exists()


def test_readme_section_is_the_tested_code():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    assert README_HEADING in text
    section = text.split(README_HEADING, 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"```python\n(.*?)```", section, re.DOTALL) == [README_EXAMPLE]
