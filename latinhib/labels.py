"""Which class index each listed image's label means for this model: from its class folder
(one of the model's class names, an index, or an ImageNet WordNet ID with an ImageNet-1k
model) or, for a WebDataset sample, from its ``.cls`` member or a field of its ``.json``
(``model.label_key``). ``target: auto``/``label`` explain the label when every image has
one; ``evaluate`` needs them; folder -> shards writes them as ``KEY.cls``. Its own module
because ``enhance``, ``preview`` and ``evaluate`` must read labels the same way.

A silent fallback once hid wrong results (SPEC, Traps: WNID folders explained the model's
top-1, exit 0), so a job whose ``auto`` falls back to ``pred`` although SRC has class
folders or labelled samples says so once, with the key that fixes it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .config import Config, ConfigError
from .data import Item, display
from .imagenet import is_imagenet_model, is_wnid, wnid_index
from .sample_labels import read_label

__all__ = ["Labels", "class_index", "class_labels", "cls_labels", "find_labels", "folder_classes",
           "imagefolder_labels", "resolve_labels"]


@dataclass(frozen=True)
class Labels:
    """Image -> model output index: ``by_class`` for a folder's files (class folder ->
    index), ``by_rel`` for shard samples (``SHARD/KEY`` -> index)."""

    by_class: Dict[str, int] = field(default_factory=dict)
    by_rel: Dict[str, int] = field(default_factory=dict)

    def of(self, item: Item) -> int:
        return self.by_rel[item.rel] if self.by_rel else self.by_class[item.class_name]


def _loose(name: str) -> str:
    return name.lower().replace("_", " ")


@functools.lru_cache(maxsize=4)
def _lookups(classes: Tuple[str, ...]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Name -> index, exact and loose (the first class of a loose spelling wins)."""
    loose: Dict[str, int] = {}
    for i, name in enumerate(classes):
        loose.setdefault(_loose(name), i)
    return {name: i for i, name in enumerate(classes)}, loose


def class_index(name: str, classes: Sequence[str]) -> Optional[int]:
    """The model output a class folder ``name`` stands for: one of ``classes`` exactly, or
    ignoring case and '_' vs ' ', an index, or an ImageNet WNID (with an ImageNet-1k model)."""
    exact, loose = _lookups(tuple(classes))
    if name in exact:
        return exact[name]
    if _loose(name) in loose:
        return loose[_loose(name)]
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    if is_wnid(name) and is_imagenet_model(classes):
        return wnid_index(name)
    return None


def folder_classes(items: Sequence[Item]) -> List[Optional[str]]:
    """The class folders of the images, sorted (None first when some image has none)."""
    names = {item.class_name for item in items if item.is_image}
    return sorted(names, key=lambda name: (name is not None, name or ""))


def _not_a_class(name: str, classes: Optional[Sequence[str]]) -> str:
    """Why class folder ``name`` maps onto no output of the model."""
    if not classes:
        return (f"class folder {display(name)!r}: the model has no class names to map the folders onto "
                f"(set model.classes, e.g. the sorted folder names a torchvision ImageFolder trained it on)")
    imagenet = is_imagenet_model(classes)
    how = ("ignoring case and '_', as an index or as an ImageNet WordNet ID" if imagenet
           else "ignoring case and '_', or as an index")
    outside = f"; {display(name)} is not one of ImageNet-1k's 1000 WordNet IDs" if imagenet and is_wnid(name) else ""
    return f"class folder {display(name)!r} is not one of the model's {len(classes)} classes (matched exactly, {how}){outside}"


def _folder_labels(items: Sequence[Item], classes: Optional[Sequence[str]]) -> Tuple[Optional[Labels], Optional[str]]:
    """(labels, None) when every image's class folder maps; else (None, why not), or
    (None, None) when no image is in a class folder (nothing to say)."""
    names = folder_classes(items)
    if not names or names == [None]:
        return None, None
    if names[0] is None:
        loose = next(item for item in items if item.is_image and item.class_name is None)
        return None, f"{display(loose.rel)!r} is not in a class folder"
    mapping = {}
    for name in names:
        index = class_index(name, classes) if classes else None
        if index is None:
            return None, _not_a_class(name, classes)
        mapping[name] = index
    return Labels(by_class=mapping), None


def class_labels(items: Sequence[Item], classes: Optional[List[str]]) -> Optional[Dict[str, int]]:
    """Folder class -> model output index, when every image's class folder maps onto the
    model's classes (:func:`class_index`); else None."""
    labels, _ = _folder_labels(items, classes)
    return None if labels is None else dict(labels.by_class)


def _sample_labels(items: Sequence[Item], label_key: Optional[str],
                   classes: Optional[Sequence[str]]) -> Tuple[Optional[Labels], Optional[str], bool]:
    """(labels, None, True) when every image sample has one; else (None, why not, whether
    any sample had one). One small member read per sample (``sample_labels.read_label``)."""
    by_rel: Dict[str, int] = {}
    problem = None
    for item in items:
        if not item.is_image:
            continue
        index, why = read_label(item.path, item.members, label_key, classes)
        if index is None:
            problem = problem or f"sample {display(item.rel)!r}: {why}"
        else:
            by_rel[item.rel] = index
    if problem is None and by_rel:
        return Labels(by_rel=by_rel), None, True
    return None, problem, bool(by_rel)


def find_labels(items: Sequence[Item], config: Config,
                classes: Optional[Sequence[str]]) -> Tuple[Optional[Labels], Optional[str], bool]:
    """(labels or None, why none, whether SRC looked labelled: class folders, or some
    labelled samples), whatever ``model.target`` says."""
    if any(item.shard is not None for item in items):
        return _sample_labels(items, config.model.label_key, classes)
    labels, why = _folder_labels(items, classes)
    return labels, why, why is not None and any(item.class_name is not None for item in items if item.is_image)


def resolve_labels(items: Sequence[Item], config: Config, classes: Optional[Sequence[str]],
                   log: Optional[Callable[[str], None]] = None) -> Optional[Labels]:
    """The labels the loss uses (``target: auto``/``label``), or None for ``pred``/
    ``entropy`` and for ``auto`` without labels. ``target: label`` without labels is a
    :class:`ConfigError` naming the first image or folder without one; ``auto`` falling
    back to ``pred`` although SRC has class folders or labelled samples says so once on
    ``log``. Shared by ``enhance`` and ``preview`` so both pick the same target."""
    target = config.model.target
    if target not in ("auto", "label"):
        return None
    labels, why, looked_labelled = find_labels(items, config, classes)
    if labels is not None:
        return labels
    shards = any(item.shard is not None for item in items)
    fix = ("give every sample a .cls member or set model.label_key to its JSON field" if shards
           else "set model.classes to the folders' class names in output order")
    if target == "label":
        needs = ("every image sample's label (a .cls member, or the JSON field model.label_key names)" if shards
                 else "every image in a class folder that names one of the model's classes")
        raise ConfigError(f"model.target: 'label' needs {needs}: {why or 'no labels found'}; {fix}, "
                          f"or use target auto/pred/entropy")
    if looked_labelled and log is not None:
        fix = "" if "model.classes" in (why or "") else f"; {fix}"  # the reason may name the key already
        log(f"latinhib: target: pred (the model's top-1), not the labels: {why}{fix}; or pass --target pred")
    return None


def imagefolder_labels(items: Sequence[Item]) -> Dict[str, int]:
    """ImageFolder's labels: class folders sorted, indexed 0..K-1 (torchvision's rule)."""
    names = [name for name in folder_classes(items) if name is not None]
    return {name: i for i, name in enumerate(names)}


def cls_labels(items: Sequence[Item], labels: Optional[Labels], config: Config, classes: Optional[Sequence[str]],
               log: Optional[Callable[[str], None]] = None) -> Optional[Callable[[Item], int]]:
    """The class index folder -> shards writes as each image's ``KEY.cls``: the labels the
    job uses, else the model's index of each class folder (under ``target: pred`` too), else
    ImageFolder's index (folders sorted; said once), or None when images sit outside class
    folders (no ``.cls``)."""
    if labels is None:
        labels = find_labels(items, config, classes)[0]
    if labels is not None:
        return labels.of
    names = folder_classes(items)
    if not names or names[0] is None:
        return None
    index = imagefolder_labels(items)
    if log is not None:
        shown = ", ".join(f"{i} = {display(name)!r}" for name, i in list(index.items())[:3])
        log(f"latinhib: KEY.cls: the class folders are not the model's classes, so each holds ImageFolder's index "
            f"(folders sorted: {shown}{', ...' if len(index) > 3 else ''})")
    return lambda item: index[item.class_name]
