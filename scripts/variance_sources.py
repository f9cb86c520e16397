"""Where the spread of a savings estimate comes from, measured on real runs (docs/statistics.md, issue 19).

    python scripts/variance_sources.py eval-noise MODEL_DIR [OTHER_MODEL_DIR]
        one trained checkpoint (`bench pretrain --out MODEL_DIR`) scored on the comparison's validation set, on its
        two disjoint halves (by block), and on a set about 4x larger (every validation block under 4 fixed masks):
        how much one evaluation moves by the choice of predictions alone. With a second checkpoint, the standard
        error of the two models' difference on the same predictions, which is what a comparison reads.
    python scripts/variance_sources.py seed-split OFFSET bench-arguments...
        `bench ...` with each run's batches drawn from seed + OFFSET while the models are initialised from the seed
        (a seed normally sets both): runs of one seed in a normal and a shifted comparison share their
        initialisation and differ in data order; seed s + OFFSET shifted and seed s + OFFSET normal share data.
        Use its own --out; the parent is shared (its seed is fixed).
    python scripts/variance_sources.py table NORMAL_DIR SHIFTED_DIR OFFSET [--method M] [--eval-noise FILE]
        the variance-source table from a normal comparison and a seed-split one (scratch and M in both or in the
        normal one), plus the headline estimator's bootstrap over eval points, in markdown.
"""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from bench.data import validation_set
from bench.report import REFERENCE_METHOD, read_run_dir
from bench.report.estimators import (
    EvalCurve,
    first_crossing_savings,
    monotone_fit,
    paired_savings,
    run_curves,
    seed_savings,
)
from bench.runner.prepare import DataConfig, Prepared, prepare_data
from bench.sizes import parse_pair

BOOTSTRAP_DRAWS = 500


def _per_prediction_losses(model, batches) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy of every scored prediction, and the row (block position in the set) it belongs to."""
    losses, rows = [], []
    offset = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            labels = batch["labels"]
            scored = labels != -100
            token_losses = torch.nn.functional.cross_entropy(logits[scored], labels[scored], reduction="none")
            losses.append(token_losses.numpy())
            rows.append((torch.nonzero(scored)[:, 0] + offset).numpy())
            offset += labels.shape[0]
    return np.concatenate(losses), np.concatenate(rows)


def _block_means(losses: np.ndarray, blocks: np.ndarray, count: int) -> np.ndarray:
    return np.array([losses[blocks == block].mean() for block in range(count)])


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values)))


def eval_noise(model_dir: Path, other_dir: Path | None = None, pair: str = "bert-nano:bert-micro") -> dict:
    from transformers import AutoModelForMaskedLM

    torch.set_num_threads(1)
    prepared = prepare_data(parse_pair(pair), DataConfig())
    def load(path: Path):
        return AutoModelForMaskedLM.from_pretrained(path, local_files_only=True, use_safetensors=True)

    model = load(model_dir)
    config = prepared.config
    standard = prepared.validation()
    losses, rows = _per_prediction_losses(model, standard.batches)
    blocks = rows % standard.blocks
    half = blocks < standard.blocks // 2
    block_means = _block_means(losses, blocks, standard.blocks)
    larger = validation_set(prepared.tokenized, prepared.objective, config.seq_len, config.batch_size,
                                         min_predictions=4 * standard.predictions)
    larger_losses, larger_rows = _per_prediction_losses(model, larger.batches)
    larger_blocks = larger_rows % larger.blocks
    larger_block_means = _block_means(larger_losses, larger_blocks, larger.blocks)
    result = {
        "model": str(model_dir),
        "standard": {"loss": float(losses.mean()), **standard.size(),
                     "half_a": float(losses[half].mean()), "half_b": float(losses[~half].mean()),
                     "se_by_block": _standard_error(block_means)},
        "larger": {"loss": float(larger_losses.mean()), **larger.size(),
                   "se_by_block": _standard_error(larger_block_means)},
    }
    if other_dir is not None:
        other_losses, _ = _per_prediction_losses(load(other_dir), standard.batches)
        differences = block_means - _block_means(other_losses, blocks, standard.blocks)
        result["difference"] = {"other": str(other_dir), "other_loss": float(other_losses.mean()),
                                "mean": float(differences.mean()), "se_by_block": _standard_error(differences)}
    return result


def seed_split(offset: int, arguments: list[str]) -> int:
    """bench's command line with Prepared.source(seed) drawing the batches of seed + offset."""
    from bench.cli import main

    unshifted = Prepared.source
    Prepared.source = lambda self, seed: unshifted(self, seed + offset)
    return main(arguments)


def _resampled(curve: EvalCurve, rng: np.random.Generator) -> EvalCurve:
    """`curve`'s monotone fit plus its own residuals drawn again with replacement."""
    fit = monotone_fit(curve)
    residuals = curve.loss - fit.fitted
    return EvalCurve(curve.flops, fit.fitted + rng.choice(residuals, size=len(residuals), replace=True))


def _bootstrap_savings_sd(method: EvalCurve, scratch: EvalCurve, rng: np.random.Generator) -> float:
    """Residual bootstrap of the headline (paired monotone, 100%, match) for one seed: both runs' eval points drawn
    again around their fits, the saving computed again; its spread in savings (a share) with the runs held fixed."""
    values = []
    for _ in range(BOOTSTRAP_DRAWS):
        mine, theirs = monotone_fit(_resampled(method, rng)), monotone_fit(_resampled(scratch, rng))
        values.append(seed_savings(0, mine, theirs, scratch.budget).savings)
    return float(np.std(values, ddof=1))


def _sd(values) -> float:
    values = np.asarray(list(values), dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _pair_sd(differences) -> float:
    """The spread of one run implied by differences between pairs of runs: sd(x − y) / √2."""
    differences = np.asarray(list(differences), dtype=float)
    return float(np.sqrt(np.mean(np.square(differences)) / 2)) if len(differences) else float("nan")


def table(normal_dir: Path, shifted_dir: Path, offset: int, method: str, noise_file: Path | None) -> str:
    normal, shifted = run_curves(read_run_dir(normal_dir)), run_curves(read_run_dir(shifted_dir))
    scratch, scratch_shifted = normal[REFERENCE_METHOD], shifted.get(REFERENCE_METHOD, {})
    finals = {seed: curve.final_loss for seed, curve in scratch.items()}
    lines = [("| source | how measured | runs | spread of the final loss (nats, one run) | "
              f"spread of {method}'s FLOPs savings (points, one seed) |"), "|---|---|---|---|---|"]
    if noise_file is not None:
        noise = json.loads(Path(noise_file).read_text())
        standard, larger = noise["standard"], noise["larger"]
        lines.append(f"| evaluation (which predictions) | one checkpoint, halves of the set: "
                     f"{standard['half_a']:.4f} vs {standard['half_b']:.4f}; standard error by block | 1 | "
                     f"{standard['se_by_block']:.4f} ({standard['predictions']:,} predictions); "
                     f"{larger['se_by_block']:.4f} at {larger['predictions']:,} (loss {larger['loss']:.4f} vs "
                     f"{standard['loss']:.4f}) | |")
        if "difference" in noise:
            difference = noise["difference"]
            lines.append(f"| evaluation, of a difference | two checkpoints on the same predictions "
                         f"({standard['loss']:.4f} vs {difference['other_loss']:.4f}); standard error by block of "
                         f"their difference | 1 pair | {difference['se_by_block']:.4f} | |")
    seed_savings = paired_savings(normal[method], scratch).per_seed if method in normal else {}
    crossing = first_crossing_savings(normal[method], scratch).per_seed if method in normal else {}
    lines.append(f"| seed (initialisation and data order together) | seeds {sorted(scratch)} | {len(scratch)} | "
                 f"{_sd(finals.values()):.4f} | paired monotone {_sd(seed_savings.values()) * 100:.1f}; "
                 f"first crossing {_sd(crossing.values()) * 100:.1f} |")
    same_init = [finals[seed] - curve.final_loss for seed, curve in scratch_shifted.items() if seed in finals]
    same_data = [finals[seed + offset] - curve.final_loss for seed, curve in scratch_shifted.items()
                 if seed + offset in finals]
    lines.append(f"| data order (initialisation fixed) | seed s normal vs seed s with batches of s+{offset} | "
                 f"{len(same_init)} pairs | {_pair_sd(same_init):.4f} | |")
    lines.append(f"| initialisation (data fixed) | seed s+{offset} normal vs seed s with batches of s+{offset} | "
                 f"{len(same_data)} pairs | {_pair_sd(same_data):.4f} | |")
    rng = np.random.default_rng(0)
    target = float(np.mean(list(finals.values())))
    boot = [_bootstrap_savings_sd(curve, scratch[seed], rng) for seed, curve in normal.get(method, {}).items()
            if seed in scratch]
    if boot:
        lines.append(f"| crossing estimator (eval points) | residual bootstrap of both monotone fits of each seed pair, "
                     f"{BOOTSTRAP_DRAWS} draws | {len(boot)} pairs | | {np.mean(boot) * 100:.1f} (mean over seeds) |")
    pairs = [abs(finals[a] - finals[b]) for a, b in combinations(sorted(finals), 2)]
    lines.append("")
    lines.append(f"τ = {target:.4f} (scratch seeds {sorted(finals)}: "
                 + ", ".join(f"{finals[s]:.4f}" for s in sorted(finals)) + f"); largest pair gap {max(pairs):.4f}; "
                 f"{method} per seed, paired monotone: "
                 + ", ".join(f"s{s} {v * 100:.1f}%" for s, v in sorted(seed_savings.items())))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("eval-noise", "seed-split", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "eval-noise":
        print(json.dumps(eval_noise(Path(argv[1]), Path(argv[2]) if len(argv) > 2 else None), indent=2))
        return 0
    if argv[0] == "seed-split":
        return seed_split(int(argv[1]), argv[2:])
    method = argv[argv.index("--method") + 1] if "--method" in argv else "stackbert"
    noise = Path(argv[argv.index("--eval-noise") + 1]) if "--eval-noise" in argv else None
    print(table(Path(argv[1]), Path(argv[2]), int(argv[3]), method, noise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
