"""Plain helpers the test modules share (fixtures are in conftest.py): the architecture and
classes of the tiny checkpoints, the blob-on-noise test images, a tiny CNN for tensor-level
tests, the CLI runner and readers of what a job writes. Import as ``from helpers import ...``
(pytest puts tests/ on sys.path)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision
from click.testing import CliRunner
from PIL import Image

#: The architecture of every checkpoint the tests build: small enough for CPU tests.
ARCH = "mobilenet_v3_small"
#: The class folders of the labelled test trees, in the checkpoints' output order.
CLASSES = ("ants", "bees", "cats")
#: The job's manifest under DST.
MANIFEST = "latinhib-manifest.jsonl"


def save_checkpoint(path: Path, *, seed: int = 0, num_classes: int = len(CLASSES), wrapped: bool = False) -> Path:
    """A seeded, randomly initialised ``ARCH`` state dict at ``path``. ``wrapped``: under a
    ``state_dict`` key with a DataParallel ``module.`` prefix, as training scripts save them."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(ARCH, num_classes=num_classes)
    state = model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrapped else state, path)
    return path


def make_image(rng: np.random.Generator, size, mode: str = "RGB", *, colour: Optional[Sequence[int]] = None,
               radius: float = 0.25) -> Image.Image:
    """A textured background with a bright blob: something for the gradient to find. The
    blob's colour is drawn from ``rng`` unless given (a colour that hints at the class)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.integers(0, 255, (h, w, 3)).astype(np.float32)
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, min(w, h) * radius
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None]
    fill = rng.integers(0, 255, 3).astype(np.float32) if colour is None else np.array(colour, np.float32)
    pixels = np.where(blob, fill, noise * 0.6).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def invoke(*args, **extra):
    """``latinhib ARGS`` in-process (click's runner); arguments may be paths or numbers;
    ``extra`` goes to the command's context (``terminal_width=60``, say)."""
    from latinhib.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **extra)


def manifest_entries(dst: Path) -> List[Dict[str, Any]]:
    """DST's manifest lines, in order."""
    return [json.loads(line) for line in (dst / MANIFEST).read_text(encoding="utf-8").splitlines()]


def manifest_by_path(dst: Path) -> Dict[str, Dict[str, Any]]:
    """DST's manifest entries by ``path`` (the last line of a path wins)."""
    return {entry["path"]: entry for entry in manifest_entries(dst)}


def files(root: Path) -> List[str]:
    """Every file under ``root``, as sorted POSIX relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------
# a job that is stopped and resumed (test_resume, test_sigterm, test_disk_full)


def resume_command(src: Path, dst: Path, masks: Path, checkpoint: Path, *extra: str):
    """The stopped-and-resumed job: ``latinhib enhance`` as a subprocess, small batches, masks."""
    return [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), "--arch", ARCH,
            "--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "2", "--workers", "0",
            "--set", "model.input_size=64", "--ratio", "0.6", "--save-masks", str(masks), "--quiet",
            "--target", "pred", *extra]  # pred: what auto fell back to (the folders are no class names of it)


def final_files(root: Path) -> List[str]:
    """Every file under ``root`` but the hidden ones (temporaries), as sorted POSIX paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def manifest_lines(dst: Path) -> int:
    """How many lines DST's manifest has so far (0 before it exists): how far a job got."""
    try:
        return (dst / MANIFEST).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def check_no_partial_file(*roots: Path) -> None:
    """Every file under a final name is complete: each image decodes to its last pixel."""
    for root in roots:
        for rel in final_files(root):
            if rel.startswith("latinhib-"):
                continue
            with Image.open(root / rel) as image:
                image.load()


# ----------------------------------------------------------------------------------------
# a tiny CNN for tensor-level tests


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Five stride-2 stages (strides 2..32), global average pooling and a linear head: it
    behaves like a torchvision classifier (BatchNorm, in-place ReLU, strided stages, global
    pooling) but runs in milliseconds.

    At a 64x64 input the stages give 32, 16, 8, 4 and 2 pixel maps; ``features.4`` feeds
    the global pooling, so its gradient map is spatially constant.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(_stage(3, 8), _stage(8, 16), _stage(16, 16), _stage(16, 32), _stage(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


def build_tiny_cnn(seed: int = 0, num_classes: int = 10) -> TinyCNN:
    """A seeded TinyCNN in eval mode with non-trivial BatchNorm running statistics."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyCNN(num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def random_images(n: int, size: int = 64, seed: int = 0, device="cpu") -> torch.Tensor:
    """Smooth-ish random model inputs (N, 3, size, size): noise plus a bright blob whose
    position differs per image, so importance maps differ between images."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=generator) * 0.5
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    centres = torch.rand(n, 2, generator=generator) * size * 0.6 + size * 0.2
    blob = torch.exp(-((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2) / (2 * (size / 8) ** 2))
    return (noise + 2.0 * blob[:, None]).to(device)
