"""Reading a checkpoint file by what it holds, never by what it is called.

A checkpoint is one of three containers: a ``.safetensors`` file (a JSON header and raw
tensor bytes: nothing in it can run code), a TorchScript archive, or a ``torch.save``
pickle. This module tells them apart by their first bytes and reads each with its own
loader: safetensors' loader for safetensors (never a pickle path, whatever the name), and
``torch.load(weights_only=True)`` for pickles, which also admits timm's training
checkpoints (their ``args`` entry is an ``argparse.Namespace``). A file whose name promises
safetensors but whose content is something else is refused rather than unpickled. Every
failure is one :class:`CheckpointError` line that names the file.
"""
from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch


__all__ = ["CheckpointError", "FORMATS", "SAFETENSORS_SUFFIX", "read_checkpoint", "read_safetensors", "sniff_format"]

FORMATS = ("safetensors", "torchscript", "pickle")
SAFETENSORS_SUFFIX = ".safetensors"
#: A safetensors header is a JSON object; no real one comes near this many bytes, and a
#: pickle's or zip's first eight bytes read as a length far above it.
MAX_HEADER_BYTES = 100 << 20
#: Globals a weights-only unpickler may rebuild beyond tensors and containers: timm's
#: ``train.py`` (and torchvision's reference scripts) save their ``argparse.Namespace``
#: under ``args``. A Namespace is an attribute bag: rebuilding it runs no code of the file's.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """The model or checkpoint cannot be built or loaded; the message names the file."""


def _name(path: Path) -> str:
    return repr(str(path))


def sniff_format(path: Path) -> str:
    """``safetensors``, ``torchscript`` or ``pickle`` (``torch.save``'s zip or legacy
    format), from the file's first bytes; raises :class:`CheckpointError` for a missing or
    unreadable file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {_name(path)}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {_name(path)}: cannot read: {exc.strerror or exc}") from None
    # safetensors: an 8-byte little-endian header length, then the header's opening brace.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_HEADER_BYTES:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist()):
                    return "torchscript"
        except (zipfile.BadZipFile, OSError):
            pass
    return "pickle"


def read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, by safetensors' own loader (no unpickling)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"checkpoint {_name(path)} is a safetensors file; reading it needs the safetensors "
                              f"package: pip install 'latinhib[timm]' (or pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {_name(path)}: not a valid safetensors file ({first})") from None


def _read_torchscript(path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise CheckpointError(f"checkpoint {_name(path)}: not a loadable TorchScript file: {exc}") from None


def _read_pickle(path: Path, trust: bool) -> Any:
    try:
        if trust:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CheckpointError(f"checkpoint {_name(path)}: cannot be unpickled: {exc}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(
            f"checkpoint {_name(path)} holds pickled code or objects, not just tensors ({first}); "
            f"refusing to load it. Pass --trust-checkpoint only if you trust this file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {_name(path)}: not a PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    except (ImportError, AttributeError) as exc:  # a trusted pickle naming code that is not importable here
        raise CheckpointError(f"checkpoint {_name(path)}: cannot be unpickled: {exc}") from None


def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """What ``path`` holds: a dict of tensors (safetensors), a module (TorchScript, or a
    trusted pickled model), or whatever a weights-only ``torch.load`` rebuilds.

    Args:
        path: the checkpoint file.
        trust: unpickle arbitrary objects (``model.trust_checkpoint``); never used for
            safetensors or TorchScript.

    Raises:
        CheckpointError: one line naming the file (missing, malformed, pickled code).

    Example:
        >>> state = read_checkpoint(Path("lite0.safetensors"))  # doctest: +SKIP
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if path.name.endswith(SAFETENSORS_SUFFIX):
        # The name promises a file that cannot run code: its bytes go to safetensors'
        # loader (which says what is wrong with them), never to an unpickler.
        return read_safetensors(path)
    if kind == "torchscript":
        return _read_torchscript(path)
    _refuse_non_torch_save(path)
    return _read_pickle(path, trust)


def _refuse_non_torch_save(path: Path) -> None:
    """One line for a file that is no ``torch.save`` output at all (torch.save writes a zip
    archive; the legacy format is a pickle, protocol 2+ opening with 0x80), before the
    unpickler's lecture on pickled code."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"checkpoint {_name(path)}: not a PyTorch checkpoint (torch.save writes a zip "
                              f"archive; this file starts with {head!r})")
