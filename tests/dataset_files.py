"""Datasets laid out as users have them, built from real photos for the tests of issue 23
(tests/test_datasets_*.py): ImageNet's WNID class folders, WebDataset shards written by the
real ``webdataset`` library with ``.cls`` / ``.json`` labels, gzipped shards. The model is
the real ImageNet MobileNetV2 (latinhib's default arch and weights, from torch's cache)."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import pytest
from PIL import Image

from helpers import invoke, manifest_entries as manifest  # noqa: F401 - the tests import them from here

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is needed for chelsea() and coffee()")
wds = pytest.importorskip("webdataset", reason="the standard WebDataset reader/writer (the test extra)")

WEIGHTS_FILE = Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
needs_weights = pytest.mark.skipif(not WEIGHTS_FILE.is_file(),
                                   reason=f"torchvision's MobileNetV2 weights not in {WEIGHTS_FILE}")

TABBY, EGYPTIAN_CAT, ESPRESSO = 281, 285, 967  # ImageNet-1k class indices
CAT_WNID, ESPRESSO_WNID = "n02123045", "n07920052"  # tabby, espresso
#: Every command runs the real model on the CPU, one thread of decoding, quietly.
RUN = ["--device", "cpu", "--workers", "0", "--batch-size", "4"]


def photo(name: str) -> Image.Image:
    """scikit-image's chelsea (a cat, 451x300) or coffee (an espresso, 600x400)."""
    return Image.fromarray(getattr(skimage_data, name)())


def jpeg(name: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    photo(name).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(name: str) -> bytes:
    buffer = io.BytesIO()
    photo(name).save(buffer, format="PNG")
    return buffer.getvalue()


def wnid_folder(root: Path, files: Dict[str, bytes]) -> Path:
    """``root/<rel>`` for each ``rel: bytes`` (e.g. ``n02123045/cat.JPEG``)."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def imagenet_folder(root: Path) -> Path:
    """ImageNet's own layout: WNID class folders of ``.JPEG`` files."""
    return wnid_folder(root, {f"{CAT_WNID}/{CAT_WNID}_1.JPEG": jpeg("chelsea"),
                              f"{CAT_WNID}/{CAT_WNID}_2.JPEG": jpeg("chelsea", 70),
                              f"{ESPRESSO_WNID}/{ESPRESSO_WNID}_1.JPEG": jpeg("coffee"),
                              f"{ESPRESSO_WNID}/{ESPRESSO_WNID}_2.JPEG": jpeg("coffee", 70)})


def write_wds_shard(path: Path, samples: Iterable[Dict[str, object]], compress: bool = False) -> Path:
    """A shard written by webdataset's own ``TarWriter`` (``compress``: gzipped, as its
    writer does for a ``.tar.gz`` name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), compress=compress) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def labelled_samples(cls: Dict[str, int] = None) -> List[Dict[str, object]]:
    """Two cats and two espressos with their ImageNet class in ``.cls`` (webdataset writes
    an int as its decimal text)."""
    cls = cls or {"chelsea": TABBY, "coffee": ESPRESSO}
    return [{"__key__": f"{name}-{n}", "jpg": jpeg(name, quality), "cls": cls[name]}
            for n, quality in enumerate((90, 70)) for name in ("chelsea", "coffee")]


def read_back(urls: Sequence[str], *fields: str) -> List[Tuple]:
    """The standard reader's tuples: ``wds.WebDataset(urls).decode('pil').to_tuple(...)``."""
    dataset = wds.WebDataset(list(urls), shardshuffle=False, handler=wds.reraise_exception)
    return list(dataset.decode("pil").to_tuple(*fields))


def gz_members(path: Path) -> List[str]:
    with gzip.open(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return [member.name for member in tar]


def said(result) -> List[str]:
    """The ``latinhib:`` lines a command wrote on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("latinhib:")]
