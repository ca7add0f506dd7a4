"""Building and loading the classifier: torchvision architectures and weights names,
timm's ``timm:NAME`` (its particulars in :mod:`latinhib.zoo`), state_dict checkpoints (with
the usual wrappers and prefixes, timm's training checkpoints, .safetensors), TorchScript
files, a user's own ``package.module:Class``, and the preprocessing that goes with each.
Files are read by :mod:`latinhib.checkpoint_files`.

Loading is safe by default: ``torch.load(..., weights_only=True)``; a fully pickled model
is only unpickled with ``model.trust_checkpoint`` (``--trust-checkpoint``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from . import zoo
from .checkpoint_files import CheckpointError, read_checkpoint
from .config import ConfigError, ModelConfig

__all__ = ["CheckpointError", "LoadedModel", "load_model", "clean_state_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (224, 224)
#: timm's training checkpoints keep the weights' moving average under ``state_dict_ema``
#: next to ``state_dict``; timm's own loader prefers it, and so does this one.
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model", "model_state_dict", "module", "net", "network")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


@dataclass
class LoadedModel:
    """A model ready for the importance pass, with its preprocessing.

    input_size: (H, W) the images are resized to. mean, std: per-channel normalisation.
    classes: names in output order, or None when unknown. description: for logs/manifest.
    weights: the torchvision weights actually loaded (full name), None when none were.
    checkpoint_sha256, checkpoint_bytes: of the checkpoint file, when one was loaded.
    """

    model: nn.Module
    input_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Optional[List[str]]
    description: str
    weights: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    checkpoint_bytes: Optional[int] = None

    def resolved(self, cfg: ModelConfig, layers: Sequence[str]) -> ModelConfig:
        """``cfg`` with what this model really used in place of the defaults it left open
        (``layers``: the names the importance pass hooks): what DST's config records."""
        return dataclasses.replace(
            cfg,
            weights=self.weights,
            checkpoint_sha256=self.checkpoint_sha256,
            checkpoint_bytes=self.checkpoint_bytes,
            layers=tuple(layers),
            input_size=tuple(self.input_size),
            mean=tuple(self.mean),
            std=tuple(self.std),
        )


def clean_state_dict(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``/``{"model": ...}`` and strip ``module.``/
    ``_orig_mod.`` prefixes (DataParallel, torch.compile), as timm's ``clean_state_dict``."""
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def _torchvision_builder(arch: str):
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        import difflib

        close = difflib.get_close_matches(arch, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"model.arch: {arch!r} is not a torchvision classification architecture{hint}; "
            f"use one of {', '.join(sorted(names)[:8])}, ... or 'package.module:Class'"
        )
    return tvm.get_model_builder(arch)


def _user_builder(arch: str):
    """``package.module:Class``, or a dotted attribute such as a classmethod factory
    (``efficientnet_lite_pytorch:EfficientNet.from_name`` with kwargs {model_name: ...})."""
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.arch: cannot import {module_name!r} for {arch!r}: {exc}") from None
    builder = module
    for part in attr.split("."):
        try:
            builder = getattr(builder, part)
        except AttributeError:
            raise ConfigError(f"model.arch: module {module_name!r} has no attribute {attr!r}") from None
    return builder


def _resolve_weights(arch: str, name: str):
    import torchvision.models as tvm

    try:
        if "." in name:
            return tvm.get_weight(name)
        return tvm.get_model_weights(arch)[name]
    except (KeyError, ValueError, AttributeError) as exc:
        try:
            options = ", ".join(w.name for w in tvm.get_model_weights(arch))
        except Exception:  # noqa: BLE001 - the arch itself may have no weights enum
            options = "none known"
        raise ConfigError(f"model.weights: {name!r} is not a weights name for {arch!r} ({options})") from exc


def _weights_cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _classifier_out_features(model: nn.Module) -> Optional[Tuple[str, int]]:
    """(name, classes) of the last Linear layer (or final 1x1 conv, SqueezeNet-style)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module.out_features)
    return last


def _load_state(model: nn.Module, state: Dict[str, torch.Tensor], path: Path) -> None:
    result_missing: List[str] = []
    result_unexpected: List[str] = []
    mismatched: List[str] = []
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            result_unexpected.append(key)
        elif own[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    result_missing = [k for k in own if k not in state]
    if result_missing or result_unexpected or mismatched:

        def short(items: Sequence[str]) -> str:
            return ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")

        parts = []
        if result_missing:
            parts.append(f"missing keys: {short(result_missing)}")
        if result_unexpected:
            parts.append(f"unexpected keys: {short(result_unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint vs model): {short(mismatched)}")
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _file_digest(path: Path, cfg: ModelConfig) -> Tuple[str, int]:
    """(sha256, size in bytes) of a checkpoint, read once per job; refuses a file that
    does not match ``model.checkpoint_sha256`` / ``checkpoint_bytes`` where they are set."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot read: {exc.strerror or exc}") from None
    sha256 = digest.hexdigest()
    for key, expected, actual in (("checkpoint_sha256", cfg.checkpoint_sha256, sha256),
                                  ("checkpoint_bytes", cfg.checkpoint_bytes, size)):
        if expected is not None and expected != actual:
            raise CheckpointError(f"checkpoint {str(path)!r} has {key} {actual!r}, model.{key} asks for {expected!r}; "
                                  f"is it the file you meant?")
    return sha256, size


def _imagenet_classes(model: nn.Module) -> Optional[List[str]]:
    """ImageNet-1k's category names (torchvision's, as its weights' metadata lists them)
    for a model with 1000 outputs: a 1000-class checkpoint without class names is almost
    always an ImageNet classifier, and its manifest then names classes, not indices."""
    head = _classifier_out_features(model)
    if head is None or head[1] != 1000:
        return None
    import torchvision.models as tvm

    return list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _read_classes(cfg: ModelConfig) -> Optional[List[str]]:
    if cfg.classes is None:
        return None
    if len(cfg.classes) == 1 and Path(cfg.classes[0]).is_file():
        lines = Path(cfg.classes[0]).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    return list(cfg.classes)


def load_model(cfg: ModelConfig, device: torch.device) -> LoadedModel:
    """Build the model described by ``cfg``, load its weights, freeze it, put it in eval
    mode on ``device``. Raises :class:`ConfigError`/:class:`CheckpointError`."""
    built = _from_checkpoint(cfg) if cfg.checkpoint is not None else _from_arch(cfg)
    model = _frozen(built.model, device)
    classes = _read_classes(cfg) or built.classes or _imagenet_classes(model)
    input_size = cfg.input_size or built.input_size or DEFAULT_INPUT_SIZE
    mean = cfg.mean or built.mean or IMAGENET_MEAN
    std = cfg.std or built.std or IMAGENET_STD
    if len(mean) != len(std):
        raise ConfigError(f"model.mean / model.std: need the same length, got {len(mean)} and {len(std)}")
    return LoadedModel(model, tuple(input_size), tuple(mean), tuple(std), classes, built.description,
                       weights=None if built.weights is None else str(built.weights),
                       checkpoint_sha256=built.sha256, checkpoint_bytes=built.size)


@dataclass
class _Built:
    """A model as built, before it is frozen and moved, with what its source says about
    it: torchvision weights carry their preprocessing and classes, a checkpoint its digest."""

    model: nn.Module
    description: str
    weights: Any = None  # a torchvision WeightsEnum member
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    input_size: Optional[Tuple[int, int]] = None
    classes: Optional[List[str]] = None
    sha256: Optional[str] = None
    size: Optional[int] = None


def _builder(arch: str):
    return _user_builder(arch) if ":" in arch else _torchvision_builder(arch)


def _build(builder, arch: str, kwargs: Dict[str, Any], *, head_from_checkpoint: bool = False) -> nn.Module:
    """``builder(**kwargs)``; a builder that refuses the arguments is the config's error
    (``head_from_checkpoint``: ``num_classes`` was taken from the checkpoint's head)."""
    try:
        return builder(**kwargs)
    except TypeError as exc:
        if head_from_checkpoint:
            raise ConfigError(
                f"model.kwargs: the checkpoint has {kwargs['num_classes']} classes but {arch!r} "
                f"takes no num_classes ({exc}); set model.kwargs to build a matching model"
            ) from None
        raise ConfigError(f"model.kwargs: cannot build {arch!r} with {kwargs}: {exc}") from None


def _from_checkpoint(cfg: ModelConfig) -> _Built:
    """A TorchScript file or trusted pickled model as it is, or ``cfg.arch`` with the
    file's state_dict."""
    path = Path(cfg.checkpoint)
    loaded = read_checkpoint(path, cfg.trust_checkpoint)
    sha256, size = _file_digest(path, cfg)
    if isinstance(loaded, nn.Module):  # TorchScript, or a trusted pickled model
        return _Built(loaded, f"{type(loaded).__name__} from {path}", sha256=sha256, size=size)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a state_dict, got {type(loaded).__name__}")
    state = clean_state_dict(loaded)
    if not state:
        raise CheckpointError(f"checkpoint {str(path)!r}: holds no tensors")
    model = _build_for_state(cfg, state)
    _load_state(model, state, path)
    ema = " (its state_dict_ema)" if "state_dict_ema" in loaded else ""
    built = _Built(model, f"{cfg.arch} with {path}{ema}", sha256=sha256, size=size)
    return _with_timm_preprocessing(built) if zoo.is_timm(cfg.arch) else built


def _build_for_state(cfg: ModelConfig, state: Dict[str, torch.Tensor]) -> nn.Module:
    """``cfg.arch`` built to take ``state``: unless ``model.kwargs`` says, with as many
    classes as the checkpoint's own head was trained on."""
    if zoo.is_timm(cfg.arch):
        return zoo.build(cfg.arch, cfg.kwargs, state=state)
    builder, kwargs = _builder(cfg.arch), dict(cfg.kwargs)
    model = _build(builder, cfg.arch, kwargs)
    head = _classifier_out_features(model)
    if head is not None and "num_classes" not in kwargs:
        head_weight = state.get(f"{head[0]}.weight")
        if head_weight is not None and head_weight.shape[0] != head[1]:
            kwargs["num_classes"] = int(head_weight.shape[0])
            model = _build(builder, cfg.arch, kwargs, head_from_checkpoint=True)
    return model


def _from_arch(cfg: ModelConfig) -> _Built:
    """``cfg.arch`` with torchvision's ``cfg.weights`` (and their preprocessing and
    classes), or with random weights."""
    if zoo.is_timm(cfg.arch):
        return _with_timm_preprocessing(_from_timm(cfg))
    builder, kwargs = _builder(cfg.arch), dict(cfg.kwargs)
    if cfg.weights is None:
        return _Built(_build(builder, cfg.arch, kwargs), f"{cfg.arch} (random weights)")
    if ":" in cfg.arch:
        raise ConfigError("model.weights: torchvision weights need a torchvision model.arch; use model.checkpoint")
    weights = _resolve_weights(cfg.arch, cfg.weights)
    try:
        model = builder(weights=weights, **kwargs)
    except (TypeError, ValueError) as exc:  # an unknown keyword, or one the weights fix (num_classes)
        raise ConfigError(f"model.kwargs: cannot build {cfg.arch!r} with {weights} and {kwargs}: "
                          f"{str(exc).splitlines()[0]}") from None
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        cache = _weights_cache_path(weights)
        raise CheckpointError(
            f"model.weights: cannot get {weights} ({str(exc).splitlines()[0]}); torchvision looks for "
            f"{cache} (set TORCH_HOME to move it): copy the file there on a machine without internet, "
            f"or use --checkpoint"
        ) from None
    transforms = weights.transforms()
    crop = transforms.crop_size
    return _Built(model, f"{cfg.arch} with {weights}", weights=weights,
                  mean=tuple(transforms.mean), std=tuple(transforms.std),
                  input_size=(crop[0], crop[0]) if len(crop) == 1 else (crop[0], crop[1]),
                  classes=list(weights.meta.get("categories") or []) or None)


def _from_timm(cfg: ModelConfig) -> _Built:
    """``timm:NAME`` with random weights, or with timm's pretrained weights from the local
    cache (``model.weights: pretrained``, or the default ``IMAGENET1K_V1``)."""
    if cfg.weights is None:
        return _Built(zoo.build(cfg.arch, cfg.kwargs), f"{cfg.arch} (random weights)")
    if cfg.weights not in zoo.PRETRAINED_ALIASES:
        raise ConfigError(f"model.weights: {cfg.weights!r} is not for a timm model; use {zoo.PRETRAINED} (timm's "
                          f"weights of the tag in the name, e.g. {cfg.arch.partition('.')[0]}.<tag>) or null")
    state, path = zoo.pretrained_state(cfg.arch)
    model = zoo.build(cfg.arch, cfg.kwargs, pretrained_weights=clean_state_dict(state))
    return _Built(model, f"{cfg.arch} with timm's pretrained weights from {path}", weights=zoo.PRETRAINED)


def _with_timm_preprocessing(built: _Built) -> _Built:
    """``built`` with the input size, mean and std of its timm model's pretrained_cfg."""
    if isinstance(built.model, torch.jit.ScriptModule):
        return built
    meta = zoo.preprocessing(built.model)
    return dataclasses.replace(built, input_size=meta.input_size, mean=meta.mean, std=meta.std)


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in eval mode, without gradients for its parameters, on ``device``."""
    model.eval()
    for param in model.parameters():  # (ScriptModules have no requires_grad_ of their own)
        param.requires_grad_(False)
    model = model.to(device)
    if not isinstance(model, torch.jit.ScriptModule):
        # channels_last: a faster forward on CPU for ResNet/MobileNet (docs/SPEED.md#channels-last).
        model = model.to(memory_format=torch.channels_last)
    return model
