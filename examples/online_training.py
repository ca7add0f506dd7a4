"""Train a small CNN that enhances its own batches online with latinhib.OnlineInhibition.

    .venv/bin/python examples/online_training.py                 # ~10 s on one idle CPU core
    .venv/bin/python examples/online_training.py --steps 3 --train 128   # a smoke run

A plain training loop; the three lines marked ``# latinhib`` are the whole change. After
``--warmup`` plain steps, the model being trained judges which part of each image matters
(its own loss gradients, lateral inhibition), and the unimportant part of ``--ratio`` of
every batch is blurred before the training step (docs/online.md).

Data: Fashion-MNIST's four idx .gz files from ``--data`` (default
/usr/share/datasets/fashion-mnist) when they are there, else a synthetic stand-in (a
bright square or disc on noise), so the example runs anywhere. The digits' black
backgrounds leave little to blur in Fashion-MNIST itself: the example shows the API, the
benchmark is scripts/experiment/online.py.

This file sits beside the demo's photo folders, so ``latinhib enhance examples DST``
copies it into DST unchanged like README.md; no photo's output changes.
"""
from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import latinhib

FASHION = Path("/usr/share/datasets/fashion-mnist")


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """Three stride-2 stages on 28 x 28 grey images: 14, 7 and 4 pixel maps."""
    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(stage(1, 16), stage(16, 32), stage(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data(root: Path, n: int, split: str = "train"):
    """(images (n, 1, 28, 28) float normalised, labels (n,)): Fashion-MNIST or synthetic."""
    prefix = "train" if split == "train" else "t10k"
    files = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if all(f.exists() for f in files):
        images = torch.from_numpy(_idx(files[0])[:n].copy()).float().div(255)[:, None]
        labels = torch.from_numpy(_idx(files[1])[:n].astype(np.int64))
        return (images - 0.29) / 0.35, labels, "Fashion-MNIST"
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.randint(0, 2, (n,), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = torch.rand(n, 2, generator=generator) * 12 + 8
    dy, dx = ys - centre[:, 0, None, None], xs - centre[:, 1, None, None]
    disc = (dy ** 2 + dx ** 2 < 36).float()
    square = ((dy.abs() < 5) & (dx.abs() < 5)).float()
    shapes = torch.where(labels[:, None, None].bool(), disc, square)
    images = shapes + 0.5 * torch.randn(n, 28, 28, generator=generator)
    return images[:, None], labels, "synthetic (no Fashion-MNIST at --data)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=FASHION)
    parser.add_argument("--train", type=int, default=4096, help="training images")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=30, help="plain steps before the model's own masks")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of each batch enhanced")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # a model this small spends a second thread's time waiting on it
    images, labels, source = load_data(args.data, args.train)
    test_images, test_labels, _ = load_data(args.data, 1000, "test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = small_cnn(int(labels.max()) + 1).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # latinhib: the model being trained, its 7 x 7 stage as the importance layer, q 0.8, 2 px blur
    online = latinhib.OnlineInhibition(model, {"model.layers": ["1"], "inhibition.quantile": 0.8, "blur.sigma": 2.0},
                                       warmup_steps=args.warmup, ratio=args.ratio, input_size=(28, 28))
    started, kept = time.time(), []
    model.train()
    for step in range(args.steps):
        batch = torch.randint(0, len(images), (args.batch_size,))
        inputs, targets = images[batch].to(device), labels[batch].to(device)
        flip = torch.rand(len(batch), device=device) < 0.5  # the augmentations come first
        inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
        inputs = online(inputs, targets)  # latinhib: a fraction of the batch, blurred where it does not matter
        if online.last is not None:  # latinhib (optional): what the masks kept
            kept.append(float(online.last.kept_fraction[online.last.selected].mean()))
        loss = F.cross_entropy(model(inputs), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test_images.to(device)).argmax(1).cpu() == test_labels).float().mean())
    share = f"{np.mean(kept):.2f}" if kept else "n/a (still warming up)"
    print(f"{source}: {args.steps} steps ({min(args.warmup, args.steps)} warm-up) in {time.time() - started:.1f} s; "
          f"last loss {loss.item():.3f}; test accuracy {accuracy:.3f}; mean kept share of the enhanced images {share}")


if __name__ == "__main__":
    main()
