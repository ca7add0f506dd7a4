#!/usr/bin/env bash
# The GPU checks, as one short run on a lent CUDA machine (the project builds and passes its
# tests without one): the needs_cuda test variants (CPU-vs-CUDA mask agreement included),
# then the resnet50 benchmark (floor, r = 1, r = 0.3, grad-cam peer), peak GPU memory too,
# then "is the GPU fed?" (issue 25): scripts/bench/ceiling.py on CUDA, the pipeline with the
# model pass made free under runtime.codec pillow and torchvision (each batch's JPEGs decoded
# by nvJPEG on the GPU, data.decode_on_device, and encoded there) against
# the plain Pillow codec floor, at ImageNet's and 12-MP sizes (the codec equivalence test,
# tests/test_codec.py's needs_cuda case, runs with the other needs_cuda tests above).
#
# The device has torch but not this project's other pieces; carry them from here:
#   .dev      holds torch/hub/checkpoints/mobilenet_v2-b0353104.pth (copy it from
#             .venv/lib/python*/site-packages/weights/ after scripts/setup.sh)
#   .gpusite  pytorch_grad_cam and ttach copied from .venv's site-packages (the grad-cam row)
# e.g. device run: carry [".dev", ".gpusite"], command "bash scripts/gpu_check.sh", and
# results under $OUT. Each part has its own time limit, so one slow part cannot eat the
# machine's budget.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TORCH_HOME="$PWD/.dev/torch"
export PYTHONPATH="$PWD:$PWD/.gpusite${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/out/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/versions.txt"
timeout 240 "$PY" -m pytest -m needs_cuda -q -rfE -p no:cacheprovider 2>&1 | tail -40 | tee "$OUT/tests.txt"
timeout 300 "$PY" -m scripts.bench.enhance --device cuda --arch resnet50 --batch-size 128 --quick --tmp /dev/shm 2>&1 \
  | tee "$OUT/bench.txt"
timeout 200 "$PY" scripts/bench/ceiling.py --device cuda --arch resnet50 --batch-size 64 --threads 4 \
  --sizes imagenet,12mp --rows pillow,stub-pil,stub-tv --tmp /dev/shm 2>&1 | tee "$OUT/ceiling.txt"
