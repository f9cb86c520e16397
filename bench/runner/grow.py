"""`bench grow`: a parent checkpoint grown into LARGE by a method's initialisation, saved with its bill."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import __version__
from bench.errors import BenchError
from bench.methods import GrowthContext, make_method
from bench.records import RunDir, write_json
from bench.runner.one_run import train_run
from bench.runner.parent import load_parent
from bench.runner.prepare import scratch_step, standalone
from bench.sizes import Dims, Size, defaults_for, get_size, make_pair
from bench.train import Budget


def grow_command(method_name: str, source: str, to: str, out: Path, method_args: dict, seed: int, corpus,
                 tokenizer_dir, device, dtype, progress_bar: bool) -> Path:
    """Grow a parent checkpoint into LARGE with a method's initialisation (running phases such as
    LiGO's operator on the corpus) and save it, with what produced it and what that cost."""
    method = make_method(method_name, method_args.get(method_name))
    if not method.needs_parent:
        raise BenchError(f"method {method_name} does not grow from a parent, so it has nothing to grow")
    large = get_size(to)
    parent = load_parent(source, None, large.family)
    config = parent.config
    small = Size(f"parent({Path(source).name})", large.family, *Dims.of(config))
    pair = make_pair(small, large)
    tokenizer_dir = tokenizer_dir or source
    prepared, loop, prices = standalone(large, corpus, tokenizer_dir, device, dtype, None, progress_bar,
                                         f"grow {method_name}")
    if prepared.vocab_size != config.vocab_size:
        raise BenchError(f"the tokenizer has {prepared.vocab_size} tokens but the parent {config.vocab_size}")
    large_flops, _ = scratch_step(large, prepared, loop)
    budget = Budget("flops", large_flops * defaults_for(large).budget_steps)
    ctx = GrowthContext(pair, parent, prepared.vocab_size, prepared.config.seq_len, prepared.pad_token_id, seed)
    result = train_run(method.phases(ctx), budget, prepared, seed, loop, out, prices, init_only=True)
    run = RunDir(out)
    run.save_model(result.final_model, prepared.tokenizer)
    write_json(out / "growth.json", {
        "method": method_name, "settings": asdict(method.settings), "parent": source, "to": to, "seed": seed,
        "val_loss": result.final_val_loss, "phases": result.phases,
        "flops_executed": sum(row["flops_executed"] for row in result.phases),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "growbench_version": __version__,
    })
    return out / "model"


