"""Composites with exact object masks for the real-model mask benchmark.

An object is the inside of a polygon drawn by hand on a CC0 scikit-image photo (looking at
the photo with a 50-pixel grid over it). Whatever the polygon holds is pasted, so the mask
of the composite is exact by construction: it is the polygon, scaled and clipped by the
frame, not an estimate of where the cat ends. Each object is pasted at areas from 5% to
70% of a 224 x 224 frame (the larger ones cut by the frame's edges, as in close-ups) onto a
real background (scikit-image textures and photos, cropped, flipped and tinted at random).
Everything is seeded: the same call gives the same composites on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

import skimage.data as data

SIZE = 224
#: Target object areas as a share of the frame.
AREAS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
#: Size buckets of the realised (clipped) area, for the tables.
BUCKETS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.35), (0.35, 0.5), (0.5, 1.01))

# (x, y) in the photo's own pixels.
POLYGONS: Dict[str, Tuple[Callable[[], np.ndarray], List[Tuple[int, int]]]] = {
    # the cat's head and chest, 451 x 300; the out-of-focus room right of x ~ 390 is left out
    "cat": (data.chelsea, [(20, 300), (0, 180), (8, 60), (40, 10), (100, 0), (300, 0), (350, 30),
                           (375, 60), (390, 130), (382, 220), (362, 290), (340, 300)]),
    # cup, spoon and saucer, 600 x 400
    "cup": (data.coffee, [(180, 40), (200, 20), (260, 12), (340, 15), (395, 35), (410, 70), (420, 65),
                          (425, 80), (440, 110), (470, 160), (480, 220), (470, 280), (440, 330), (390, 370),
                          (320, 390), (250, 392), (180, 380), (120, 345), (85, 290), (75, 230), (85, 170),
                          (110, 120), (150, 90), (175, 80)]),
    # the rocket on its pad, 640 x 427 (thin: its large sizes are cut by the frame)
    "rocket": (data.rocket, [(315, 130), (325, 125), (335, 140), (338, 200), (345, 300), (350, 380),
                             (355, 410), (290, 410), (295, 380), (302, 300), (305, 200), (308, 140)]),
    # the astronaut and her helmet, 512 x 512
    "astronaut": (data.astronaut, [(200, 30), (240, 12), (285, 25), (300, 60), (300, 120), (290, 150),
                                   (300, 165), (305, 210), (300, 260), (340, 290), (360, 330), (365, 350),
                                   (420, 342), (470, 360), (500, 400), (510, 460), (510, 511), (20, 511),
                                   (20, 400), (30, 310), (60, 270), (110, 240), (115, 200), (130, 165),
                                   (170, 150), (190, 120), (190, 60)]),
    # the motorcycle, 741 x 500 (left image of the stereo pair)
    "motorcycle": (lambda: data.stereo_motorcycle()[0],
                   [(95, 200), (140, 180), (150, 155), (300, 165), (355, 185), (400, 160), (460, 160),
                    (480, 110), (520, 110), (560, 125), (585, 150), (560, 190), (540, 200), (560, 250),
                    (610, 270), (640, 300), (680, 360), (675, 420), (640, 450), (590, 440), (550, 400),
                    (520, 360), (480, 360), (440, 380), (350, 370), (330, 410), (310, 410), (310, 385),
                    (270, 385), (220, 400), (160, 390), (125, 350), (120, 290), (135, 250), (100, 230)]),
}


def _gray(fn: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.repeat(fn()[..., None], 3, axis=2)


#: Background sources: textures and photos that hold none of the objects.
BACKGROUNDS: Dict[str, Callable[[], np.ndarray]] = {
    "brick": _gray(data.brick),
    "grass": _gray(data.grass),
    "gravel": _gray(data.gravel),
    "camera": _gray(data.camera),
    "moon": _gray(data.moon),
    "clock": _gray(data.clock),
    "hubble": data.hubble_deep_field,
    "immunohistochemistry": data.immunohistochemistry,
    "wood": lambda: data.coffee()[:, 470:],
    "launch_towers": lambda: data.rocket()[:, :280],
}


@dataclass
class Scenes:
    """images (N, 224, 224, 3) uint8, masks (N, 224, 224) bool, and per scene the object
    name, the target area and the realised area (share of the frame)."""

    images: np.ndarray
    masks: np.ndarray
    objects: List[str]
    target_areas: List[float]
    areas: np.ndarray


def cut_out(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """The object's bounding-box crop (h, w, 3) uint8 and its polygon mask (h, w) bool."""
    load, polygon = POLYGONS[name]
    photo = load()
    canvas = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    mask = np.asarray(canvas, dtype=bool)
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return photo[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def background(rng: np.random.Generator, source: str) -> np.ndarray:
    """A random crop of ``source`` scaled to 224 x 224, flipped and tinted: (224, 224, 3)."""
    photo = BACKGROUNDS[source]()
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(np.ascontiguousarray(photo[y0:y0 + side, x0:x0 + side])).resize((SIZE, SIZE), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if rng.random() < 0.5:
        pixels = pixels[::-1]
    tint = rng.uniform(0.6, 1.25, size=3)
    return np.clip(pixels * tint, 0, 255).astype(np.uint8)


def paste(rng: np.random.Generator, canvas: np.ndarray, photo: np.ndarray, mask: np.ndarray,
          area: float) -> Tuple[np.ndarray, np.ndarray]:
    """Scale the object so its mask covers ``area`` of the frame and paste it at a random
    place (cut by the frame where it is larger than it); returns (image, mask)."""
    scale = np.sqrt(area * SIZE * SIZE / mask.sum())
    w, h = max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale))
    if rng.random() < 0.5:
        photo, mask = photo[:, ::-1], mask[:, ::-1]
    photo = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).resize((w, h), Image.LANCZOS))
    mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    # Top-left corner: inside the frame where the object fits, else the frame inside it.
    x0 = rng.integers(0, SIZE - w + 1) if w <= SIZE else -rng.integers(0, w - SIZE + 1)
    y0 = rng.integers(0, SIZE - h + 1) if h <= SIZE else -rng.integers(0, h - SIZE + 1)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, SIZE), min(y0 + h, SIZE)
    image = canvas.copy()
    exact = np.zeros((SIZE, SIZE), dtype=bool)
    part = mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    region = image[fy0:fy1, fx0:fx1]
    region[part] = photo[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0][part]
    exact[fy0:fy1, fx0:fx1] = part
    return image, exact


def make_scenes(per_cell: int = 10, seed: int = 0, objects: Sequence[str] = tuple(POLYGONS)) -> Scenes:
    """``per_cell`` composites for every (object, area): 5 x 6 x 10 = 300 by default, the
    backgrounds taken in turn so every cell sees every source once."""
    rng = np.random.default_rng(seed)
    sources = list(BACKGROUNDS)
    cut = {name: cut_out(name) for name in objects}
    images, masks, names, targets = [], [], [], []
    for name in objects:
        for area in AREAS:
            for i in range(per_cell):
                canvas = background(rng, sources[i % len(sources)])
                image, mask = paste(rng, canvas, *cut[name], area)
                images.append(image)
                masks.append(mask)
                names.append(name)
                targets.append(area)
    masks_array = np.stack(masks)
    return Scenes(np.stack(images), masks_array, names, targets, masks_array.reshape(len(masks), -1).mean(axis=1))


def bucket_of(area: float) -> int:
    return next(i for i, (low, high) in enumerate(BUCKETS) if low <= area < high)


def make_photo_scenes(per_object: int = 12, seed: int = 0, objects: Sequence[str] = tuple(POLYGONS)) -> Scenes:
    """The objects in their own photos: ``per_object`` random square crops of each photo
    that hold the whole polygon, scaled to 224 x 224, half of them mirrored. No pasting, so
    the background is the object's real surroundings (same light, same colours), which the
    composites flatter: a colour-guided refinement separates a pasted object from a grey
    texture far more easily. The mask is the hand-drawn polygon, so it is exact only up to
    the polygon's own fit to the object (the same for every method scored)."""
    rng = np.random.default_rng(seed)
    images, masks, names, targets = [], [], [], []
    for name in objects:
        load, polygon = POLYGONS[name]
        photo = load()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        canvas = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
        ImageDraw.Draw(canvas).polygon(polygon, fill=1)
        full_mask = np.asarray(canvas, dtype=bool)
        rows, cols = np.nonzero(full_mask)
        h, w = photo.shape[:2]
        for _ in range(per_object):
            # the smallest square that holds the object, up to the photo's short side
            need = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
            side = int(rng.uniform(min(need, min(h, w)), min(h, w) + 1))
            y0, x0 = _corner(rng, rows, side, h), _corner(rng, cols, side, w)
            crop = photo[y0:y0 + side, x0:x0 + side]
            part = full_mask[y0:y0 + side, x0:x0 + side]
            image = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE), Image.BILINEAR))
            mask = np.asarray(Image.fromarray(part.astype(np.uint8) * 255).resize((SIZE, SIZE), Image.NEAREST)) > 127
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            images.append(np.ascontiguousarray(image))
            masks.append(np.ascontiguousarray(mask))
            names.append(name)
            targets.append(float(mask.mean()))
    masks_array = np.stack(masks)
    return Scenes(np.stack(images), masks_array, names, targets, masks_array.reshape(len(masks), -1).mean(axis=1))


def _corner(rng: np.random.Generator, extent: np.ndarray, side: int, length: int) -> int:
    """A crop start along one axis that holds the object's ``extent`` where it fits in
    ``side``; where it does not, one that cuts it (the object stays centred-ish)."""
    low = int(np.clip(extent.max() + 1 - side, 0, length - side))
    high = int(np.clip(extent.min(), 0, length - side))
    low, high = min(low, high), max(low, high)
    return int(rng.integers(low, high + 1))
