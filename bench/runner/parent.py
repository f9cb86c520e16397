"""The parent: SMALL pretrained once (cached by everything that produced it), or a checkpoint the user gives."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from bench import data
from bench.collectors.cost import load_prices
from bench.errors import BenchError
from bench.records import RUNNING, RunDir
from bench.runner.one_run import record_run, train_run
from bench.runner.prepare import PARENT_SEED, Prepared, plain_phase, scratch_step, standalone
from bench.sizes import Dims, Pair, Size, defaults_for, get_size
from bench.train import Budget, LoopConfig


def parent_key(size: Size, steps: int, prepared: Prepared, loop: LoopConfig) -> str:
    identity = {"size": asdict(size), "steps": steps, "data": prepared.fingerprint(), "optim": asdict(loop.optim),
                "seed": PARENT_SEED, "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain(size: Size, steps: int, prepared: Prepared, loop: LoopConfig, out: Path | None = None,
             prices: dict | None = None) -> Path:
    """Train SMALL from scratch for `steps` steps' FLOPs and keep it (with its bill) as a parent.

    Cached by everything that produced it; returns the folder holding model/, curve.csv, phases.csv.
    """
    folder = out or data.cache_root() / "parents" / parent_key(size, steps, prepared, loop)
    run = RunDir(folder)
    if run.is_done():
        return folder
    step_flops, _ = scratch_step(size, prepared, loop)
    budget = Budget("flops", step_flops * steps)
    run.set_status(RUNNING, method="parent", size=size.name, seed=PARENT_SEED)
    result = train_run(iter([plain_phase(size, prepared, PARENT_SEED)]), budget, prepared, PARENT_SEED, loop, folder,
                    prices or load_prices())
    record_run(run, result, prepared, method="parent", seed=PARENT_SEED, size=size.name, budget_steps=steps)
    if result.diverged:
        raise BenchError(f"the parent's pretraining diverged: {result.diverged}")
    return folder


def load_parent(path: str, size: Size | None, family: str | None = None) -> PreTrainedModel:
    """A parent checkpoint (a folder, or a hub id the user asked for), checked against SMALL's shape."""
    family = family or size.family
    auto = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
    local = Path(path).is_dir()
    if not local and not Path(path).parent.exists() and "/" not in path:
        raise BenchError(f"parent checkpoint {path} does not exist")
    try:
        model = auto.from_pretrained(path, local_files_only=local, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise BenchError(f"cannot load the parent checkpoint {path}: {str(error).splitlines()[0]}") from None
    config = model.config
    if config.model_type != family:
        raise BenchError(f"the parent at {path} is a {config.model_type} model, not {family}")
    shape = Dims.of(config)
    if size is not None and shape != size.dims:
        raise BenchError(f"the parent at {path} is {shape} (layers, hidden, heads, ffn), not {size.name} {size.dims}")
    return model


def comparison_parent(small_from: str | None, pair: Pair, steps: int, prepared: Prepared, loop: LoopConfig, prices: dict,
            out: Path, echo) -> PreTrainedModel:
    if small_from:
        echo(f"parent: {small_from} (given; its pretraining cost is unknown to growbench)")
        return load_parent(small_from, pair.small)
    loop = replace(loop, label=f"parent {pair.small.name}")
    echo(f"parent: {pair.small.name}, {steps} steps (cached once trained)")
    folder = pretrain(pair.small, steps, prepared, loop, prices=prices)
    parent_run = RunDir(out / "parent")
    for name in ("curve.csv", "phases.csv", "status.json"):
        parent_run.path.mkdir(parents=True, exist_ok=True)
        (parent_run.path / name).write_bytes((folder / name).read_bytes())
    return load_parent(str(folder / "model"), pair.small)




def pretrain_command(size_name: str, steps: int | None, out: Path | None, corpus, tokenizer_dir, device, dtype, lr,
                     progress_bar: bool) -> Path:
    size = get_size(size_name)
    if steps is not None and steps < 1:
        raise BenchError("--steps must be at least 1")
    prepared, loop, prices = standalone(size, corpus, tokenizer_dir, device, dtype, lr, progress_bar,
                                        f"pretrain {size.name}")
    return pretrain(size, steps or defaults_for(size).parent_steps, prepared, loop, out, prices)
