"""timm (PyTorch Image Models) as a model source: ``model.arch: timm:NAME``.

This module owns what is particular to timm: building ``NAME`` (as timm spells it, with or
without a pretrained tag: ``timm:convnext_tiny``, ``timm:resnet50.a1_in1k``) with
``timm.create_model`` at the class count a checkpoint's head says, the preprocessing the
model's ``pretrained_cfg`` asks for (``timm.data.resolve_model_data_config``), and finding
its pretrained weights in the local Hugging Face cache (or torch hub's, for the few older
URL-only ones) without fetching anything: a miss is one line naming the model, where it
looked and the command that fetches it (``HF_HUB_OFFLINE=1`` is named when set). Reading checkpoint files is
:mod:`latinhib.checkpoint_files`' job and loading a state_dict into the model is
:mod:`latinhib.models`'; timm and huggingface_hub are imported only here and only when a
``timm:`` arch is used (the ``timm`` extra), so ``--help`` never pays for them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .checkpoint_files import CheckpointError
from .config import ConfigError

__all__ = ["PRETRAINED", "TIMM_PREFIX", "TimmPreprocessing", "build", "head_classes", "is_timm",
           "pretrained_state", "preprocessing", "timm_name"]

TIMM_PREFIX = "timm:"
#: ``model.weights`` value for timm's own pretrained weights of NAME (its tag, or timm's
#: default tag). The config's default, torchvision's ``IMAGENET1K_V1``, means the same
#: ("the ImageNet weights") so ``--arch timm:NAME`` alone gives a pretrained model.
PRETRAINED = "pretrained"
PRETRAINED_ALIASES = (PRETRAINED, "IMAGENET1K_V1")
INSTALL_HINT = "pip install 'latinhib[timm]'"
#: Weight files of a Hugging Face timm repository, safest first (timm's own order).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class TimmPreprocessing:
    """What the model's ``pretrained_cfg`` says its inputs are: (H, W), per-channel mean
    and std, and the resize interpolation (``bilinear``, ``bicubic``, ...)."""

    input_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    interpolation: str


def is_timm(arch: str) -> bool:
    """Whether ``model.arch`` names a timm model (``timm:NAME``)."""
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    """``timm:resnet50.a1_in1k`` -> ``resnet50.a1_in1k``."""
    return arch[len(TIMM_PREFIX):]


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.arch: timm models need the timm package: {INSTALL_HINT}") from None
    return timm


def _pretrained_cfg(name: str):
    """timm's pretrained config of NAME (its tag's, or the default tag's); ConfigError
    with a close match for an unknown name or tag."""
    timm = _import_timm()
    if not timm.models.is_model(name):
        import difflib

        arch = name.partition(".")[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean 'timm:{close[0]}'?)" if close else ""
        raise ConfigError(f"model.arch: {name!r} is not a timm model{hint}; timm.list_models() lists them")
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # "Invalid pretrained tag (x) for resnet50."
        raise ConfigError(f"model.arch: timm:{name}: {exc}") from None


def head_classes(name: str, state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """How many classes ``state``'s classifier head has, by the head's name in the model's
    pretrained config (``fc``, ``head.fc``, ``classifier``); None when the state has none."""
    cfg = _pretrained_cfg(name)
    heads = getattr(cfg, "classifier", None) if cfg is not None else None
    if isinstance(heads, (tuple, list)):  # distilled models: (head, head_dist), same size
        heads = heads[0] if heads else None
    weight = state.get(f"{heads}.weight") if heads else None
    if weight is None or weight.ndim < 1:
        return None
    return int(weight.shape[0])


def build(arch: str, kwargs: Mapping[str, Any], state: Optional[Mapping[str, torch.Tensor]] = None,
          pretrained_weights: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
    """``timm.create_model(NAME)`` with random weights, sized for ``state`` (its head's class
    count, unless ``kwargs`` sets ``num_classes``), or with ``pretrained_weights`` (a state
    from :func:`pretrained_state`) loaded through timm's own pretrained path (its key
    filters, and a new head where ``num_classes`` differs).

    Raises:
        ConfigError: timm missing, unknown NAME/tag, or kwargs the model does not take.
    """
    timm = _import_timm()
    name = timm_name(arch)
    _pretrained_cfg(name)
    kwargs = dict(kwargs)
    if state is not None and "num_classes" not in kwargs:
        classes = head_classes(name, state)
        if classes is not None:
            kwargs["num_classes"] = classes  # the checkpoint's own head says what it was trained on
    options: Dict[str, Any] = {}
    if pretrained_weights is not None:
        options = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": pretrained_weights}}
    try:
        return timm.create_model(name, **options, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: cannot build {arch!r} with {kwargs}: {exc}") from None
    except RuntimeError as exc:  # timm's pretrained loader: keys that do not fit
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"model.weights: timm's pretrained weights for {arch!r} do not fit: {first}") from None


def preprocessing(model: nn.Module) -> TimmPreprocessing:
    """The model's input size, mean, std and interpolation, as timm resolves them for
    evaluation (``resolve_model_data_config``); crop is not used (latinhib resizes the
    whole image, so a mask covers all of it)."""
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    _, height, width = data["input_size"]
    return TimmPreprocessing((int(height), int(width)), tuple(float(v) for v in data["mean"]),
                             tuple(float(v) for v in data["std"]), str(data.get("interpolation") or "bilinear"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _split_revision(hub_id: str) -> Tuple[str, Optional[str]]:
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def _cached_file(cfg) -> Tuple[Optional[Path], List[str]]:
    """(the weights file in a local cache or None, the places looked at)."""
    looked: List[str] = []
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import constants, try_to_load_from_cache

        repo, revision = _split_revision(cfg.hf_hub_id)
        files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else HF_WEIGHT_FILES
        cache = Path(constants.HF_HUB_CACHE)
        looked.append(f"{cache}/models--{repo.replace('/', '--')} ({', '.join(files)})")
        for filename in files:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(cache), revision=revision)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found), looked
    if getattr(cfg, "url", None):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def pretrained_state(arch: str) -> Tuple[Dict[str, torch.Tensor], Path]:
    """timm's pretrained weights of NAME from a local cache: (state, file).

    The Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``) is looked in first, then torch
    hub's for URL-only weights; nothing is downloaded (``HF_HUB_OFFLINE`` or not). The file
    is read with :func:`latinhib.checkpoint_files.read_checkpoint` (safetensors, or a
    weights-only pickle).

    Raises:
        CheckpointError: one line naming the model and where it looked.
    """
    from .checkpoint_files import read_checkpoint

    name = timm_name(arch)
    cfg = _pretrained_cfg(name)
    if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
        raise ConfigError(f"model.weights: timm has no pretrained weights for {arch!r}; use model.checkpoint or "
                          f"model.weights: null")
    path, looked = _cached_file(cfg)
    if path is None:
        # Never fetched here: a job on a cluster node must not download silently, and
        # huggingface_hub's retries on a machine without internet are a screenful.
        fetch = f"hf download {_split_revision(cfg.hf_hub_id)[0]}" if getattr(cfg, "hf_hub_id", None) else cfg.url
        raise CheckpointError(
            f"model.weights: pretrained weights for {arch} are not in the local cache (looked in {'; '.join(looked)}"
            f"{'; HF_HUB_OFFLINE is set' if _offline() else ''}): fetch them on a machine with internet "
            f"({fetch}) and copy the cache here (HF_HOME/HF_HUB_CACHE move it), or use --checkpoint")
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a state_dict, got {type(state).__name__}")
    return state, path
