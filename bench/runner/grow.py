"""`bench grow`: a parent checkpoint grown into LARGE by a method's initialisation, saved with its bill.

What `bench grow` saves is the model a method's training would start from: it runs the phases that fit the
initialisation (`Phase.fits_init`, e.g. LiGO's operator) and saves the model of the first phase that is not one.
So it refuses a method whose phases hold nothing that fits an initialisation, which it tells from the phases
themselves (no method is known by name): when the first phase is not one that fits the initialisation and its
model is either not LARGE's shape (the method grows during training) or exactly LARGE's own random initialisation
(the parent reaches LARGE only through training, e.g. as a teacher), there is no grown initialisation to save.
"""

from __future__ import annotations

import copy
import functools
import gc
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import __version__
from bench.errors import BenchError
from bench.methods import GrowthContext, Method, make_method
from bench.records import RunDir, write_json
from bench.runner.one_run import train_run
from bench.runner.parent import load_parent, open_parent
from bench.runner.prepare import scratch_step, standalone
from bench.sizes import Dims, defaults_for, get_size, parent_pair
from bench.train import Budget


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(
        first[key].shape == second[key].shape and torch.equal(first[key], second[key]) for key in first)


def initialisation_problem(method: Method, ctx: GrowthContext) -> str | None:
    """Why `method` has no grown initialisation of LARGE to save, or None when it has one. Builds the method's
    first phase (growth surgery, no training) on `ctx`, which the method may change: give it its own copies."""
    phases = method.phases(ctx)
    first = next(phases, None)
    if first is None:
        return "it yields no phase"
    if first.fits_init:
        return None  # the phases that fit the initialisation run, and the model they produce is saved
    model, large = first.eval_model, ctx.pair.large
    config = getattr(model, "config", None)
    if config is None:
        return f"its first phase ({first.name}) trains a {type(model).__name__}, not a transformers model of LARGE"
    if Dims.of(config) != large.dims:
        return (f"its first phase ({first.name}) trains a {tuple(Dims.of(config))} model (layers, hidden, heads, "
                f"ffn), not {large.name} {tuple(large.dims)}: it grows LARGE during training, so there is no LARGE "
                "initialisation to save")
    if _same_weights(model, ctx.build_large()):
        how = " (the parent only guides training, as a teacher)" if first.extra_forward else ""
        return (f"its first phase ({first.name}) trains {large.name} from its random initialisation{how}: its "
                "growth is training, so there is no grown initialisation to save")
    return None


def grow_command(method_name: str, source: str, to: str, out: Path, method_args: dict, seed: int, corpus,
                 tokenizer_dir, device, dtype, progress_bar: bool, prices: dict | None = None,
                 micro_batch: int | None = None) -> Path:
    """Grow a parent checkpoint into LARGE with a method's initialisation (running phases such as
    LiGO's operator on the corpus, in micro-batches of `micro_batch` rows, None = LARGE's default) and save it,
    with what produced it and what that cost (at `prices`, default the built-in price table)."""
    others = sorted(set(method_args) - {method_name})
    if others:
        raise BenchError(f"--method-arg for {', '.join(others)}, but the method is {method_name}")
    method = make_method(method_name, method_args.get(method_name))
    if not method.needs_parent:
        raise BenchError(f"method {method_name} does not grow from a parent, so it has nothing to grow")
    if seed < 0:
        raise BenchError(f"--seed must be >= 0, got {seed}")
    large = get_size(to)
    checkpoint = open_parent(source)
    pair = parent_pair(f":{large.name}", checkpoint.config, source)
    seq_len = defaults_for(large).seq_len
    checkpoint.check_positions(seq_len)
    method = make_method(method_name, method_args.get(method_name), pair)
    parent = load_parent(source, pair.small, checkpoint=checkpoint)
    config = parent.config
    # Before any data is prepared: does the method have an initialisation to save at all?
    pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or 0)
    probe = GrowthContext(pair, copy.deepcopy(parent), config.vocab_size, seq_len, pad, seed, checkpoint.config)
    problem = initialisation_problem(type(method)(copy.deepcopy(method.settings)), probe)
    del probe
    gc.collect()
    if problem:
        raise BenchError(f"{method_name} has nothing `bench grow` could save: {problem}")
    prepared, loop, default_prices = standalone(large, corpus, tokenizer_dir, device, dtype, None, progress_bar,
                                                f"grow {method_name}", parent=checkpoint, micro_batch=micro_batch)
    prices = prices or default_prices
    large_flops, _ = scratch_step(large, prepared, loop)
    budget = Budget("flops", large_flops * defaults_for(large).budget_steps)
    ctx = GrowthContext(pair, parent, prepared.vocab_size, prepared.config.seq_len, prepared.pad_token_id, seed,
                        prepared.base)
    result = train_run(functools.partial(method.phases, ctx), budget, prepared, seed, loop, out, prices, init_only=True)
    run = RunDir(out)
    run.save_model(result.final_model, prepared.tokenizer)
    write_json(out / "growth.json", {
        "method": method_name, "settings": asdict(method.settings), "parent": source, "to": to, "seed": seed,
        "parent_checkpoint": checkpoint.essentials(prepared.tokenizer), "data": prepared.fingerprint(),
        "val_loss": result.final_val_loss, "phases": result.phases,
        "flops_executed": sum(row["flops_executed"] for row in result.phases),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "growbench_version": __version__,
    })
    return out / "model"
