"""Shared fixtures: the ``device`` every tensor test runs on (CUDA when present), a tiny CNN
(``helpers.TinyCNN``), random model inputs, and the session's tiny checkpoint that the CLI
tests run. Plain functions and constants are in helpers.py."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import subprocess

import numpy as np
import pytest
import torch

from helpers import TinyCNN, build_tiny_cnn, make_image, random_images, resume_command, save_checkpoint

CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.needs_cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
    ],
)


@pytest.fixture(params=["cpu", CUDA], scope="session")
def device(request) -> torch.device:
    """Each test that takes ``device`` runs once on the CPU and once on CUDA (skipped
    without a GPU). Session-scoped so hypothesis tests may use it."""
    return torch.device(request.param)


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return build_tiny_cnn()


@pytest.fixture
def make_images() -> Callable[..., torch.Tensor]:
    """Call as ``make_images(n, size=64, seed=0, device="cpu")``."""
    return random_images


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A seeded ``helpers.ARCH`` checkpoint with one output per ``helpers.CLASSES``, saved
    under a common wrapper with a DataParallel prefix: every job that loads it must see
    through both."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", wrapped=True)


@pytest.fixture(scope="module")
def resume_src(tmp_path_factory) -> Path:
    """36 images (PNG and JPEG) in two class folders: long enough a job to stop part-way."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("resume") / "src"
    for c in ("ants", "bees"):
        (root / c).mkdir(parents=True)
    for i in range(36):
        image = make_image(rng, (int(rng.integers(48, 160)), int(rng.integers(48, 160))))
        folder = root / ("ants" if i % 2 else "bees")
        if i % 3:
            image.save(folder / f"{i:03d}.jpg", quality=90)
        else:
            image.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def resume_reference(resume_src, tmp_path_factory, checkpoint):
    """(DST, masks) of the same job run once without interruption."""
    out = tmp_path_factory.mktemp("reference")
    argv = resume_command(resume_src, out / "dst", out / "masks", checkpoint)
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / "dst", out / "masks"
