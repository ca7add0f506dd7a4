#!/usr/bin/env bash
# Issue 26's second round of pre-announced fine-detail draws (scripts/experiment/draws-issue26b.yaml),
# in order. Resumable: a finished draw's folder is skipped by the benchmark itself (state.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # SEED [extra args]
    local seed=$1; shift
    nice -n 19 .venv/bin/python -m scripts.experiment.run --benchmark pattern --seed "$seed" \
        --work "out/issue26b-s$seed" --results "out/issue26b-s$seed/RESULTS.md" \
        --rows scripts/experiment/rows-issue26b.yaml --references gradcam,gradcam++,layercam \
        --pretrain-epochs 6 --epochs 3 --train-seeds 0 "$@" > "out/issue26b-s$seed.log" 2>&1
}
mkdir -p out
# two chains side by side, one process each: a draw's pretrain runs while the other trains
(for seed in 40 42 44; do run "$seed"; done) &
(for seed in 41 43 45; do run "$seed"; done) &
wait
