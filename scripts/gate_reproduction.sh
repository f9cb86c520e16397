#!/usr/bin/env bash
# The CI gate's baseline with its reproduction noise (bench/check/baseline.py). Runs the gate's comparison
# (baselines/ci-gate.toml) three times: at 2 torch threads (the baseline run: CI's 2 cores), at 1 thread, and at 1
# thread with every initial weight moved by 1e-7 x N(0, 1) (tests/perturbed_bench.py); then writes
# baselines/bert-nano_bert-micro-gate.json from the first with the other two as --reproduction, and prints each
# method's noise and tolerances.
#
# Each run has a growbench cache of its own, as CI's clean clone has: it trains its own parent at its own thread
# count (a parent cached by earlier code or another thread count would hide part of the noise), and the perturbed
# parent never reaches the normal cache. About 20 minutes on 2 cores, nothing else running.
#
#   WORK=DIR scripts/gate_reproduction.sh [COMPARE OPTION ...]
# WORK (default: a new temporary folder) keeps the runs and caches; run again with the same WORK, the comparisons
# continue (--resume). COMPARE OPTIONs go to every `bench compare` after the config, e.g. a tiny budget to try the
# script: --budget-steps 6 --parent-steps 4 --eval-points 2 --corpus DIR; BASELINE=F writes F instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
work=${WORK:-$(mktemp -d)}
baseline=${BASELINE:-baselines/bert-nano_bert-micro-gate.json}
mkdir -p "$work"
echo "runs and caches in $work"

compare() {  # NAME THREADS [PERTURBED]: one run of the gate's comparison into $work/NAME
    local name=$1 threads=$2 bench=(.venv/bin/bench)
    [[ ${3:-} == perturbed ]] && bench=(.venv/bin/python tests/perturbed_bench.py)
    echo "== $name: $threads torch thread(s)${3:+, initial weights perturbed}"
    OMP_NUM_THREADS=$threads GROWBENCH_CACHE="$work/cache-$name" \
        "${bench[@]}" compare --config baselines/ci-gate.toml "${compare_options[@]}" --out "$work/$name" --resume
}

compare_options=("$@")
compare threads-2 2  # alone: its wall times and energy are what the baseline records
compare threads-1 1 &  # the reproductions side by side: they are judged on FLOPs and losses, which load does not move
compare threads-1-perturbed 1 perturbed &
wait %1 && wait %2

.venv/bin/bench baseline "$work/threads-2" --out "$baseline" \
    --reproduction "$work/threads-1" --reproduction "$work/threads-1-perturbed"
.venv/bin/python - "$baseline" <<'EOF'
import json, sys

baseline = json.load(open(sys.argv[1]))
print(f"margin {baseline['margin']:g}; reproductions: "
      + "; ".join(f"{run['run_dir']} ({', '.join(run['differs'])})" for run in baseline["reproductions"]))
for method, expected in baseline["methods"].items():
    for column in ("savings_flops", "final_val_loss"):
        entry, scale = expected["quantities"][column], 100 if column == "savings_flops" else 1
        shown = {key: "n/a" if entry[key] is None else f"{scale * entry[key]:.4g}"
                 for key in ("value", "reproduction_noise", "tolerance", "seed_standard_error")}
        print(f"{method:12} {column:15} value {shown['value']:>8}  noise {shown['reproduction_noise']:>8}  "
              f"tolerance {shown['tolerance']:>8}  (seed s/sqrt(n) {shown['seed_standard_error']})")
EOF
