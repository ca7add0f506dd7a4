"""Train and evaluate the experiment's classifier (``SmallResNet``) on an ImageFolder tree.

Everything is in memory: a split of a few thousand 64x64 PNGs is a ~40 MB uint8 tensor, so
there is no DataLoader, and one training run takes well under a minute on 2 CPU cores.
Training is deterministic for a given seed and thread count.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from scripts.experiment.models import SmallResNet

# Normalisation used for training and handed to latinhib as model.mean / model.std.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
EPOCHS = 8
BATCH_SIZE = 64


def load_folder(root: Path, classes: list[str] | None = None):
    """Read ``root/<class>/*.png``: (images (N, 3, H, W) uint8, labels (N,), relative paths).

    ``classes`` fixes the label order (default: sorted folder names, as ImageFolder does).
    """
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels, names = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.png")):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
            names.append(f"{name}/{path.name}")
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, torch.tensor(labels), names


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float normalised with MEAN / STD."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def train_model(images: torch.Tensor, labels: torch.Tensor, seed: int, num_classes: int,
                epochs: int = EPOCHS, width: int = 16, device: str = "cpu") -> SmallResNet:
    """SGD + one-cycle schedule + horizontal flips; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = SmallResNet(num_classes=num_classes, width=width).to(device)
    steps = epochs * ((len(images) + BATCH_SIZE - 1) // BATCH_SIZE)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.1, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), BATCH_SIZE):
            batch = order[start: start + BATCH_SIZE]
            inputs = normalise(images[batch])
            flip = torch.rand(len(batch), generator=generator) < 0.5
            inputs[flip] = inputs[flip].flip(-1)
            loss = F.cross_entropy(model(inputs.to(device)), labels[batch].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Top-1 class per image, (N,)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(normalise(images[i: i + batch_size]).to(device)).argmax(1).cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(outputs)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description="Train SmallResNet on an ImageFolder tree.")
    parser.add_argument("train_dir", type=Path)
    parser.add_argument("checkpoint", type=Path, help="where the state_dict .pth goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--eval", type=Path, nargs="*", default=[], help="folders to evaluate on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images, labels, _ = load_folder(args.train_dir)
    classes = sorted(p.name for p in args.train_dir.iterdir() if p.is_dir())
    model = train_model(images, labels, args.seed, len(classes), args.epochs)
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.checkpoint)
    scores = {str(folder): accuracy(model, *load_folder(folder, classes)[:2]) for folder in args.eval}
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
