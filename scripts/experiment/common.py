"""What the experiment's benchmarks share (scripts/experiment/run.py and finedetail.py):
the splits in memory, their scores, and `latinhib enhance` run as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scripts.experiment.train import MEAN, STD, accuracy, load_folder

ROOT = Path(__file__).resolve().parents[2]
ARCH = "scripts.experiment.models:SmallResNet"
SEEDS = (0, 1, 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Split:
    """One split in memory: uint8 images, labels, relative names, boolean masks."""

    def __init__(self, root: Path, split: str, classes: list[str]):
        self.images, self.labels, self.names = load_folder(root / "images" / split, classes)
        self.masks = load_folder(root / "masks" / split, classes)[0][:, 0] > 127


def evaluate(model, splits: dict[str, Split], names) -> dict[str, float]:
    scores = {name: accuracy(model, splits[name].images, splits[name].labels) for name in names}
    if "test/mixed_same" in scores:
        scores["bg_gap"] = scores["test/mixed_same"] - scores["test/mixed_rand"]
    if "val_same" in scores:
        scores["val_gap"] = scores["val_same"] - scores["val_rand"]
    return scores


def mask_arguments(settings: dict) -> list[str]:
    """The CLI options of the experiment's val-chosen mask ``settings``: the plain gradient,
    as the val sweeps measure it (``layer_maps``), whatever configs/default.yaml says; the
    fixed sigma (--sigma without scales); the filter's own response as the outline."""
    return ["--layers", ",".join(settings["layers"]), "--target", settings["target"],
            "--filter", settings["filter"], "--sigma", str(settings["sigma"]),
            "--kernel-size", str(settings["k"]), "-q", str(settings["q"]),
            "--set", "inhibition.importance=gradient", "--set", "inhibition.outline=response"]


def run_enhance(src: Path, dst: Path, masks: Path, checkpoint: Path, classes: list[str],
                mask_args: list[str], ratio: float, blur: float, threads: int) -> dict:
    """`latinhib enhance` as a user runs it on the experiment's model, with ``mask_args``
    (any CLI options: --filter, -q, --set KEY=VALUE ...) after the benchmark's own
    (model, ratio r, blur sigma: the same for every enhancer); returns its JSON summary.

    The model's ``classes`` are given as a user with a checkpoint fine-tuned on these
    folders gives them, so target auto takes each image's label, as Grad-CAM does here
    (without them latinhib fell back to the model's own, sometimes wrong, top-1)."""
    if dst.exists():
        shutil.rmtree(dst)
    if masks.exists():
        shutil.rmtree(masks)
    command = [
        sys.executable, "-m", "latinhib", "enhance", str(src), str(dst),
        "--arch", ARCH, "--checkpoint", str(checkpoint),
        "--set", f"model.kwargs={{num_classes: {len(classes)}}}",
        "--set", f"model.classes=[{', '.join(classes)}]",
        "--set", "model.input_size=64",
        "--set", f"model.mean={list(MEAN)}", "--set", f"model.std={list(STD)}",
        *mask_args,
        "--ratio", str(ratio), "--blur-sigma", str(blur),
        "--device", "cpu", "--workers", "0", "--batch-size", "64",
        "--set", f"runtime.threads={threads}",
        "--save-masks", str(masks), "--json", "--quiet",
    ]
    environment = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log("$ " + " ".join(command))
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"latinhib enhance failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cli_outputs(dst: Path, masks_dir: Path, train: Split, classes: list[str]):
    """Images written by the CLI, its masks (all-ones where a file was only copied) and
    which files it enhanced according to its manifest."""
    images = load_folder(dst, classes)[0]
    enhanced = set()
    for line in (dst / "latinhib-manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("selected"):
            enhanced.add(entry.get("path") or entry.get("rel") or entry.get("src"))
    masks = torch.ones_like(train.masks)
    which = torch.zeros(len(train.names), dtype=torch.bool)
    for i, name in enumerate(train.names):
        path = masks_dir / name
        path = path if path.exists() else path.with_suffix(path.suffix + ".png")
        if path.exists():
            from PIL import Image
            masks[i] = torch.from_numpy(np.asarray(Image.open(path)) > 127)
            which[i] = True
    return images, masks, which, enhanced
