#!/usr/bin/env bash
# Issue 26's pre-announced fine-detail draws (scripts/experiment/draws-issue26.yaml), in order.
# Resumable: a finished draw's folder is skipped by the benchmark itself (state.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() {  # SEED [extra args]
    local seed=$1; shift
    nice -n 10 .venv/bin/python -m scripts.experiment.run --benchmark pattern --seed "$seed" \
        --work "out/issue26-s$seed" --results "out/issue26-s$seed/RESULTS.md" \
        --rows scripts/experiment/rows-issue26.yaml --references gradcam,gradcam++,layercam \
        --pretrain-epochs 6 --epochs 3 --train-seeds 0 "$@" > "out/issue26-s$seed.log" 2>&1
}
mkdir -p out
# two chains side by side, one process each: a draw's pretrain runs while the other trains
(for seed in 20 22 24; do run "$seed"; done; run 30 --garment-sizes 30,40) &
(for seed in 21 23 25; do run "$seed"; done; run 31 --garment-sizes 30,40) &
wait
