"""Gradient importance: IoN = dL/dx for the output x of each chosen layer, and
IoM = the p-norm of IoN over channels at every position (SPEC steps 1-3).

This module owns the forward hooks (always removed, even on error), the choice of the
loss target, the per-sample gradient rescaling that keeps very confident models from
underflowing, and the default choice of layers. It imports torch only.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .choices import IMPORTANCE_KINDS, TARGETS

__all__ = [
    "IMPORTANCE_KINDS",
    "TARGETS",
    "ActivationCapture",
    "BlockOutput",
    "ImportanceMaps",
    "default_layers",
    "feature_stages",
    "find_blocks",
    "frozen_eval",
    "gradcam_plus_plus_map",
    "importance_maps",
    "logit_gradient",
    "pick_layers",
    "probe_blocks",
    "resolve_layers",
]

#: Pseudo layer name for the gradient at the model input (the only choice for TorchScript
#: models, which cannot be hooked). Its map is average-pooled by ``INPUT_POOL``.
INPUT_LAYER = "input"
INPUT_POOL = 8

#: Feature strides whose last block is a default layer. Stride 4 and finer carry edge
#: noise rather than object evidence (SPEC "Traps"); see ``default_layers``.
DEFAULT_STRIDES = (8, 16, 32)

#: ``model.min_map_side``'s measured value (the map-size rule, off by default). Strides say
#: how coarse a map is relative to the input, not how many positions it has: at a 64-px
#: input the stride-8 map is 8 x 8, and every CAM was at its best on the 16 x 16 map there.
#: With this rule on, where the finest stride map is shorter than this on a side, the
#: deepest block with a map this large joins the strides' picks (at 224 px the stride-8 map
#: is 28 x 28, so nothing changes there). Off by default: it gave better validation masks
#: on the fine-detail benchmark but no downstream gain on its validation split, and lost on
#: Fashion-MNIST (issue 26, docs/RESULTS.md).
MIN_MAP_SIDE = 16


def resolve_layers(model: nn.Module, names: Sequence[str]) -> List[Tuple[str, nn.Module]]:
    """Look up each dotted module name with ``get_submodule``; unknown names raise a
    ``ValueError`` that lists the valid names (block-level ones first)."""
    if not names:
        raise ValueError("layers should name at least one module. Got an empty list")
    resolved = []
    for name in names:
        if name == INPUT_LAYER:
            continue
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(
                f"model.layers: TorchScript models cannot be hooked, so layer {name!r} cannot be captured; "
                f"use layers: [{INPUT_LAYER}] (the gradient at the input image)"
            )
        try:
            resolved.append((name, model.get_submodule(name)))
        except AttributeError:
            valid = [n for n, _ in model.named_modules() if n]
            shown = ", ".join(valid[:60]) + (", ..." if len(valid) > 60 else "")
            raise ValueError(f"model.layers: the model has no layer {name!r}; valid names: {shown}") from None
    return resolved


class ActivationCapture:
    """Context manager that records the output of named modules on every call.

    ``capture.activations`` holds ``(name, tensor)`` in call order; a module that runs
    several times per forward (ResNet's shared ``relu``) contributes one entry per call.
    Each hook hands a *clone* downstream, so in-place ops that follow (``ReLU(inplace=
    True)``, ``out += identity``) modify the clone and never the captured tensor. The
    captured tensor is made to require grad, so with frozen parameters the graph starts
    at the first captured layer and nothing before it is recorded. Hooks are removed on
    exit, whatever happened inside.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.modules = resolve_layers(model, layers)
        self.activations: List[Tuple[str, torch.Tensor]] = []
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"model.layers: layer {name!r} should output a (N, C, H, W) tensor. Got {shape}")
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.activations.append((name, output))
            return output.clone()

        return hook

    def __enter__(self) -> "ActivationCapture":
        self.activations = []
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration, restored afterwards.

    Eval mode makes BatchNorm use running statistics, so samples never influence each
    other; frozen parameters mean no weight gradient is ever computed. Restoring both
    lets the API run inside a training loop on the model being trained.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def logit_gradient(logits: torch.Tensor, target: str, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dL_i/dlogits_i for each sample, rescaled to unit norm per sample, shape (N, K).

    For ``label``/``pred``, L_i is the cross-entropy against the label / top-1 class and
    the gradient is ``p - onehot``; its target component is computed as ``-sum of the other
    p`` so it does not cancel to 0 when p_t rounds to 1. For ``entropy``,
    ``L_i = -sum p log p`` and ``dL/dz_j = -p_j (log p_j + H)``. Everything is computed in
    float64 and each row divided by its norm: a 99.99%-sure model has a cross-entropy
    gradient near 1e-20 whose square underflows in float32 (SPEC "Traps"), while every
    later step is invariant to a per-image scale. A row that is exactly zero stays zero.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits should be (N, K). Got shape {tuple(logits.shape)}")
    z = logits.detach().to(torch.float64)
    log_p = F.log_softmax(z, dim=1)
    p = log_p.exp()
    if target == "entropy":
        entropy = -(p * log_p).sum(dim=1, keepdim=True)
        grad = -p * (log_p + entropy)
    elif target in ("label", "pred"):
        if target == "label":
            if labels is None:
                raise ValueError("target 'label' needs labels. Got None")
            index = labels.to(device=z.device, dtype=torch.long).view(-1, 1)
        else:
            index = z.argmax(dim=1, keepdim=True)
        onehot = torch.zeros_like(p, dtype=torch.bool).scatter_(1, index, True)
        others = p.masked_fill(onehot, 0.0).sum(dim=1, keepdim=True)
        grad = p.masked_fill(onehot, 0.0) - onehot * others
    else:
        raise ValueError(f"target should be one of {TARGETS[1:]}. Got {target!r}")
    norm = grad.norm(dim=1, keepdim=True)
    grad = torch.where(norm > 0, grad / norm.clamp(min=torch.finfo(torch.float64).tiny), grad)
    return grad.to(logits.dtype)


@dataclass
class ImportanceMaps:
    """IoM maps per captured activation, with what the loss was taken against.

    maps: list of (N, h, w) float32 tensors, one per captured call, in call order.
    names: the layer name of each map.
    logits: (N, K) model outputs (detached).
    predicted: (N,) top-1 class.
    target: the loss target actually used (``label``, ``pred`` or ``entropy``).
    """

    maps: List[torch.Tensor]
    names: List[str]
    logits: torch.Tensor
    predicted: torch.Tensor
    target: str


def gradcam_plus_plus_map(activation: torch.Tensor, loss_gradient: torch.Tensor) -> torch.Tensor:
    """``inhibition.importance: gradcam_plus_plus``: one layer's (N, C, h, w) activation
    weighted per channel by Grad-CAM++'s weights (Chattopadhay et al. 2018, eq. 19, as
    pytorch-grad-cam computes them), ReLU of the channel sum, (N, h, w).

    The evidence is taken for the target, so the gradient is that of minus the loss (the
    target's score goes up where the loss goes down). A channel's weight sums its positive
    gradients, each scaled by alpha = g^2 / (2 g^2 + sum(A) g^3): where the gradient-times-
    activation norm counts every unit that the loss is sensitive to, for or against the
    class, this keeps the channels that speak for it and spreads them over the whole region
    where they fire (on the fine-detail benchmark: val mask IoU 0.69 at SmallResNet's
    16 x 16 layer2 against 0.63 for gradient x activation there, docs/RESULTS.md)."""
    gradient = -loss_gradient
    square = gradient.pow(2)
    total = activation.sum(dim=(2, 3), keepdim=True)
    alpha = square / (2 * square + total * square * gradient + 1e-6)
    alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
    weights = (F.relu(gradient) * alpha).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1))


def importance_maps(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    target: str = "auto",
    labels: Optional[torch.Tensor] = None,
    norm: float = 2.0,
    autocast_dtype: Optional[torch.dtype] = None,
    kind: str = "gradient",
) -> ImportanceMaps:
    """IoM = ||dL/dx||_p over channels for every call of every layer, (N, h, w) each.

    ``images`` (N, C, H, W) are model inputs (already resized and normalised). One
    ``torch.autograd.grad`` computes IoN for all captured activations at once; the model
    runs in eval mode with frozen parameters (restored afterwards). ``autocast_dtype``
    (e.g. ``torch.bfloat16`` on CUDA) runs forward and backward in mixed precision; the
    norm is always taken in float32. ``kind`` (``IMPORTANCE_KINDS``) is what the norm is
    taken of: the gradient, or the gradient times the activation.
    """
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"kind should be one of {IMPORTANCE_KINDS}. Got {kind!r}")
    if images.ndim != 4:
        raise ValueError(f"images should be (N, C, H, W). Got shape {tuple(images.shape)}")
    if target not in TARGETS:
        raise ValueError(f"target should be one of {TARGETS}. Got {target!r}")
    if target == "auto":
        target = "label" if labels is not None else "pred"
    if target == "label" and labels is None:
        raise ValueError("target 'label' needs labels. Got None")
    autocast = (
        torch.autocast(device_type=images.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    use_input = INPUT_LAYER in layers
    if use_input:
        images = images.detach().requires_grad_(True)
    with frozen_eval(model), torch.enable_grad(), ActivationCapture(model, layers) as capture:
        with autocast:
            logits = model(images)
        if isinstance(logits, (tuple, list)):  # e.g. GoogLeNet/Inception aux outputs
            logits = logits[0]
        if use_input:
            capture.activations.insert(0, (INPUT_LAYER, images))
        if not capture.activations:
            raise ValueError(f"model.layers: none of {list(layers)} ran during the forward pass")
        grad_logits = logit_gradient(logits, target, labels)
        tensors = [a for _, a in capture.activations]
        if logits.requires_grad:
            grads = torch.autograd.grad(logits, tensors, grad_outputs=grad_logits, allow_unused=True)
        else:  # the captured layers do not influence the logits at all
            grads = [None] * len(tensors)
    maps = []
    for activation, grad in zip(tensors, grads):
        if grad is None:
            grad = torch.zeros_like(activation)
        grad = grad.float()
        if kind == "gradcam_plus_plus":
            iom = gradcam_plus_plus_map(activation.detach().float(), grad)
        else:
            if kind == "gradient_x_activation":
                grad = grad * activation.detach().float()
            iom = torch.linalg.vector_norm(grad, ord=norm, dim=1)
        if activation is tensors[0] and use_input:
            # Pixel gradients are speckle; average them over 8x8 cells, the resolution of
            # the finest default layer, so the filter and its sigma mean the same there.
            iom = F.avg_pool2d(iom[:, None], INPUT_POOL, ceil_mode=True)[:, 0]
        maps.append(iom)
    return ImportanceMaps(
        maps=maps,
        names=[n for n, _ in capture.activations],
        logits=logits.detach(),
        predicted=logits.detach().argmax(dim=1),
        target=target,
    )


def _weighted_layers(module: nn.Module) -> int:
    """How many modules in ``module`` (itself included) hold weights of their own."""
    return sum(next(m.parameters(recurse=False), None) is not None for m in module.modules())


def default_layers(model: nn.Module, input_size: Tuple[int, int], in_channels: int = 3,
                   min_side: int = 0) -> List[str]:
    """Default layers: the last block at each of strides 8, 16 and 32 (SPEC step 2), and
    with ``min_side`` > 0 (``model.min_map_side``, e.g. ``MIN_MAP_SIDE``), where the finest
    of those maps is shorter than that, the deepest block with a map that large.

    Found by one probe forward on zeros through the model's blocks (:func:`find_blocks`),
    then picked by :func:`pick_layers`. For torchvision ResNets this gives ``layer2,
    layer3, layer4.0``; for MobileNetV2 ``features.6, features.13, features.17``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return [INPUT_LAYER]
    blocks = find_blocks(model)
    return pick_layers(probe_blocks(model, blocks, input_size, in_channels), input_size, min_side=min_side)


def feature_stages(model: nn.Module) -> List[str]:
    """The module names a model lists with their strides in ``feature_info`` (every timm
    model does: ``[{"module": "stages.1", "reduction": 8, ...}, ...]``); [] for others.
    Names that do not resolve to a submodule are skipped."""
    info = getattr(model, "feature_info", None)
    if hasattr(info, "get_dicts"):  # timm's FeatureInfo (features_only models)
        info = info.get_dicts()
    if not isinstance(info, (list, tuple)):
        return []
    names = []
    for entry in info:
        name = entry.get("module") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            continue
        try:
            model.get_submodule(name)
        except AttributeError:
            continue
        names.append(name)
    return names


def find_blocks(model: nn.Module) -> Dict[str, nn.Module]:
    """The model's blocks by name, parents first: a child of the model itself or of an
    ``nn.Sequential``/``nn.ModuleList`` that is a block (ResNet's ``layer2``, ``layer4.0``;
    MobileNet's ``features.6``; EfficientNet-Lite's ``_blocks.4``), and a stage the model
    lists in ``feature_info`` (:func:`feature_stages`) with its children."""
    blocks: Dict[str, nn.Module] = {}
    stages = set(feature_stages(model))
    for name, module in model.named_modules():  # parents come before their children
        # Only a chain of containers from the root leads to blocks: a Sequential *inside* a
        # block (ResNet's ``layer4.0.downsample``, MobileNet's ``features.7.conv``) is that
        # block's internals, not a stage. A stage the model lists in its ``feature_info``
        # is a block whose children are blocks too, whatever its class (timm's ConvNeXt
        # and RegNet stages are not Sequentials: the stride-32 stage that feeds pooling
        # would otherwise have no block to offer).
        if name in stages:
            blocks[name] = module
        if module is model or name in stages or (isinstance(module, (nn.Sequential, nn.ModuleList)) and name in blocks):
            for child_name, child in module.named_children():
                blocks[f"{name}.{child_name}" if name else child_name] = child
    return blocks


@dataclass(frozen=True)
class BlockOutput:
    """What the probe saw of one block, in the order the blocks finished."""

    name: str
    #: The output's spatial size (H, W).
    size: Tuple[int, int]
    #: Two or more weighted layers inside: a block proper, not a bare conv/norm/activation.
    compound: bool
    #: Which tensor the block returned: equal for blocks that return the very same one
    #: (ResNet's ``layer2`` and ``layer2.3``).
    tensor: int
    #: The model lists it in ``feature_info`` (a timm stage).
    listed: bool = False


def probe_blocks(model: nn.Module, blocks: Dict[str, nn.Module], input_size: Tuple[int, int],
                 in_channels: int = 3) -> List[BlockOutput]:
    """One forward on zeros of ``in_channels`` x ``input_size``: the (B, C, H, W) output
    of each block, in the order they finished."""
    records: List[BlockOutput] = []
    stages = set(feature_stages(model))
    # Every recorded output stays referenced until the probe is over: a freed output's
    # memory can be reused for a later one (the final feature map included), and then
    # equal data pointers would no longer mean "the same tensor".
    alive: List[torch.Tensor] = []
    handles = []

    def make_hook(block_name: str, compound: bool):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                alive.append(output)
                records.append(BlockOutput(block_name, tuple(output.shape[-2:]), compound, output.data_ptr(),
                                           block_name in stages))

        return hook

    try:
        for block_name, block in blocks.items():
            handles.append(block.register_forward_hook(make_hook(block_name, _weighted_layers(block) >= 2)))
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        probe = torch.zeros(1, in_channels, *input_size, device=device, dtype=dtype)
        with frozen_eval(model), torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    alive.clear()
    return records


def pick_layers(outputs: Sequence[BlockOutput], input_size: Tuple[int, int],
                strides: Sequence[int] = DEFAULT_STRIDES, min_side: int = 0) -> List[str]:
    """The default layers among the probed blocks' ``outputs``: per stride in ``strides``
    (the input's height over the map's), the last block to finish, shallowest first; and
    where the finest of those maps is shorter than ``min_side`` on a side (small inputs),
    also the deepest block whose map is at least ``min_side`` x ``min_side``, picked the
    same way at its stride (``model.min_map_side``; 0, the default, turns this off).

    Left out: maps of one pixel, and every block whose output *is* the final feature map
    (the stage feeding global pooling, whose gradient is spatially constant). Per stride
    the last block to finish wins: the stage's output, not a downsampling layer at its
    start (ConvNeXt's ``features.6`` against ``features.7.1``). Bare layers (fewer than two
    weighted layers inside) are a block's internals, such as the head conv before global
    pooling (MobileNetV2's ``features.18.0``, EfficientNet-Lite's ``_conv_head``); they
    count only where a stride has nothing else. Of blocks giving the very same tensor
    (ResNet's ``layer2`` and ``layer2.3``) the one the model lists in ``feature_info`` is
    kept, else the shallowest (timm EfficientNet's ``blocks.6``, not ``blocks``). With no block at
    any of ``strides`` (tiny or unusual networks): the last spatial block that is not
    final. Raises ValueError when no block has a spatial map.
    """
    spatial = [output for output in outputs if output.size[0] * output.size[1] > 1]
    if not spatial:
        raise ValueError("model.layers: could not find any spatial layer; set model.layers explicitly")
    final = spatial[-1].tensor
    candidates = [output for output in spatial if output.tensor != final]
    chosen = _last_per_stride([output for output in candidates if _stride(output, input_size) in strides],
                              input_size)
    if not chosen:
        rest = [output.name for output in candidates]
        return [rest[-1]] if rest else [spatial[-1].name]
    if min(chosen[min(chosen)].size) < min_side:
        large = _last_per_stride([output for output in candidates if min(output.size) >= min_side], input_size)
        if large:
            chosen[max(large)] = large[max(large)]
    return [chosen[stride].name for stride in sorted(chosen)]


def _stride(output: BlockOutput, input_size: Tuple[int, int]) -> int:
    return round(input_size[0] / output.size[0])


def _last_per_stride(outputs: Sequence[BlockOutput], input_size: Tuple[int, int]) -> Dict[int, BlockOutput]:
    """Per stride, the block that names its map: the last to finish, a compound block over a
    bare layer, of blocks returning the same tensor the better :func:`_rank`."""
    chosen: Dict[int, BlockOutput] = {}
    for output in outputs:
        stride = _stride(output, input_size)
        held = chosen.get(stride)
        if held is not None and (held.compound and not output.compound
                                 or held.tensor == output.tensor and _rank(held) <= _rank(output)):
            continue
        chosen[stride] = output
    return chosen


def _rank(output: BlockOutput) -> Tuple[bool, int]:
    """Which of two blocks returning the same tensor names it: listed first, then shallowest."""
    return (not output.listed, output.name.count("."))
