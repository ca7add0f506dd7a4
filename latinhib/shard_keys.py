"""Sample keys for a folder's images written into WebDataset shards (folder -> webdataset),
so that a standard reader gets one sample per image.

webdataset groups tar members by key, the member name up to the first dot of its base
name: ``cat/photo.2019.jpg`` and ``cat/photo.2020.jpg`` would both be key ``cat/photo``
(members ``2019.jpg``, ``2020.jpg``) and ``cat/photo.png`` would join them, so a reader
asking for ``jpg;png`` sees one image of three. Here each image gets a key of its own: the
path without its extension, the other dots of the base name escaped as ``_``, and a
``_<ext>`` (then ``_<n>``) suffix where two images would still meet. Image extensions are
written lower case with ``jpeg`` as ``jpg`` (ImageNet's ``.JPEG`` files), the names
``to_tuple("jpg;png")`` asks for. The manifest maps each key back to its source path.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Dict, Iterable, Tuple

__all__ = ["member_extension", "sample_keys"]

#: Extensions spelled the way webdataset's readers ask for them.
_SPELLING = {"jpeg": "jpg", "tiff": "tif"}


def member_extension(rel: str) -> str:
    """The image member's extension for a file ``rel``: ``n0/x.JPEG`` -> ``jpg``."""
    ext = PurePosixPath(rel).suffix[1:].lower()
    return _SPELLING.get(ext, ext)


def _stem(rel: str) -> Tuple[str, str]:
    path = PurePosixPath(rel)
    folder = "" if str(path.parent) == "." else f"{path.parent}/"
    return folder, path.stem.replace(".", "_")


def sample_keys(rels: Iterable[str]) -> Dict[str, str]:
    """rel -> key, unique, in the order given (so the same listing gives the same keys)."""
    keys: Dict[str, str] = {}
    taken = set()
    for rel in rels:
        folder, stem = _stem(rel)
        key = f"{folder}{stem}"
        if key in taken:
            key = f"{folder}{stem}_{member_extension(rel)}"
        number = 1
        base = key
        while key in taken:
            number += 1
            key = f"{base}_{number}"
        taken.add(key)
        keys[rel] = key
    return keys
