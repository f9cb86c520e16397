#!/usr/bin/env bash
# GPU check (issue 11): on a machine with one CUDA GPU, in under 8 minutes on an H100/H200,
#   1. bf16: bench compare --pair bert-small:bert-base --methods scratch,ligo at a reduced budget (built-in corpus);
#   2. tf32: the same comparison's scratch run alone;
#   3. assertions over both run directories: every run's MFU within (0.05, 0.8) against the peak of its dtype,
#      GPU energy measured by NVML with kWh > 0, and flops_executed per step of scratch equal across dtypes.
#
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default: a new folder under /tmp; PYTHON=... picks the interpreter, which
# needs a CUDA build of torch; the parent is cached under OUT_DIR/cache unless GROWBENCH_CACHE is set)
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${1:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
export GROWBENCH_CACHE=${GROWBENCH_CACHE:-$OUT/cache}

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device")'

COMMON=(--pair bert-small:bert-base --budget-steps 200 --seeds 1 --eval-points 4 --device cuda --micro-batch 128
        --no-progress --fresh)
start=$SECONDS
echo "gpu_check: bf16 scratch,ligo -> $OUT/bf16"
"$PYTHON" -m bench compare "${COMMON[@]}" --methods scratch,ligo --parent-steps 100 --dtype bf16 --out "$OUT/bf16"
echo "gpu_check: tf32 scratch -> $OUT/tf32 ($((SECONDS - start)) s so far)"
"$PYTHON" -m bench compare "${COMMON[@]}" --methods scratch --dtype tf32 --out "$OUT/tf32"
echo "gpu_check: runs took $((SECONDS - start)) s; checking"

# the assertions (tests/test_mfu.py runs this snippet on a CPU run directory with faked GPU columns)
"$PYTHON" - "$OUT/bf16" "$OUT/tf32" <<'PY'
import csv
import math
import sys
from pathlib import Path

LOW, HIGH = 0.05, 0.8


def phases(run_dir, run):
    with open(Path(run_dir) / "runs" / run / "phases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def number(row, column):
    value = row.get(column, "")
    return float(value) if value not in ("", None) else math.nan


def check_run(run_dir, run, dtype):
    rows = phases(run_dir, run)
    assert rows, f"{run_dir}/{run}: no phases"
    flops = train_s_peak = 0.0
    for row in rows:
        where = f"{run_dir}/{run} phase {row['phase']}"
        source = row["mfu_peak_source"]
        assert not source.startswith("unavailable") and f" {dtype} " in source and "NVIDIA datasheet" in source, \
            f"{where}: peak source {source!r}"
        mfu = number(row, "mfu")
        assert math.isfinite(mfu) and 0 < mfu < HIGH, f"{where}: MFU {mfu}"
        assert row["energy_gpu_method"].startswith("nvml_energy") and "measured" in row["energy_gpu_method"], \
            f"{where}: GPU energy {row['energy_gpu_method']!r}"
        flops += number(row, "flops_executed")
        train_s_peak += number(row, "train_s") * number(row, "devices") * number(row, "mfu_peak_flops")
    # per run, not per phase: NVML's counter moves every ~100 ms, so a phase shorter than that may read 0
    gpu_kwh = sum(number(row, "energy_gpu_kwh") for row in rows)
    assert gpu_kwh > 0 and sum(number(row, "energy_kwh") for row in rows) > 0, f"{run_dir}/{run}: kWh not > 0"
    mfu = flops / train_s_peak
    assert LOW < mfu < HIGH, f"{run_dir}/{run}: MFU {mfu:.3f} outside ({LOW}, {HIGH})"
    print(f"{run_dir}/{run}: MFU {mfu:.3f} ({dtype}), GPU kWh {gpu_kwh:.4g}")
    return rows


bf16_dir, tf32_dir = sys.argv[1:3]
per_step = {}
for run_dir, dtype, runs in ((bf16_dir, "bf16", ("scratch-s0", "ligo-s0")), (tf32_dir, "tf32", ("scratch-s0",))):
    for run in runs:
        rows = check_run(run_dir, run, dtype)
        if run.startswith("scratch"):
            (row,) = rows
            per_step[dtype] = number(row, "flops_executed") / number(row, "steps")
assert math.isclose(per_step["bf16"], per_step["tf32"], rel_tol=1e-9), f"FLOPs per step differ by dtype: {per_step}"
print(f"gpu_check: ok (scratch FLOPs per step {per_step['bf16']:.4g} in bf16 and tf32)")
PY
echo "gpu_check: done in $((SECONDS - start)) s"
