"""The jobs behind the command line: pretrain a parent, compare methods into a run directory.

`compare` resolves everything the runs share (data, budget, parent, prices), writes the manifest,
then trains each (method, seed) with `train.train_phases` and records it. Nothing here knows a
method by name: methods come from the registry and yield their own phases.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from bench import __version__, data
from bench.calibration import (
    CALIBRATION_FILE,
    CalibrationTable,
    calibrate,
    comparison_table,
    manifest_entry,
    recalibrate_after,
)
from bench.collectors import CollectorSet, RunInfo, make_collectors
from bench.collectors.cost import load_prices
from bench.errors import BenchError
from bench.hardware import hardware_fingerprint
from bench.methods import GrowthContext, make_method
from bench.phases import Phase
from bench.records import DIVERGED, DONE, FAILED, RUNNING, RunDir, read_json, run_name, write_json
from bench.sizes import SIZES, Dims, Pair, Size, defaults_for, get_size, make_pair, parse_pair
from bench.train import BatchSource, Budget, LoopConfig, OptimConfig, RunResult, step_flops, step_seconds, train_phases

transformers.utils.logging.disable_progress_bar()  # our own bars show progress; no per-file load/save bars

PARENT_SEED = 0  # the parent is one fixed asset shared by every seed, as in the papers


@dataclass
class DataConfig:
    corpus: list[str] | None = None  # None = the built-in docstring corpus
    tokenizer_dir: str | None = None
    seq_len: int = 64
    batch_size: int = 16
    vocab_size: int = 8192


@dataclass
class Prepared:
    """Data shared by every run of a comparison."""

    tokenized: data.TokenizedCorpus
    corpus: data.Corpus
    objective: str
    config: DataConfig

    @property
    def tokenizer(self):
        return self.tokenized.tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def source(self, seed: int) -> BatchSource:
        stream = data.BatchStream(self.tokenized.train, self.tokenizer, self.objective, self.config.seq_len,
                                  self.config.batch_size, seed)
        validation = data.validation_batches(self.tokenized, self.objective, self.config.seq_len,
                                             self.config.batch_size)
        return BatchSource(stream.batch, validation, self.config.seq_len * self.config.batch_size)

    def fingerprint(self) -> dict:
        return {"corpus": self.corpus.fingerprint, "tokens": self.tokenized.fingerprint,
                "vocab_size": self.vocab_size, **asdict(self.config)}


def prepare_data(pair: Pair, config: DataConfig) -> Prepared:
    corpus = data.load_corpus(config.corpus)
    tokenizer = data.load_tokenizer(corpus, pair.family.tokenizer_kind, config.vocab_size, config.tokenizer_dir)
    return Prepared(data.tokenize_corpus(corpus, tokenizer), corpus, pair.family.objective, config)


@dataclass
class CompareConfig:
    pair: str = "bert-nano:bert-micro"
    methods: list[str] = field(default_factory=lambda: ["scratch"])
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    budget_unit: str = "flops"
    budget_value: float | None = None  # None: the pair's default, in steps of LARGE from scratch
    budget_steps: int | None = None
    parent_steps: int | None = None
    seeds: int = 1
    quick: bool = False
    data: DataConfig | None = None  # None: the pair's defaults with the built-in corpus
    small_from: str | None = None
    out: Path | None = None
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"
    lr: float | None = None
    eval_points: int = 20
    price_file: str | None = None
    prices: dict[str, float] = field(default_factory=dict)
    country: str = "WLD"
    progress_bar: bool = True


def resolve_device(name: str, dtype: str) -> tuple[torch.device, torch.dtype | None]:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    device = torch.device(name)
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise BenchError(f"unknown dtype {dtype!r}; use auto, fp32 or bf16")
    return device, torch.bfloat16 if dtype == "bf16" else None


def _loop_config(config: CompareConfig, pair: Pair, label: str) -> LoopConfig:
    device, autocast = resolve_device(config.device, config.dtype)
    optim = OptimConfig() if config.lr is None else OptimConfig(lr=config.lr)
    return LoopConfig(optim=optim, eval_points=config.eval_points, device=device, autocast_dtype=autocast,
                      micro_batch=pair.defaults.micro_batch if device.type == "cpu" else None,
                      progress_bar=config.progress_bar, label=label)


def _plain_phase(size: Size, prepared: Prepared, seed: int) -> Phase:
    model = size.build(prepared.vocab_size, prepared.config.seq_len, seed, prepared.pad_token_id)
    return Phase("train", model)


def scratch_step(size: Size, prepared: Prepared, loop: LoopConfig) -> tuple[float, float]:
    """(executed FLOPs, seconds) of one training step of `size` from scratch: the unit of --budget-steps."""
    phase = _plain_phase(size, prepared, seed=0)
    batch = prepared.source(0).batch(0)
    return step_flops(phase, batch, loop), step_seconds(phase, batch, loop)


# --- the parent -------------------------------------------------------------------------------


def _parent_key(size: Size, steps: int, prepared: Prepared, loop: LoopConfig) -> str:
    identity = {"size": asdict(size), "steps": steps, "data": prepared.fingerprint(), "optim": asdict(loop.optim),
                "seed": PARENT_SEED, "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain(size: Size, steps: int, prepared: Prepared, loop: LoopConfig, out: Path | None = None,
             prices: dict | None = None) -> Path:
    """Train SMALL from scratch for `steps` steps' FLOPs and keep it (with its bill) as a parent.

    Cached by everything that produced it; returns the folder holding model/, curve.csv, phases.csv.
    """
    folder = out or data.cache_root() / "parents" / _parent_key(size, steps, prepared, loop)
    run = RunDir(folder)
    if run.is_done():
        return folder
    step_flops, _ = scratch_step(size, prepared, loop)
    budget = Budget("flops", step_flops * steps)
    run.set_status(RUNNING, method="parent", size=size.name, seed=PARENT_SEED)
    result = _train(iter([_plain_phase(size, prepared, PARENT_SEED)]), budget, prepared, PARENT_SEED, loop, folder,
                    prices or load_prices())
    _record(run, result, prepared, method="parent", seed=PARENT_SEED, size=size.name, budget_steps=steps)
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


# --- one run ----------------------------------------------------------------------------------


def _train(phases, budget: Budget, prepared: Prepared, seed: int, loop: LoopConfig, folder: Path,
           prices: dict, country: str = "WLD", init_only: bool = False,
           calibration: CalibrationTable | None = None) -> RunResult:
    accumulation = math.ceil(prepared.config.batch_size / (loop.micro_batch or prepared.config.batch_size))
    collectors = CollectorSet(make_collectors(RunInfo(loop.device, folder, prices, country, accumulation,
                                                      calibration)))
    try:
        return train_phases(phases, budget, prepared.source(seed), loop, collectors, init_only)
    finally:
        collectors.close()


def _record(run: RunDir, result: RunResult, prepared: Prepared, **status) -> None:
    run.write_curve(result.curve)
    run.write_phases(result.phases)
    if result.diverged:
        run.set_status(DIVERGED, reason=result.diverged, **status)
        return
    run.save_model(result.final_model, prepared.tokenizer)
    run.set_status(DONE, reason=None, final_val_loss=result.final_val_loss, **status)


# --- compare ----------------------------------------------------------------------------------


def compare(config: CompareConfig, echo=print) -> Path:
    pair = parse_pair(config.pair)
    defaults = pair.defaults
    methods = {name: make_method(name, config.method_args.get(name)) for name in config.methods}
    if config.seeds < 1:
        raise BenchError("--seeds must be at least 1")
    data_config = config.data or DataConfig(seq_len=defaults.seq_len, batch_size=defaults.batch_size,
                                            vocab_size=defaults.vocab_size)
    prices = load_prices(config.price_file, config.prices)
    loop = _loop_config(config, pair, "")
    out = config.out or Path("reports") / f"{datetime.now():%Y-%m-%d}-{pair.name.replace(':', '_')}"
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise BenchError(f"{out} already holds a comparison; pass --resume to continue it or --out for a new one")

    echo(f"preparing data for {pair.name} ...")
    prepared = prepare_data(pair, data_config)
    budget_steps = config.budget_steps or (defaults.quick_budget_steps if config.quick else defaults.budget_steps)
    large_flops, large_seconds = scratch_step(pair.large, prepared, loop)
    budget = Budget(config.budget_unit, config.budget_value) if config.budget_value else \
        Budget("flops", large_flops * budget_steps)
    parent_steps = config.parent_steps or (defaults.quick_parent_steps if config.quick else defaults.parent_steps)
    needs_parent = any(method.needs_parent for method in methods.values())

    manifest = _manifest(config, pair, budget, large_flops, methods, prepared, loop, prices, parent_steps)
    manifest_path = out / "manifest.json"
    if config.resume and manifest_path.exists():
        _check_same_comparison(read_json(manifest_path), manifest)
    write_json(manifest_path, manifest)

    _print_estimate(echo, pair, budget, large_flops, large_seconds, len(methods) * config.seeds,
                    parent_steps if needs_parent and not config.small_from else 0, prepared, loop)

    parent = None
    if needs_parent:
        parent = _parent(config, pair, parent_steps, prepared, loop, prices, out, echo)

    def context(method, seed: int) -> GrowthContext:
        return GrowthContext(pair, copy.deepcopy(parent) if method.needs_parent else None, prepared.vocab_size,
                             data_config.seq_len, prepared.pad_token_id, seed)

    def calibrated() -> CalibrationTable:
        return calibrate(methods, context, config.seeds, budget, prepared.source, replace(loop, progress_bar=False),
                         echo=echo)

    table = comparison_table(out / CALIBRATION_FILE, config.resume, calibrated, echo)
    manifest["calibration"] = manifest_entry(table)
    write_json(manifest_path, manifest)
    ran = False
    failures = []
    for name, method in methods.items():
        for seed in range(config.seeds):
            run = RunDir(out / "runs" / run_name(name, seed))
            if config.resume and run.is_done():
                echo(f"{run_name(name, seed)}: done already, skipped")
                continue
            run.set_status(RUNNING, method=name, seed=seed)
            loop.label = f"{name} s{seed}"
            started, ran = time.perf_counter(), True
            try:
                result = _train(method.phases(context(method, seed)), budget, prepared, seed, loop, run.path, prices,
                                config.country, calibration=table)
            except BenchError as error:
                run.set_status(FAILED, reason=str(error), method=name, seed=seed)
                raise
            except Exception as error:  # noqa: BLE001 — one broken run must not lose the others
                run.set_status(FAILED, reason=f"{type(error).__name__}: {error}", method=name, seed=seed)
                failures.append(f"{run_name(name, seed)}: {type(error).__name__}: {error}")
                echo(f"{run_name(name, seed)}: FAILED ({type(error).__name__}: {error})")
                continue
            _record(run, result, prepared, method=name, seed=seed, settings=asdict(method.settings))
            state = f"diverged ({result.diverged})" if result.diverged else f"val loss {result.final_val_loss:.4f}"
            echo(f"{run_name(name, seed)}: {state} in {time.perf_counter() - started:.0f} s")
    if ran or not table.after:  # again after the last run, unless a finished session already did
        recalibrate_after(table, out / CALIBRATION_FILE, calibrated, echo)
        manifest["calibration"] = manifest_entry(table)
    manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(manifest_path, manifest)
    if failures:
        raise RuntimeError("some runs failed:\n" + "\n".join(failures))
    return out


def _parent(config: CompareConfig, pair: Pair, steps: int, prepared: Prepared, loop: LoopConfig, prices: dict,
            out: Path, echo) -> PreTrainedModel:
    if config.small_from:
        echo(f"parent: {config.small_from} (given; its pretraining cost is unknown to growbench)")
        return load_parent(config.small_from, pair.small)
    loop = replace(loop, label=f"parent {pair.small.name}")
    echo(f"parent: {pair.small.name}, {steps} steps (cached once trained)")
    folder = pretrain(pair.small, steps, prepared, loop, prices=prices)
    parent_run = RunDir(out / "parent")
    for name in ("curve.csv", "phases.csv", "status.json"):
        parent_run.path.mkdir(parents=True, exist_ok=True)
        (parent_run.path / name).write_bytes((folder / name).read_bytes())
    return load_parent(str(folder / "model"), pair.small)


def _manifest(config, pair, budget, large_flops, methods, prepared, loop, prices, parent_steps) -> dict:
    return {
        "growbench_version": __version__,
        "command": sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "pair": pair.name, "small": asdict(pair.small), "large": asdict(pair.large),
        "budget": {"unit": budget.unit, "value": budget.value,
                   "flops": budget.value if budget.unit == "flops" else None,
                   "large_step_flops": large_flops, "large_steps_equivalent": budget.value / large_flops
                   if budget.unit == "flops" else None},
        "seeds": list(range(config.seeds)),
        "methods": {name: {"needs_parent": m.needs_parent, **asdict(m.settings)} for name, m in methods.items()},
        "parent": {"from": config.small_from or "pretrained", "steps": None if config.small_from else parent_steps,
                   "seed": PARENT_SEED},
        "data": prepared.fingerprint(),
        "train": {"optim": asdict(loop.optim), "eval_points": loop.eval_points, "device": str(loop.device),
                  "autocast": str(loop.autocast_dtype), "micro_batch": loop.micro_batch, "quick": config.quick},
        "flop_convention": "1 multiply-add = 2 FLOPs; flops_executed counted by torch FlopCounterMode on one real step",
        "hardware": hardware_fingerprint(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git_sha": _git_sha(),
        "prices": prices,
    }


def _check_same_comparison(old: dict, new: dict) -> None:
    for key in ("pair", "budget", "seeds", "methods", "data"):
        if json.dumps(old.get(key), sort_keys=True, default=str) != json.dumps(new.get(key), sort_keys=True,
                                                                               default=str):
            raise BenchError(f"--resume: the run directory holds a different comparison ({key} differs)")


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _print_estimate(echo, pair, budget, large_flops, large_seconds, runs, parent_steps, prepared, loop) -> None:
    """The time this comparison should take here, from timed steps, before the long work starts."""
    steps = budget.value / large_flops if budget.unit == "flops" else None
    if steps is None:
        echo(f"budget: {budget.value:g} {budget.unit}")
        return
    parent_s = 0.0
    if parent_steps:
        parent_s = scratch_step(pair.small, prepared, loop)[1] * parent_steps
    total = runs * steps * large_seconds + parent_s
    echo(f"budget: {budget.value:.3g} FLOPs = {steps:.0f} steps of {pair.large.name} from scratch "
         f"({large_seconds:.3g} s/step here); estimate for {runs} run(s)"
         f"{' + parent' if parent_steps else ''}: {_human(total)} (eval not included)")
    default_steps = pair.defaults.budget_steps
    if abs(steps - default_steps) > 0.5:
        echo(f"the pair's default budget ({default_steps} steps) would take {_human(default_steps * large_seconds)}"
             f" per run here")


def _human(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def method_list(text: str) -> list[str]:
    """Comma-separated method names, each once, in order; `all` stands for every registered method that is
    not a variant (no ':' in its name), scratch first: it sets the target."""
    from bench.methods import method_names

    every = sorted((name for name in method_names() if ":" not in name), key=lambda name: name != "scratch")
    names = [name.strip() for item in text.split(",") for name in (every if item.strip() == "all" else [item])]
    return list(dict.fromkeys(name for name in names if name))


def report(run_dir: Path, target: float | None = None):
    from bench.report import build_report

    return build_report(run_dir, target)


def _standalone(size: Size, corpus, tokenizer_dir, device, dtype, lr, progress_bar, label) -> tuple[
        Prepared, LoopConfig, dict]:
    """Data, loop settings and prices for a command that works on one size (pretrain, grow)."""
    defaults = defaults_for(size)
    prepared_config = DataConfig(corpus, tokenizer_dir, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    pair = Pair(size, size)
    loop = _loop_config(CompareConfig(device=device, dtype=dtype, lr=lr, progress_bar=progress_bar), pair, label)
    return prepare_data(pair, prepared_config), loop, load_prices()


def pretrain_command(size_name: str, steps: int | None, out: Path | None, corpus, tokenizer_dir, device, dtype, lr,
                     progress_bar: bool) -> Path:
    size = get_size(size_name)
    if steps is not None and steps < 1:
        raise BenchError("--steps must be at least 1")
    prepared, loop, prices = _standalone(size, corpus, tokenizer_dir, device, dtype, lr, progress_bar,
                                         f"pretrain {size.name}")
    return pretrain(size, steps or defaults_for(size).parent_steps, prepared, loop, out, prices)


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
    prepared, loop, prices = _standalone(large, corpus, tokenizer_dir, device, dtype, None, progress_bar,
                                         f"grow {method_name}")
    if prepared.vocab_size != config.vocab_size:
        raise BenchError(f"the tokenizer has {prepared.vocab_size} tokens but the parent {config.vocab_size}")
    large_flops, _ = scratch_step(large, prepared, loop)
    budget = Budget("flops", large_flops * defaults_for(large).budget_steps)
    ctx = GrowthContext(pair, parent, prepared.vocab_size, prepared.config.seq_len, prepared.pad_token_id, seed)
    result = _train(method.phases(ctx), budget, prepared, seed, loop, out, prices, init_only=True)
    run = RunDir(out)
    run.save_model(result.final_model, prepared.tokenizer)
    write_json(out / "growth.json", {
        "method": method_name, "settings": asdict(method.settings), "parent": source, "to": to, "seed": seed,
        "val_loss": result.final_val_loss, "phases": result.phases,
        "flops_executed": sum(row["flops_executed"] for row in result.phases),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "growbench_version": __version__,
    })
    return out / "model"


def listing() -> str:
    from bench.collectors import collector_names
    from bench.methods import method_names

    lines = ["sizes (layers / hidden / heads / ffn):"]
    lines += [f"  {s.name:16} {s.layers:3} {s.hidden:5} {s.heads:3} {s.ffn:6}" for s in SIZES.values()]
    lines.append("pairs: any SMALL:LARGE of one family where LARGE is nowhere smaller; defaults:")
    for label, d in (("CPU scale (hidden <= 256)", defaults_for(SIZES["bert-micro"])),
                     ("paper scale", defaults_for(SIZES["bert-base"]))):
        lines.append(f"  {label}: budget {d.budget_steps} steps (quick {d.quick_budget_steps}), parent "
                     f"{d.parent_steps} steps (quick {d.quick_parent_steps}), batch {d.batch_size} x {d.seq_len}, "
                     f"vocab {d.vocab_size}")
    lines.append(f"methods: {', '.join(method_names())}")
    lines.append(f"collectors: {', '.join(collector_names())}")
    prices = load_prices()
    lines.append(f"prices (as of {prices.get('as_of', '?')}):")
    lines += [f"  {line}" for line in json.dumps(prices, indent=1).splitlines()[1:-1]]
    return "\n".join(lines)
