"""The parent: SMALL pretrained once (cached by everything that produced it), or a checkpoint the user gives."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from bench import data, distributed
from bench.collectors.cost import load_prices
from bench.errors import UNUSABLE_PATH, BenchError, is_disk_full, is_out_of_memory
from bench.hardware import math_name
from bench.locks import RUN_LOCK, Lock
from bench.records import CHECKPOINT, RUNNING, RunDir
from bench.runner.one_run import Checkpointing, record_run, train_run
from bench.runner.prepare import PARENT_SEED, Prepared, plain_phases, scratch_step, standalone
from bench.sizes import FAMILIES, Dims, Pair, Size, defaults_for, get_size, positions_of
from bench.train import Budget, LoopConfig

logger = logging.getLogger(__name__)
PARENT_CHECKPOINT_SECONDS = 600.0
"""Between the eval points' checkpoints, as a comparison's runs by default: a stopped or killed pretraining continues
from its last one (`bench pretrain` again, or the comparison's --resume)."""


def parent_key(size: Size, steps: int, prepared: Prepared, loop: LoopConfig) -> str:
    """What the cached parent depends on, hashed; the device type, the math (autocast dtype, TF32), the
    micro-batch and the world size are in it, so that a parent trained (and billed) on a CPU is never reused by a GPU
    comparison, nor a bf16 one by an fp32 one."""
    identity = {"size": asdict(size), "steps": steps, "data": prepared.fingerprint(), "optim": asdict(loop.optim),
                "seed": PARENT_SEED, "torch": torch.__version__, "transformers": transformers.__version__,
                "device": loop.device.type, "dtype": math_name(loop.device, loop.autocast_dtype),
                "micro_batch": loop.micro_batch, "world_size": distributed.world().size}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain(size: Size, steps: int, prepared: Prepared, loop: LoopConfig, out: Path | None = None,
             prices: dict | None = None) -> Path:
    """Train SMALL from scratch for `steps` steps' FLOPs and keep it (with its bill) as a parent.

    Cached by everything that produced it; returns the folder holding model/, curve.csv, phases.csv.
    """
    folder = out or data.cache_root() / "parents" / parent_key(size, steps, prepared, loop)
    run = RunDir(folder)
    with Lock(folder / RUN_LOCK):  # two comparisons that need the same parent train it once
        if run.is_done() and not run.damaged():
            return folder
        if run.is_done():
            logger.warning("the cached parent %s is damaged (%s); training it again", folder, run.damaged()[0][0])
        return _pretrain_into(run, size, steps, prepared, loop, prices)


def _pretrain_into(run: RunDir, size: Size, steps: int, prepared: Prepared, loop: LoopConfig,
                   prices: dict | None) -> Path:
    folder = run.path
    step_flops, _ = scratch_step(size, prepared, loop)
    budget = Budget("flops", step_flops * steps)
    run.set_status(RUNNING, method="parent", size=size.name, seed=PARENT_SEED)
    # its checkpoints are always continued: the folder is named by everything that produced the parent
    checkpoint = Checkpointing(folder / CHECKPOINT, PARENT_CHECKPOINT_SECONDS, resume=True)
    result = train_run(functools.partial(plain_phases, size, prepared, PARENT_SEED), budget, prepared, PARENT_SEED,
                       loop, folder, prices or load_prices(), checkpoint=checkpoint)
    record_run(run, result, prepared, method="parent", seed=PARENT_SEED, size=size.name, budget_steps=steps)
    if result.diverged:
        raise BenchError(f"the parent's pretraining diverged: {result.diverged}")
    return folder


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def checkpoint_location(path: str) -> bool:
    """True when `path` is a local checkpoint folder, False when it can only be a hub id; BenchError when it names
    a local path that does not exist, or a file."""
    local = Path(path).expanduser()
    if local.is_dir():
        return True
    if local.exists():
        raise BenchError(f"parent checkpoint {path} is a file; give the folder that holds config.json and the weights")
    parent = local.parent
    if (local.is_absolute() or path.startswith((".", "~")) or not _HUB_ID.fullmatch(path) or ".." in path
            or (parent != Path(".") and parent.exists())):
        raise BenchError(f"parent checkpoint {path} does not exist")
    return False


@dataclass(frozen=True)
class ParentCheckpoint:
    """A parent the user gave (`--small-from`, `bench grow --from`), read up to its config: where it is, and what
    LARGE takes from it (everything but the shape: vocabulary, positions, type vocabulary, special ids), before
    any weight loads."""

    source: str  # as the user gave it
    where: str  # the folder (~ expanded), or the hub id
    local: bool
    config: PretrainedConfig

    @property
    def family(self) -> str:
        return self.config.model_type

    @property
    def positions(self) -> int:
        return positions_of(self.config)

    def check_positions(self, seq_len: int) -> None:
        """BenchError when a sequence of the run (`seq_len` tokens) does not fit the parent's position table."""
        if self.positions < seq_len:
            raise BenchError(f"the parent at {self.source} has {self.positions} positions, fewer than the run's "
                             f"sequence length {seq_len}")

    def tokenizer(self, tokenizer_dir: str | None = None):
        """The parent's own tokenizer (or the one in `tokenizer_dir`, when the user gave one), checked to fit the
        parent's vocabulary."""
        if tokenizer_dir is not None:
            tokenizer = data.load_pretrained_tokenizer(tokenizer_dir, True, f"tokenizer folder {tokenizer_dir}")
        else:
            tokenizer = data.load_pretrained_tokenizer(self.where, self.local, f"the parent at {self.source}",
                                                       hint="; give its tokenizer with --tokenizer DIR")
        if len(tokenizer) > self.config.vocab_size:
            raise BenchError(f"the tokenizer of {tokenizer_dir or f'the parent at {self.source}'} has "
                             f"{len(tokenizer)} tokens, more than the parent's vocabulary of {self.config.vocab_size}")
        return tokenizer

    def essentials(self, tokenizer=None) -> dict:
        """What a manifest records of the parent: its source, the config entries LARGE takes from it, a hash of the
        whole config, and the tokenizer's special ids and fingerprint."""
        config = self.config
        entries = {key: value for key, value in config.to_dict().items()
                   if key not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")}
        record = {
            "source": self.source, "hub": not self.local, "model_type": config.model_type,
            "architectures": config.architectures, **Dims.of(config)._asdict(), "vocab_size": config.vocab_size,
            "positions": self.positions, "type_vocab_size": getattr(config, "type_vocab_size", None),
            "tie_word_embeddings": getattr(config, "tie_word_embeddings", None),
            "special_ids": {key: getattr(config, f"{key}_token_id", None) for key in ("pad", "bos", "eos")},
            "config_sha256": hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest(),
        }
        if tokenizer is not None:
            record["tokenizer"] = {
                "class": type(tokenizer).__name__, "tokens": len(tokenizer),
                "fingerprint": data.tokenizer_fingerprint(tokenizer),
                "special_ids": {role: getattr(tokenizer, f"{role}_token_id", None)
                                for role in ("pad", "bos", "eos", "cls", "sep", "mask", "unk")},
            }
        return record

    def load(self) -> PreTrainedModel:
        """The weights, in float32, with the language-model head growth needs (BenchError when it is missing)."""
        auto = AutoModelForCausalLM if self.family == "gpt2" else AutoModelForMaskedLM
        try:
            model, info = auto.from_pretrained(self.where, local_files_only=self.local, use_safetensors=True,
                                               dtype=torch.float32, output_loading_info=True)
        except Exception as error:  # whatever the checkpoint holds, it is the user's input
            if _machine_fault(error):
                raise
            raise BenchError(f"cannot load the parent checkpoint {self.source}: {_first_line(error)}") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            head = "causal-LM" if self.family == "gpt2" else "masked-LM"
            raise BenchError(f"the parent at {self.source} lacks weights of a {type(model).__name__} ({missing[0]}"
                             f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): growth needs a "
                             f"checkpoint with its {head} head")
        return model


def _machine_fault(error: BaseException) -> bool:
    """The machine's fault (a full disk while a hub download is cached, an I/O error), not the input's."""
    machine = isinstance(error, OSError) and error.errno not in (None, *UNUSABLE_PATH)
    return machine or is_disk_full(error) or is_out_of_memory(error)


def open_parent(path: str) -> ParentCheckpoint:
    """A parent checkpoint (a folder, or a hub id the user asked for: nothing is downloaded otherwise), read up to
    its config; BenchError when there is none, or its model type is not one growbench grows."""
    local = checkpoint_location(path)
    where = str(Path(path).expanduser()) if local else path
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local)
    except Exception as error:  # whatever the checkpoint holds, it is the user's input
        if _machine_fault(error):
            raise
        raise BenchError(f"cannot load the parent checkpoint {path}: {_first_line(error)}") from None
    if config.model_type not in FAMILIES:
        raise BenchError(f"the parent at {path} is a {config.model_type} model; growbench grows "
                         f"{', '.join(FAMILIES)} checkpoints")
    return ParentCheckpoint(path, where, local, config)


def load_parent(path: str, size: Size | None, family: str | None = None,
                checkpoint: ParentCheckpoint | None = None) -> PreTrainedModel:
    """A parent checkpoint (a folder, or a hub id the user asked for; `checkpoint` when it is open already),
    checked against SMALL's shape and family."""
    family = family or size.family
    checkpoint = checkpoint or open_parent(path)
    if checkpoint.family != family:  # known before the weights load (and transformers warns of a misfit)
        raise BenchError(f"the parent at {path} is a {checkpoint.family} model, not {family}")
    shape = Dims.of(checkpoint.config)
    if size is not None and shape != size.dims:
        raise BenchError(f"the parent at {path} is {shape} (layers, hidden, heads, ffn), not {size.name} {size.dims}")
    return checkpoint.load()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def comparison_parent(small_from: str | None, pair: Pair, steps: int, prepared: Prepared | None, loop: LoopConfig,
                      prices: dict, out: Path, echo, checkpoint: ParentCheckpoint | None = None) -> PreTrainedModel:
    """The comparison's parent: the user's checkpoint (`checkpoint` when it is open already), or SMALL pretrained
    (from the cache) and copied into OUT/parent/ with its bill."""
    if small_from:
        echo(f"parent: {small_from} (given; its pretraining cost is unknown to growbench)")
        checkpoint = checkpoint or (prepared.parent if prepared is not None else None)
        return load_parent(small_from, pair.small, checkpoint=checkpoint)
    own = RunDir(out / "parent")  # the comparison keeps its own copy: jobs on other machines load it from there
    if not (own.is_done() and not own.damaged()):
        loop = replace(loop, label=f"parent {pair.small.name}")
        echo(f"parent: {pair.small.name}, {steps} steps (cached once trained)")
        RunDir(pretrain(pair.small, steps, prepared, loop, prices=prices)).copy_to(own.path)
    return load_parent(str(own.path / "model"), pair.small)




def pretrain_command(size_name: str, steps: int | None, out: Path | None, corpus, tokenizer_dir, device, dtype, lr,
                     progress_bar: bool, micro_batch: int | None = None) -> Path:
    size = get_size(size_name)
    if steps is not None and steps < 1:
        raise BenchError("--steps must be at least 1")
    prepared, loop, prices = standalone(size, corpus, tokenizer_dir, device, dtype, lr, progress_bar,
                                        f"pretrain {size.name}", micro_batch=micro_batch)
    return pretrain(size, steps or defaults_for(size).parent_steps, prepared, loop, out, prices)
