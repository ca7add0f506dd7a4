"""Generate the background-shift benchmark: Fashion-MNIST garments on textured backgrounds.

The analogue of Xiao et al. 2020 ("Noise or signal", ImageNet-9) that a 2-core CPU can
train on in seconds. Each image is 64x64 RGB: one Fashion-MNIST garment, scaled to 36-48
pixels and coloured with a random colour (shaded by the garment's own grey levels), pasted
at a random position onto a procedural texture. The true foreground mask (where the garment
is) is kept for every image.

Backgrounds come in one texture *family* per class (stripes in three orientations,
checkers, dots, rings, block noise, grid lines). Every family draws its two colours from
the same distribution, and every family is high-frequency (periods of 4-8 pixels), so:
  - the family is a strong, easy shortcut for the class, carried by texture, not colour;
  - a Gaussian blur of sigma ~3 erases the family (a period-8 sine keeps ~6% of its
    amplitude), which is what lets the oracle enhancer remove the shortcut at all.

Splits (garments never shared between pretrain / train / val / test):
  pretrain      unbiased: random family; trains the checkpoint latinhib uses (the
                analogue of an ImageNet-pretrained model)
  train         biased: the class's own family with probability ``bias``, else another
  val_rand      held-out garments, random family: for choosing settings (mask quality,
                accuracy under background shift), never the test sets
  val_same      the same val garments on their class's family
  test/original     biased like train
  test/only_fg      garment on black
  test/mixed_same   the class's family, a fresh instance
  test/mixed_rand   a uniformly random family
The four test sets share their garments (as ImageNet-9's do).

Variant ``pattern`` (issue 13, "blurring everything is not free"): the class is a garment
*shape* (tshirt, trouser, bag, boot) times a *fine pattern* printed inside the garment
(stripes at a random angle or a checkerboard, period 3-4 px): 8 classes, one background
family each, as above. The pattern is erased by the experiment's 3 px blur (a period-4
sine keeps exp(-2 pi^2 3^2 / 4^2) ~ 1e-5 of its amplitude), so an enhancer that blurs the
garment removes half of what defines the class: blurring the whole image is punished, and
only a mask that keeps the object sharp can remove the shortcut and keep the pattern. The
garments are a little larger (40-54 px) so the pattern covers enough pixels to be learnt.

Layout: ``ROOT/images/<split>/<class>/<name>.png`` (ImageFolder) and the masks, one
channel, 255 = foreground, at ``ROOT/masks/<split>/<class>/<name>.png``.
Everything is a function of ``--seed``: a rerun writes the same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST = Path(os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
IMAGE_SIZE = 64
GARMENT_SIZES = (36, 48)  # inclusive range of the garment's side in pixels

# A subset of Fashion-MNIST classes that are distinct by shape, so a model that looks at
# the garment can tell them apart from few images (shirt/coat/pullover are near-duplicates).
CLASSES = {
    0: "tshirt", 1: "trouser", 2: "pullover", 3: "dress",
    5: "sandal", 7: "sneaker", 8: "bag", 9: "boot",
}
# Variant "pattern": shapes x fine patterns inside the garment (see the module docstring).
PATTERN_SHAPES = {0: "tshirt", 1: "trouser", 8: "bag", 9: "boot"}
PATTERNS = ("stripes", "checks")
PATTERN_GARMENT_SIZES = (40, 54)
PRINT_DARK = 0.4  # the print's dark parts, as a fraction of the garment's colour
VARIANTS = ("fashion", "pattern")
FAMILIES = ("hstripes", "vstripes", "dstripes", "checkers", "dots", "rings", "noise", "grid")
TEST_SETS = ("original", "only_fg", "mixed_same", "mixed_rand")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx-ubyte(.gz) file into a uint8 array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of Fashion-MNIST ``train`` or ``t10k``."""
    images = read_idx(FASHION_MNIST / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / f"{part}-labels-idx1-ubyte.gz")
    return images, labels


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def texture(family: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One background instance of ``family``: (size, size, 3) float in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    name = FAMILIES[family]
    if name == "hstripes":
        pattern = np.sin(2 * np.pi * ys / period + phase) > 0
    elif name == "vstripes":
        pattern = np.sin(2 * np.pi * xs / period + phase) > 0
    elif name == "dstripes":
        sign = rng.choice([-1.0, 1.0])
        pattern = np.sin(2 * np.pi * (xs + sign * ys) / (period * 1.41) + phase) > 0
    elif name == "checkers":
        cell = int(rng.integers(2, 5))
        offset = rng.integers(0, cell, size=2)
        pattern = (((ys + offset[0]) // cell) + ((xs + offset[1]) // cell)) % 2 == 1
    elif name == "dots":
        centre_y = (ys + rng.uniform(0, period)) % period - period / 2
        centre_x = (xs + rng.uniform(0, period)) % period - period / 2
        pattern = centre_y**2 + centre_x**2 < (period / 3.2) ** 2
    elif name == "rings":
        cy, cx = rng.uniform(0, size, size=2)
        pattern = np.sin(2 * np.pi * np.hypot(ys - cy, xs - cx) / period + phase) > 0
    elif name == "noise":
        block = int(rng.integers(1, 3))
        cells = rng.random((size // block + 1, size // block + 1)) > 0.5
        pattern = np.kron(cells, np.ones((block, block)))[:size, :size] > 0
    elif name == "grid":
        step = int(round(period))
        offset = rng.integers(0, step, size=2)
        pattern = (((ys + offset[0]) % step) < 1.5) | (((xs + offset[1]) % step) < 1.5)
    else:  # pragma: no cover - FAMILIES is the only source of names
        raise ValueError(f"unknown family {name!r}")
    first, second = random_colour(rng), random_colour(rng)
    return np.where(pattern[..., None], first, second)


def fine_pattern(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A (size, size) bool print of period 3-4 px: ``stripes`` at a random angle, or
    ``checks`` (2 px squares, random offset)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3.0, 4.0), rng.uniform(0, 2 * np.pi)
        return np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase) > 0
    if kind == "checks":
        offset = rng.integers(0, 2, size=2)
        return (((ys + offset[0]) // 2) + ((xs + offset[1]) // 2)) % 2 == 1
    raise ValueError(f"unknown pattern {kind!r}; expected one of {PATTERNS}")


def place_garment(garment: np.ndarray, rng: np.random.Generator, pattern: str | None = None,
                  sizes: tuple[int, int] = GARMENT_SIZES):
    """Scale, colour and position one 28x28 garment, printed with ``pattern`` if given.

    Returns (rgb (64, 64, 3) float, mask (64, 64) bool): the coloured garment on a canvas and
    where it is. The mask is the scaled grey level above 10% of its maximum.
    """
    side = int(rng.integers(sizes[0], sizes[1] + 1))
    grey = Image.fromarray(garment).resize((side, side), Image.BILINEAR)
    grey = np.asarray(grey, dtype=np.float64) / 255.0
    top, left = rng.integers(0, IMAGE_SIZE - side + 1, size=2)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    canvas[top: top + side, left: left + side] = grey
    mask = canvas > 0.1 * max(canvas.max(), 1e-6)
    colour = random_colour(rng)
    shade = 0.35 + 0.65 * canvas / max(canvas.max(), 1e-6)
    if pattern is not None:
        # a light colour so the print shows on every garment
        colour = rng.uniform(0.45, 1.0, size=3)
        shade = shade * np.where(fine_pattern(pattern, rng), 1.0, PRINT_DARK)
    return colour[None, None, :] * shade[..., None], mask


def compose(fg: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Paste ``fg`` where ``mask`` onto ``background``: (64, 64, 3) uint8."""
    image = np.where(mask[..., None], fg, background)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def pick_family(label_index: int, mode: str, rng: np.random.Generator, bias: float) -> int:
    """Background family for an image of class ``label_index`` under ``mode``."""
    if mode == "same":
        return label_index
    if mode == "rand":
        return int(rng.integers(len(FAMILIES)))
    if mode == "biased":
        if rng.random() < bias:
            return label_index
        others = [family for family in range(len(FAMILIES)) if family != label_index]
        return int(rng.choice(others))
    raise ValueError(f"mode should be one of same, rand, biased. Got {mode!r}")


def select_garments(labels: np.ndarray, start: int, per_class: int) -> list[int]:
    """Indices of ``per_class`` garments of every class in CLASSES, from index ``start`` on."""
    chosen = []
    for label in CLASSES:
        indices = np.flatnonzero(labels == label)
        indices = indices[indices >= start][:per_class]
        if len(indices) < per_class:
            raise ValueError(f"not enough garments of class {label} after index {start}")
        chosen.extend(int(i) for i in indices)
    return chosen


def fashion_items(labels: np.ndarray, indices: list[int]) -> list[tuple[int, int, str, None]]:
    """(garment index, class index, class name, pattern None) of the ``fashion`` variant."""
    label_index = {label: i for i, label in enumerate(CLASSES)}
    return [(i, label_index[int(labels[i])], CLASSES[int(labels[i])], None) for i in indices]


def pattern_classes() -> list[str]:
    """Class names of the ``pattern`` variant, in label order: shape_pattern."""
    return [f"{shape}_{pattern}" for shape in PATTERN_SHAPES.values() for pattern in PATTERNS]


def pattern_items(labels: np.ndarray, start: int, per_class: int) -> list[tuple[int, int, str, str]]:
    """``per_class`` garments per class of the ``pattern`` variant, from index ``start`` on:
    each shape's next 2 * per_class garments, the first half printed with the first pattern."""
    items = []
    for s, label in enumerate(PATTERN_SHAPES):
        indices = select_shape(labels, label, start, per_class * len(PATTERNS))
        for p, pattern in enumerate(PATTERNS):
            class_index = s * len(PATTERNS) + p
            for index in indices[p * per_class: (p + 1) * per_class]:
                items.append((index, class_index, pattern_classes()[class_index], pattern))
    return items


def select_shape(labels: np.ndarray, label: int, start: int, count: int) -> list[int]:
    indices = np.flatnonzero(labels == label)
    indices = indices[indices >= start][:count]
    if len(indices) < count:
        raise ValueError(f"not enough garments of class {label} after index {start}")
    return [int(i) for i in indices]


def write_split(root: Path, split: str, garments: np.ndarray, items: list[tuple],
                mode: str, seed: int, bias: float, placements: dict | None = None,
                sizes: tuple[int, int] | None = None) -> dict:
    """Write one split of ``items`` (garment index, class index, class name, pattern);
    returns the garment placements so test sets can share them. ``sizes``: the garment's
    side range in pixels (default: the variant's own)."""
    rng = np.random.default_rng(seed)
    placements = {} if placements is None else placements
    sizes = sizes or (GARMENT_SIZES if items[0][3] is None else PATTERN_GARMENT_SIZES)
    families = []
    for index, class_index, class_name, pattern in items:
        name = f"{class_name}/{index:05d}.png"
        if index not in placements:
            placements[index] = place_garment(garments[index], np.random.default_rng([seed, index]),
                                              pattern, sizes)
        fg, mask = placements[index]
        if mode == "black":
            background, family = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3)), -1
        else:
            family = pick_family(class_index, mode, rng, bias)
            background = texture(family, rng)
        families.append(family)
        for kind, array in (("images", compose(fg, mask, background)),
                            ("masks", mask.astype(np.uint8) * 255)):
            path = root / kind / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    agree = [family == item[1] for family, item in zip(families, items)]
    return {"placements": placements, "family_agrees": float(np.mean(agree))}


def generate(root: Path, seed: int = 0, bias: float = 0.95, pretrain_per_class: int = 500,
             train_per_class: int = 400, val_per_class: int = 60,
             test_per_class: int = 100, variant: str = "fashion",
             garment_sizes: tuple[int, int] | None = None) -> dict:
    """Write every split under ``root``; returns a summary (also written as info.json).
    ``garment_sizes`` overrides the variant's garment side range (pixels, inclusive): the
    pattern variant's 40-54 px cover ~27% of the frame, 30-40 px ~15% (issue 26)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant should be one of {VARIANTS}. Got {variant!r}")
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("t10k")
    # Disjoint index ranges of Fashion-MNIST's training part: 6000 garments per class
    # (the pattern variant takes twice as many per shape: two classes each).
    if variant == "fashion":
        items = lambda labels, start, n: fashion_items(labels, select_garments(labels, start, n))
        classes = list(CLASSES.values())
    else:
        items = lambda labels, start, n: pattern_items(labels, start, n)
        classes = pattern_classes()
    pretrain = items(train_labels, 0, pretrain_per_class)
    train = items(train_labels, 20000, train_per_class)
    val = items(train_labels, 40000, val_per_class)
    test = items(test_labels, 0, test_per_class)
    summary = {"seed": seed, "bias": bias, "variant": variant, "classes": classes,
               "families": list(FAMILIES), "splits": {}}
    if garment_sizes is not None:
        summary["garment_sizes"] = list(garment_sizes)
    jobs = [("pretrain", pretrain, "rand", 1), ("train", train, "biased", 2)]
    for split, chosen, mode, offset in jobs:
        result = write_split(root, split, train_images, chosen, mode, seed * 100 + offset, bias,
                             sizes=garment_sizes)
        summary["splits"][split] = {"n": len(chosen), "family_agrees": result["family_agrees"]}
    shared = None
    for split, mode, offset in (("val_rand", "rand", 3), ("val_same", "same", 4)):
        result = write_split(root, split, train_images, val, mode, seed * 100 + offset, bias, shared,
                             sizes=garment_sizes)
        shared = result["placements"]
        summary["splits"][split] = {"n": len(val), "family_agrees": result["family_agrees"]}
    shared = None
    modes = {"original": "biased", "only_fg": "black", "mixed_same": "same", "mixed_rand": "rand"}
    for offset, (name, mode) in enumerate(modes.items(), start=5):
        result = write_split(root, f"test/{name}", test_images, test, mode,
                             seed * 100 + offset, bias, shared, sizes=garment_sizes)
        shared = result["placements"]
        summary["splits"][f"test/{name}"] = {"n": len(test), "family_agrees": result["family_agrees"]}
    (root / "info.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bias", type=float, default=0.95,
                        help="probability that a train image has its class's background family")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--pretrain-per-class", type=int, default=500)
    parser.add_argument("--variant", choices=VARIANTS, default="fashion")
    args = parser.parse_args()
    summary = generate(args.root, args.seed, args.bias, args.pretrain_per_class,
                       args.train_per_class, variant=args.variant)
    print(json.dumps(summary["splits"], indent=1))


if __name__ == "__main__":
    main()
