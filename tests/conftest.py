"""Shared fixtures: the ``device`` every tensor test runs on (CUDA when present) and a
tiny CNN that behaves like a torchvision classifier (BatchNorm, in-place ReLU, strided
stages, global pooling) but runs in milliseconds."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn as nn

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


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Five stride-2 stages (strides 2..32), global average pooling and a linear head.

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


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return build_tiny_cnn()


def random_images(n: int, size: int = 64, seed: int = 0, device="cpu") -> torch.Tensor:
    """Smooth-ish random model inputs (N, 3, size, size): noise plus a bright blob whose
    position differs per image, so importance maps differ between images."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=generator) * 0.5
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    centres = torch.rand(n, 2, generator=generator) * size * 0.6 + size * 0.2
    blob = torch.exp(-((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2) / (2 * (size / 8) ** 2))
    return (noise + 2.0 * blob[:, None]).to(device)


@pytest.fixture
def make_images() -> Callable[..., torch.Tensor]:
    """Call as ``make_images(n, size=64, seed=0, device="cpu")``."""
    return random_images
