"""Which class index each file's label means for this model: an ImageFolder tree's class
folders mapped onto the model's class names, and the label the loss targets
(``model.target: auto/label``). Its own module because ``enhance``, ``preview`` and
``evaluate`` must read a folder's labels the same way.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .config import Config, ConfigError
from .data import Item

__all__ = ["class_labels", "resolve_labels"]


def class_labels(items: Sequence[Item], classes: Optional[List[str]]) -> Optional[Dict[str, int]]:
    """Folder class -> model output index, when every folder class maps onto the model's
    classes (exactly, ignoring case and '_' vs ' ', or a numeric folder as the index); else None."""
    names = {item.class_name for item in items if item.is_image}
    if not names or None in names or not classes:
        return None
    exact = {name: i for i, name in enumerate(classes)}
    loose = {name.lower().replace("_", " "): i for i, name in enumerate(classes)}
    mapping = {}
    for name in names:
        if name in exact:
            mapping[name] = exact[name]
        elif name.lower().replace("_", " ") in loose:
            mapping[name] = loose[name.lower().replace("_", " ")]
        elif name.isdigit() and int(name) < len(classes):
            mapping[name] = int(name)
        else:
            return None
    return mapping


def resolve_labels(items: Sequence[Item], config: Config, classes: Optional[List[str]]) -> Optional[Dict[str, int]]:
    """The folder labels the loss uses (``target: auto``/``label``), or None for ``pred``/
    ``entropy``; ``target: label`` without a mapping is a :class:`ConfigError`. Shared by
    ``enhance`` and ``preview`` so both pick the same target."""
    labels = class_labels(items, classes) if config.model.target in ("auto", "label") else None
    if config.model.target == "label" and labels is None:
        raise ConfigError(
            "model.target: 'label' needs every image in a class folder whose name is one of the model's classes "
            "(set model.classes, or use target auto/pred/entropy)"
        )
    return labels
