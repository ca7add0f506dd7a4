"""The label a WebDataset sample carries itself: a ``KEY.cls`` member (the class index as
decimal text, as webdataset's own writers and the ImageNet shard converters write it) or
one field of a ``KEY.json`` member (``model.label_key``). ``labels.py`` decides whether
these labels are the loss target; this module only reads them, one small member per
sample at listing time (a pread of a few bytes, next to decoding the image).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Tuple, Union

from . import shards
from .shards import Member

__all__ = ["CLS_EXTENSION", "JSON_EXTENSION", "LabelError", "read_label"]

CLS_EXTENSION = "cls"
JSON_EXTENSION = "json"


class LabelError(ValueError):
    """A sample's label member is there but unusable; the message says why."""


def _member(members: Sequence[Member], extension: str) -> Optional[Member]:
    return next((m for m in members if m.extension.lower() == extension), None)


def _as_index(value: Union[int, str, float], where: str, classes: Optional[Sequence[str]]) -> int:
    """An int (or its decimal text, or a class name of ``classes``) as a class index."""
    if isinstance(value, bool):
        raise LabelError(f"{where} is {value!r}, not a class index")
    if isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value.strip())
    elif isinstance(value, str) and classes and value in classes:
        return list(classes).index(value)
    else:
        raise LabelError(f"{where} is {value!r}, not a class index" + (" or one of the model's class names" if classes else ""))
    if index < 0 or (classes and index >= len(classes)):
        bound = f"the model's {len(classes)} classes (0..{len(classes) - 1})" if classes else "a class index"
        raise LabelError(f"{where} is {index}, outside {bound}")
    return index


def read_label(path, members: Sequence[Member], label_key: Optional[str] = None,
               classes: Optional[Sequence[str]] = None) -> Tuple[Optional[int], Optional[str]]:
    """(class index, None), or (None, why not): the ``.cls`` member among a sample's
    ``members``, or with ``label_key`` the field of that name in its ``.json`` member.
    ``path`` is the shard's local file (a spool file for ``pipe:``/gzip shards); an index
    is checked against ``classes`` when the model names them."""
    if label_key:
        member = _member(members, JSON_EXTENSION)
        if member is None:
            return None, f"no .{JSON_EXTENSION} member for model.label_key {label_key!r}"
        try:
            document = json.loads(shards.read_member(path, member).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return None, f"{member.name}: not JSON ({exc})"
        if not isinstance(document, dict) or label_key not in document:
            return None, f"{member.name} has no field {label_key!r} (model.label_key)"
        where = f"{member.name}[{label_key!r}]"
        value = document[label_key]
    else:
        member = _member(members, CLS_EXTENSION)
        if member is None:
            return None, f"no .{CLS_EXTENSION} member"
        try:
            value = shards.read_member(path, member).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"{member.name}: unreadable ({exc})"
        where = member.name
    try:
        return _as_index(value, where, classes), None
    except LabelError as exc:
        return None, str(exc)
