"""ImageNet-1k's WordNet IDs: the folder names ImageNet, ImageNet-100, Imagenette/Imagewoof
and ImageNet-9's mixed sets ship as (``train/n02123045/*.JPEG``), and the class index each
one has in every ImageNet-1k classifier.

The standard order is the 1000 WNIDs sorted (torchvision's ``ImageFolder`` on the ILSVRC
train folder gives it, and every published checkpoint's head follows it); the list ships
as package data (``imagenet_wnids.txt``, taken from timm's ``imagenet_synsets.txt``), so a
folder of WNIDs maps onto a model's outputs offline. A folder holding a subset of them
(ImageNet-100) maps each one to its index among the 1000.
"""
from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Dict, List, Optional, Sequence

__all__ = ["WNID_PATTERN", "imagenet_wnids", "is_imagenet_model", "is_wnid", "wnid_index"]

#: A WordNet noun synset ID as ImageNet names its class folders.
WNID_PATTERN = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> List[str]:
    """The 1000 ImageNet-1k WNIDs in class-index order (``n01440764`` tench is 0)."""
    text = resources.files(__package__).joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    wnids = text.split()
    if len(wnids) != IMAGENET_CLASSES or wnids != sorted(wnids):  # a damaged install: say so, never mis-map
        raise RuntimeError(f"latinhib/imagenet_wnids.txt: expected the {IMAGENET_CLASSES} sorted ImageNet WNIDs, "
                           f"found {len(wnids)} (reinstall latinhib)")
    return wnids


@functools.lru_cache(maxsize=1)
def _index() -> Dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def is_wnid(name: str) -> bool:
    """``name`` is spelled like a WordNet ID (``n`` and eight digits)."""
    return WNID_PATTERN.fullmatch(name) is not None


def wnid_index(name: str) -> Optional[int]:
    """The ImageNet-1k class index of WNID ``name``, or None when it is not one of the 1000."""
    return _index().get(name) if is_wnid(name) else None


@functools.lru_cache(maxsize=4)
def _torchvision_categories() -> tuple:
    import torchvision.models as tvm

    return tuple(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def is_imagenet_model(classes: Optional[Sequence[str]]) -> bool:
    """The model's classes are ImageNet-1k's in the standard order: torchvision's human
    names (what ``models.load_model`` gives an ImageNet model) or the WNIDs themselves."""
    if not classes or len(classes) != IMAGENET_CLASSES:
        return False
    classes = tuple(classes)
    return classes == _torchvision_categories() or list(classes) == imagenet_wnids()
