"""`bench` with every freshly initialised model's float parameters moved by 1e-7 x N(0, 1): a reproduction of a
comparison whose arithmetic differs from the original's by about one float32 rounding of the initial weights, the
kind of difference another CPU or BLAS path makes. `bench baseline RUN --reproduction DIR` measures the gate's
reproduction noise from such a run (scripts/gate_reproduction.sh):

    GROWBENCH_CACHE=/tmp/perturbed-cache python tests/perturbed_bench.py compare --config baselines/ci-gate.toml ...

Every model `Size.build` makes is perturbed (scratch, every method's LARGE, the parent before its pretraining); the
noise is drawn from its own generator, seeded by the model's seed, so the global RNG streams (data order, masking,
dropout) are untouched and the run is reproducible. The manifest records the perturbation
(bench.check.baseline.PERTURBATION_ENTRY).

Give it a GROWBENCH_CACHE of its own (it refuses to run without one): parents are cached under a key of what
produced them (bench/runner/parent.py), which knows nothing of the perturbation, so a perturbed parent would
otherwise land in the normal cache and every later comparison would grow from it.
"""

import os
import sys

import torch

from bench.check.baseline import PERTURBATION_ENTRY
from bench.cli import main
from bench.runner import comparison
from bench.sizes import Size

SCALE = 1e-7
SEED_OFFSET = 7_919  # the perturbation's generator: the model's seed + this (any fixed number)

_build, _manifest = Size.build, comparison._manifest


def perturbed_build(size, vocab_size, seq_len, seed, pad_token_id=0, base=None):
    model = _build(size, vocab_size, seq_len, seed, pad_token_id, base)
    generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_(SCALE * noise.to(parameter.device, parameter.dtype))
    return model


def manifest_with_perturbation(*args, **kwargs) -> dict:
    return {**_manifest(*args, **kwargs),
            PERTURBATION_ENTRY: {"scale": SCALE, "distribution": "normal(0, 1)", "seed": f"model seed + {SEED_OFFSET}",
                                 "what": "every float parameter of every model Size.build makes"}}


if __name__ == "__main__":
    if not os.environ.get("GROWBENCH_CACHE"):
        print("perturbed_bench: set GROWBENCH_CACHE to a cache of its own: a perturbed parent must not land in the "
              "normal cache", file=sys.stderr)
        raise SystemExit(2)
    Size.build, comparison._manifest = perturbed_build, manifest_with_perturbation
    raise SystemExit(main())
