"""The experiment's own reference enhancers: the oracle and the Grad-CAM threshold.

Both produce a keep-sharp mask per image and then do exactly what latinhib's output step
does (SPEC step 8): ``out = mask * image + (1 - mask) * GaussianBlur(image)``, on a
fraction r of the images. The oracle's mask is the true foreground (the upper bound of any
mask-based enhancer); Grad-CAM's is the pretrain checkpoint's Grad-CAM map thresholded at
its per-image q-quantile, the same q latinhib uses. Grad-CAM is written out here (hooks,
weights = spatial mean of the gradients, ReLU of the weighted sum; Selvaraju et al. 2017, as
pytorch-grad-cam computes it) so the experiment needs no extra package.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from latinhib.filters import downsampled_gaussian_blur
from latinhib.inhibition import blend, selection_score
from scripts.experiment.train import normalise


def selected(name: str, ratio: float, seed: int = 0) -> bool:
    """Whether image ``name`` (its relative path) is enhanced: latinhib's own selection hash,
    so the references enhance exactly the files ``latinhib enhance`` enhances."""
    return selection_score(seed, name) < ratio


def blend_images(images: torch.Tensor, masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Keep ``images`` (uint8, (N, 3, H, W)) where ``masks`` (N, H, W) is 1, blur elsewhere,
    with latinhib's own blur and blend (SPEC step 8), so only the mask differs."""
    pixels = images.float() / 255.0
    blurred = downsampled_gaussian_blur(pixels, sigma)
    mixed = blend(pixels, masks.to(pixels.dtype), blurred)
    return (mixed * 255.0).round().clamp(0, 255).to(torch.uint8)


def enhance(images: torch.Tensor, masks: torch.Tensor, names: list[str], ratio: float,
            sigma: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur outside ``masks`` for the selected fraction ``ratio`` of images.

    Returns (images, which) with ``which`` the boolean (N,) selection.
    """
    which = torch.tensor([selected(name, ratio, seed) for name in names], dtype=torch.bool)
    output = images.clone()
    if which.any():
        output[which] = blend_images(images[which], masks[which], sigma)
    return output, which


def quantile_mask(maps: torch.Tensor, quantile: float) -> torch.Tensor:
    """1 where a (N, H, W) map exceeds its own per-image q-quantile; all 1 for a flat map."""
    flat = maps.flatten(1)
    threshold = torch.quantile(flat, quantile, dim=1, keepdim=True)
    mask = (flat > threshold).view_as(maps)
    constant = (flat.amax(1) - flat.amin(1)) <= 1e-12 * flat.abs().amax(1).clamp_min(1e-30)
    mask[constant] = True
    return mask


def per_image_quantile_mask(maps: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Like ``quantile_mask`` with its own q per image ((N,) in [0, 1]): 1 where a (N, H, W)
    map exceeds image i's q_i-quantile (linear interpolation, as ``torch.quantile``)."""
    flat = maps.flatten(1)
    ordered = flat.sort(dim=1).values
    position = quantiles.to(flat.dtype).clamp(0, 1) * (flat.shape[1] - 1)
    low = position.floor().long()
    high = position.ceil().long()
    weight = (position - low)[:, None]
    threshold = torch.lerp(ordered.gather(1, low[:, None]), ordered.gather(1, high[:, None]), weight)
    mask = (flat > threshold).view_as(maps)
    constant = (flat.amax(1) - flat.amin(1)) <= 1e-12 * flat.abs().amax(1).clamp_min(1e-30)
    mask[constant] = True
    return mask


def gradcam_maps(model: torch.nn.Module, images: torch.Tensor, layer: str,
                 labels: torch.Tensor | None = None, batch_size: int = 128) -> torch.Tensor:
    """Grad-CAM of ``layer`` at the input size, (N, H, W), for the top-1 class or ``labels``."""
    module = model.get_submodule(layer)
    model.eval().requires_grad_(False)
    maps = []
    captured = {}

    def keep(_module, _inputs, output):
        captured["activation"] = output

    handle = module.register_forward_hook(keep)
    try:
        for start in range(0, len(images), batch_size):
            inputs = normalise(images[start: start + batch_size]).requires_grad_(True)
            logits = model(inputs)
            target = logits.argmax(1) if labels is None else labels[start: start + batch_size]
            score = logits.gather(1, target[:, None]).sum()
            activation = captured["activation"]
            gradient, = torch.autograd.grad(score, activation)
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * activation).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(cam[:, 0].detach())
    finally:
        handle.remove()
    return torch.cat(maps)


def mask_scores(kept: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean per-image precision, recall and IoU of the kept-sharp region vs the foreground."""
    kept, truth = kept.flatten(1).bool(), truth.flatten(1).bool()
    inter = (kept & truth).sum(1).float()
    precision = inter / kept.sum(1).clamp_min(1)
    recall = inter / truth.sum(1).clamp_min(1)
    iou = inter / (kept | truth).sum(1).clamp_min(1)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()),
            "iou": float(iou.mean())}


#: The CAM references of issue 26, each written out like Grad-CAM above and checked against
#: pytorch-grad-cam's own classes in tests/test_experiment_cams.py.
CAM_METHODS = ("gradcam", "gradcam++", "layercam")
#: How a multi-layer CAM's per-layer maps become one: ``max`` is the LayerCAM authors' rule
#: (Jiang et al. 2021, eq. 9, as torchcam implements it: each layer's map divided by its
#: max, scaled by tanh(2 x), the pixel-wise maximum); ``mean`` is pytorch-grad-cam's (each
#: layer's map min-max normalised, the mean).
CAM_FUSIONS = ("max", "mean")


def cam_of_layer(method: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """One layer's CAM, (N, h, w), from its activation and the class score's gradient.

    gradcam: weights = spatial mean of the gradient (Selvaraju et al. 2017); gradcam++: the
    weights of Chattopadhay et al. 2018, eq. 19, as pytorch-grad-cam computes them (the
    second and third powers of the gradient stand for the exponential's derivatives);
    layercam: no channel weights, each activation times its own positive gradient (Jiang
    et al. 2021). All three: ReLU of the channel sum."""
    if method == "layercam":
        return F.relu((F.relu(gradient) * activation).sum(1))
    if method == "gradcam":
        weights = gradient.mean(dim=(2, 3), keepdim=True)
    elif method == "gradcam++":
        square = gradient.pow(2)
        cube = square * gradient
        total = activation.sum(dim=(2, 3), keepdim=True)
        alpha = square / (2 * square + total * cube + 1e-6)
        alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
        weights = (F.relu(gradient) * alpha).sum(dim=(2, 3), keepdim=True)
    else:
        raise ValueError(f"method should be one of {CAM_METHODS}. Got {method!r}")
    return F.relu((weights * activation).sum(1))


def fuse_cams(cams: list[torch.Tensor], size: tuple[int, int], fusion: str = "max") -> torch.Tensor:
    """Per-layer (N, h_l, w_l) CAMs -> one (N, H, W) map at ``size`` (``CAM_FUSIONS``).
    A single layer's CAM is only upsampled (as ``gradcam_maps`` does): nothing to fuse."""
    if fusion not in CAM_FUSIONS:
        raise ValueError(f"fusion should be one of {CAM_FUSIONS}. Got {fusion!r}")
    if len(cams) == 1:
        return F.interpolate(cams[0][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    scaled = []
    for cam in cams:
        cam = cam[:, None]
        if fusion == "max":
            cam = torch.tanh(2.0 * cam / cam.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12))
        else:
            low = cam.amin(dim=(2, 3), keepdim=True)
            cam = (cam - low) / ((cam.amax(dim=(2, 3), keepdim=True) - low) + 1e-7)
        scaled.append(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0])
    stacked = torch.stack(scaled)
    return stacked.amax(0) if fusion == "max" else stacked.mean(0)


def layer_cams(model: torch.nn.Module, inputs: torch.Tensor, layers: list[str] | tuple[str, ...],
               targets: torch.Tensor | None = None, method: str = "gradcam") -> list[torch.Tensor]:
    """``method``'s CAM of each of ``layers`` at the layer's own size, (N, h_l, w_l) each, for
    normalised model ``inputs`` and the class ``targets`` (None: the top-1); one backward
    pass for all layers. Needs only torch, so the real-model benchmark uses it too."""
    if method not in CAM_METHODS:
        raise ValueError(f"method should be one of {CAM_METHODS}. Got {method!r}")
    modules = [model.get_submodule(name) for name in layers]
    model.eval().requires_grad_(False)
    captured: dict[int, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
               for i, module in enumerate(modules)]
    try:
        logits = model(inputs.detach().requires_grad_(True))
        target = logits.argmax(1) if targets is None else targets
        score = logits.gather(1, target[:, None]).sum()
        activations = [captured[i] for i in range(len(modules))]
        gradients = torch.autograd.grad(score, activations)
    finally:
        for handle in handles:
            handle.remove()
    return [cam_of_layer(method, a.detach().float(), g.float()) for a, g in zip(activations, gradients)]


def cam_maps(model: torch.nn.Module, images: torch.Tensor, layers: list[str] | tuple[str, ...],
             labels: torch.Tensor | None = None, method: str = "gradcam", fusion: str = "max",
             batch_size: int = 128) -> torch.Tensor:
    """``method``'s CAM of ``layers`` (one or several, fused by ``fusion``) at the input
    size, (N, H, W), for the top-1 class or ``labels`` of uint8 ``images``."""
    maps = []
    for start in range(0, len(images), batch_size):
        targets = None if labels is None else labels[start: start + batch_size]
        cams = layer_cams(model, normalise(images[start: start + batch_size]), layers, targets, method)
        maps.append(fuse_cams(cams, tuple(images.shape[-2:]), fusion))
    return torch.cat(maps)
