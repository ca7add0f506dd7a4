#!/usr/bin/env bash
# `latinhib evaluate` with torchvision's ImageNet MobileNetV2 on the bundled example photos.
#
# examples/ is named for people (astronaut, cat, coffee, rocket), not for ImageNet's 1000
# classes, so `latinhib evaluate examples` stops with exit 2 naming 'astronaut'. This script
# builds out/examples-imagenet/, a tree whose folders are ImageNet class names, with the
# label each photo deserves by what it shows (chosen by looking at the photo, not at the
# model's answer): chelsea.jpg -> tabby, coffee.jpg -> espresso, rocket.jpg -> missile.
# The astronaut photo has no ImageNet class and is left out. With 3 images every interval
# spans most of [0, 100]: this shows the command and the variants (out/evaluate-examples/
# samples.png), it measures nothing. Extra arguments go to `latinhib evaluate`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LATINHIB=${LATINHIB:-.venv/bin/latinhib}
DATA=out/examples-imagenet
rm -rf "$DATA"
mkdir -p "$DATA/tabby" "$DATA/espresso" "$DATA/missile"
cp examples/cat/chelsea.jpg "$DATA/tabby/"
cp examples/coffee/coffee.jpg "$DATA/espresso/"
cp examples/rocket/rocket.jpg "$DATA/missile/"
$LATINHIB evaluate "$DATA" --report out/evaluate-examples --save-variants out/evaluate-examples/variants "$@"
