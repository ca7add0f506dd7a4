#!/usr/bin/env bash
# Set up (.venv, latinhib, the real ImageNet MobileNetV2 weights) and enhance the bundled
# example photos with it. Outputs: out/demo (enhanced copies), out/demo-masks (masks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
.venv/bin/latinhib enhance examples out/demo --ratio 1 --save-masks out/demo-masks "$@"
echo "demo: enhanced images in $ROOT/out/demo, masks in $ROOT/out/demo-masks," \
     "manifest in $ROOT/out/demo/latinhib-manifest.jsonl"
