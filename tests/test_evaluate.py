"""`latinhib evaluate` and `latinhib.evaluate`: `original` is an independent top-1, every
variant's pixels are what its definition says, the interval brackets the accuracy and has
the binomial width, further checkpoints see the very same variants, the cost is one
importance pass plus one classification pass per variant, unmapped folders exit 2, bad
files are counted, stdout carries one JSON document, and reruns give the same bits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import latinhib
from latinhib.config import load_config
from latinhib.evaluation_folder import evaluate_folder
from latinhib.evaluation_passes import Evaluator, MaskStore
from latinhib.evaluation_statistics import bootstrap_accuracies, mcnemar_p, summarise
from latinhib.filters import downsampled_gaussian_blur
from latinhib.models import IMAGENET_MEAN, IMAGENET_STD
from latinhib.variants import FILL_SHIFTS, GAPS, VARIANTS, background_only, make_variants, pair_partners

from helpers import ARCH, CLASSES, build_tiny_cnn, invoke, make_image, random_images, save_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(folder / "a.pth", seed=0), save_checkpoint(folder / "b.pth", seed=1)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data") / "src"
    colours = [(255, 40, 40), (40, 255, 40), (40, 40, 255)]
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(7):
            image = make_image(rng, (int(rng.integers(50, 110)), int(rng.integers(50, 110))), colour=colours[c],
                               radius=0.3)
            image.save(root / name / (f"img{i}.png" if i % 2 else f"img{i}.jpg"))
    (root / "notes.txt").write_text("not an image")  # ignored, as by enhance
    return root


def model_args(checkpoint: Path):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "8", "--set", "model.input_size=64", "--set", f"model.classes=[{','.join(CLASSES)}]"]


def config_for(checkpoint: Path, **overrides):
    keys = {"model.arch": ARCH, "model.checkpoint": str(checkpoint), "model.input_size": 64,
            "model.classes": list(CLASSES), "runtime.device": "cpu", "runtime.workers": 0, "runtime.batch_size": 8}
    keys.update(overrides)
    return load_config(overrides=keys)


def image_paths(root: Path):
    return sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def independent_top1(checkpoint: Path, paths):
    """Top-1 with torchvision alone: its model, its resize (antialiased bilinear, 64x64),
    ImageNet normalisation."""
    model = torchvision.models.get_model(ARCH, num_classes=len(CLASSES))
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    batch = []
    for path in paths:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        small = TF.resize(pixels, [64, 64], antialias=True)
        batch.append(TF.normalize(small.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        return model(torch.stack(batch)).argmax(1)


def test_original_is_an_independent_top1_for_every_checkpoint(src, checkpoints):
    run = evaluate_folder(config_for(checkpoints[0]), src, also=[checkpoints[1]], quiet=True, log=lambda m: None)
    paths = image_paths(src)
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    for k, checkpoint in enumerate(checkpoints):
        expected = independent_top1(checkpoint, paths) == labels
        assert 0 < int(expected.sum()) < len(paths)  # neither all right nor all wrong: a real check
        assert torch.equal(run.result.correct[k, VARIANTS.index("original")], expected)
    entry = run.result.variants["original"]
    assert entry.n == len(paths) == 21
    assert entry.correct == int((independent_top1(checkpoints[0], paths) == labels).sum())


# ----------------------------------------------------------------------------------------
# variant pixels


def reference_background(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """background_only written out pixel by pixel: each hole pixel takes the first shift
    whose source pixel (torch.roll: out[y] = in[y - dy]) is background, else the fill."""
    c, h, w = image.shape
    out = image.copy()
    for y in range(h):
        for x in range(w):
            if not hole[y, x]:
                continue
            out[:, y, x] = fill
            for fy, fx in FILL_SHIFTS:
                sy, sx = (y - round(fy * h)) % h, (x - round(fx * w)) % w
                if not hole[sy, sx]:
                    out[:, y, x] = image[:, sy, sx]
                    break
    return out


def test_every_variant_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 20, 24, generator=generator)
    masks = (torch.rand(4, 20, 24, generator=generator) > 0.6).float()
    partners = torch.randn(4, 3, 20, 24, generator=generator)
    partner_masks = (torch.rand(4, 20, 24, generator=generator) > 0.3).float()
    partner_masks[3] = 1.0  # nothing of the partner is background: all fill
    fill = torch.tensor([0.25, -0.5, 1.5])
    before = images.clone()
    variants = make_variants(images, masks, partners, partner_masks, fill, blur_sigma=2.0)
    assert torch.equal(images, before)  # the input is not modified
    kept = masks.bool()[:, None].expand_as(images)
    blurred = downsampled_gaussian_blur(images, 2.0)
    assert variants["original"] is images
    assert torch.equal(variants["background_blurred"][kept], images[kept])
    assert torch.equal(variants["background_blurred"][~kept], blurred[~kept])
    assert torch.equal(variants["object_blurred"][kept], blurred[kept])
    assert torch.equal(variants["object_blurred"][~kept], images[~kept])
    flat = fill.view(1, 3, 1, 1).expand_as(images)
    assert torch.equal(variants["object_only"][kept], images[kept])
    assert torch.equal(variants["object_only"][~kept], flat[~kept])
    swapped = variants["background_swapped"]
    assert torch.equal(swapped[kept], images[kept])
    both_background = (~masks.bool() & ~partner_masks.bool())[:, None].expand_as(images)
    assert torch.equal(swapped[both_background], partners[both_background])  # image j where both are background
    for i in range(4):
        expected = reference_background(partners[i].numpy(), partner_masks[i].numpy() >= 0.5, fill.numpy())
        assert np.array_equal(swapped[i][~kept[i]].numpy(), expected[~kept[i].numpy()])
    assert torch.equal(swapped[3][~kept[3]], flat[3][~kept[3]])


def test_background_only_never_shows_the_object():
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 4:12, 4:12] = 7.0  # the object
    mask = (image[:, 0] == 7.0).float()
    background = background_only(image, mask, torch.tensor([1.0, 2.0, 3.0]))
    assert not bool((background == 7.0).any())
    assert torch.equal(background[:, :, mask[0].bool() == False], image[:, :, mask[0].bool() == False])  # noqa: E712


def test_background_blurred_is_what_enhance_makes_at_ratio_1():
    model = build_tiny_cnn()
    images = random_images(6, 64)
    config = load_config(overrides={"inhibition.ratio": 1.0, "model.layers": ["features.2", "features.3"]})
    evaluator = Evaluator([model], config, (64, 64))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    masks, valid, _ = evaluator.masks(images, labels)
    assert bool(valid.all()) and 0 < float(masks.mean()) < 1
    enhanced = latinhib.LateralInhibition(model, config)(images, targets=labels).enhanced
    variants = make_variants(images, masks, images.flip(0), masks.flip(0), torch.zeros(3), config.blur.sigma)
    assert torch.equal(variants["background_blurred"], enhanced)


def test_pairing_crosses_classes_and_is_seeded():
    labels = torch.randint(0, 3, (600,), generator=torch.Generator().manual_seed(0))
    partners = pair_partners(labels, 0)
    assert bool((labels[partners] != labels).all())
    # uniform over the images of the other classes: class 0's partners split between
    # classes 1 and 2 as their sizes do
    share = float((labels[partners[labels == 0]] == 1).float().mean())
    sizes = torch.bincount(labels)
    assert share == pytest.approx(float(sizes[1] / (sizes[1] + sizes[2])), abs=0.07)
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 9)
    partners = pair_partners(labels, 0)
    assert bool((labels[partners] != labels).all())
    assert torch.equal(partners, pair_partners(labels, 0))
    assert not torch.equal(partners, pair_partners(labels, 1))
    one_class = pair_partners(torch.zeros(4, dtype=torch.long), 0)
    assert bool((one_class != torch.arange(4)).all())
    assert pair_partners(torch.tensor([3]), 0).tolist() == [0]


def test_mask_store_round_trips():
    store = MaskStore()
    hard = (torch.rand(13, 7) > 0.5).float()  # 91 pixels: not a multiple of 8
    soft = torch.rand(5, 5)
    store.put(0, hard)
    store.put(1, soft)
    assert torch.equal(store.get(0), hard)
    assert float((store.get(1) - soft).abs().max()) <= 0.5 / 255 + 1e-7


# ----------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("p, n", [(0.5, 400), (0.9, 1000), (0.2, 150)])
def test_interval_brackets_the_accuracy_with_the_binomial_width(p, n):
    generator = torch.Generator().manual_seed(1)
    correct = (torch.rand(1, len(VARIANTS), n, generator=generator) < p)
    result = summarise(correct, ["m"], {}, seed=0)
    for entry in result.variants.values():
        low, high = entry.ci95
        assert low <= entry.accuracy <= high
        normal = 2 * 1.96 * (entry.accuracy * (1 - entry.accuracy) / n) ** 0.5
        assert 0.85 * normal <= high - low <= 1.15 * normal
    first, second = GAPS[0]
    gap = result.gaps[f"{first} - {second}"]
    assert gap.difference == pytest.approx(result.variants[first].accuracy - result.variants[second].accuracy)
    assert gap.ci95[0] <= gap.difference <= gap.ci95[1]


def test_bootstrap_is_seeded_and_resamples_images():
    correct = torch.rand(3, 200, generator=torch.Generator().manual_seed(0)) < 0.5
    a = bootstrap_accuracies(correct, 500, seed=4)
    assert torch.equal(a, bootstrap_accuracies(correct, 500, seed=4))
    assert not torch.equal(a, bootstrap_accuracies(correct, 500, seed=5))
    assert float(a.std(dim=0).min()) > 0.01  # resampled, not the point estimate repeated


def test_paired_difference_and_mcnemar():
    n = 300
    generator = torch.Generator().manual_seed(2)
    first = torch.rand(len(VARIANTS), n, generator=generator) < 0.6
    second = first.clone()
    second[:, :40] = True  # the second model is right on 40 more (where the first may be wrong)
    result = summarise(torch.stack([first, second]), ["a", "b"], {}, seed=0)
    paired = result.compared[0].paired["original"]
    gained = int((~first[0, :40]).sum())
    assert paired.only_this_correct == gained and paired.only_first_correct == 0
    assert paired.difference == pytest.approx(gained / n)
    assert paired.ci95[0] > 0  # always >= 0 per image: a paired interval stays above 0
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 10) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 * 0.5**10)


# ----------------------------------------------------------------------------------------
# batches and models


class Counter:
    def __init__(self, model):
        self.calls = []
        model.register_forward_hook(lambda module, inputs, output: self.calls.append(inputs[0].data_ptr()))


def test_cost_is_one_importance_pass_and_one_pass_per_variant():
    first, second = build_tiny_cnn(0), build_tiny_cnn(1)
    a, b = Counter(first), Counter(second)
    images = random_images(20, 64)
    labels = torch.arange(20) % 4
    config = {"runtime.batch_size": 8, "model.layers": ["features.2", "features.3"]}
    result = latinhib.evaluate(first, images, labels, config, also=[second])
    assert isinstance(result, latinhib.EvaluationResult)
    batches = 3
    assert len(a.calls) == batches * (1 + len(VARIANTS) - 1)  # importance pass + 4 (original reused)
    assert len(b.calls) == batches * len(VARIANTS)


def test_also_checkpoint_sees_the_same_variants(monkeypatch):
    first, second = build_tiny_cnn(0), build_tiny_cnn(1)
    seen = {}
    original = Evaluator.classify

    def recording(self, model, images):
        seen.setdefault(id(model), []).append(images.clone())
        return original(self, model, images)

    monkeypatch.setattr(Evaluator, "classify", recording)
    images, labels = random_images(8, 64), torch.arange(8) % 4
    latinhib.evaluate(first, images, labels, {"model.layers": ["features.2"]}, also=[second])
    # the first model's `original` comes from its importance pass; every other variant
    # tensor it saw, the second model saw too, bit for bit, in the same order
    assert len(seen[id(second)]) == len(VARIANTS)
    for mine, theirs in zip(seen[id(first)], seen[id(second)][1:]):
        assert torch.equal(mine, theirs)
    assert torch.equal(seen[id(second)][0], images)


def test_api_original_equals_plain_top1(device):
    model = build_tiny_cnn(3).to(device)
    images = random_images(12, 64, seed=3, device=device)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = predicted.clone()
    labels[::3] = (labels[::3] + 1) % 10  # a third wrong
    result = latinhib.evaluate(model, images, labels, {"model.layers": ["features.2"], "runtime.amp": "off"})
    assert result.variants["original"].correct == 8
    assert torch.equal(result.correct[0, 0], (predicted == labels).cpu())
    assert result.variants["object_blurred"].n == 12


# ----------------------------------------------------------------------------------------
# the command


def test_unmapped_folder_is_exit_2_naming_it(tmp_path, checkpoints):
    for name in ("ants", "zebras", "yaks"):
        (tmp_path / "src" / name).mkdir(parents=True)
        image = make_image(np.random.default_rng(0), (40, 40), colour=(0, 0, 0), radius=0.3)
        image.save(tmp_path / "src" / name / "a.png")
    result = invoke("evaluate", tmp_path / "src", *model_args(checkpoints[0]), "--quiet")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: class folder 'yaks' is not one of the model's 3 classes (matched exactly, ignoring case and '_', "
        "or as an index); rename it or set model.classes"]


def test_image_outside_a_class_folder_is_exit_2(tmp_path, checkpoints):
    (tmp_path / "src" / "ants").mkdir(parents=True)
    for path in (tmp_path / "src" / "ants" / "a.png", tmp_path / "src" / "loose.png"):
        make_image(np.random.default_rng(0), (40, 40), colour=(0, 0, 0), radius=0.3).save(path)
    result = invoke("evaluate", tmp_path / "src", *model_args(checkpoints[0]), "--quiet")
    assert result.exit_code == 2 and "'loose.png' is not in a class folder" in result.output


def test_json_on_stdout_alone_and_in_the_issue_schema(src, checkpoints):
    command = [sys.executable, "-m", "latinhib", "evaluate", str(src), *model_args(checkpoints[0]),
               "--also-checkpoint", str(checkpoints[1]), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # nothing else on stdout
    assert set(document) == {"variants", "gaps", "compared", "config"}
    assert list(document["variants"]) == list(VARIANTS)
    for entry in document["variants"].values():
        assert set(entry) == {"accuracy", "correct", "n", "ci95"} and entry["n"] == 21
        assert entry["ci95"][0] <= entry["accuracy"] <= entry["ci95"][1]
    assert set(document["gaps"]) == {"original - background_swapped", "original - object_blurred",
                                     "background_blurred - original"}
    compared, = document["compared"]
    assert compared["checkpoint"] == str(checkpoints[1])
    assert {"checkpoint", "variants", "paired"} <= set(compared)
    assert set(compared["paired"]) == set(VARIANTS)
    assert document["config"]["model"]["checkpoint"] == str(checkpoints[0])
    assert "img/s" in done.stderr  # the progress bar and summary went to stderr


def test_rerun_is_bit_identical_with_or_without_the_cache(src, checkpoints):
    config = config_for(checkpoints[0])
    runs = [evaluate_folder(config, src, quiet=True, log=lambda m: None, cache_bytes=size) for size in (1 << 30, 0)]
    assert runs[0].result.as_dict() == runs[1].result.as_dict()
    assert torch.equal(runs[0].result.correct, runs[1].result.correct)


def test_cached_inputs_are_the_decoded_bits(src):
    from latinhib.data import list_folder
    from latinhib.evaluation_folder import _Inputs
    from latinhib.models import LoadedModel

    items = [item for item in list_folder(src) if item.is_image]
    loaded = LoadedModel(None, (64, 64), IMAGENET_MEAN, IMAGENET_STD, None, "")
    cached = _Inputs(items, loaded, None, cache_bytes=3 * 3 * 64 * 64 * 4)  # room for three
    fresh = _Inputs(items, loaded, None, cache_bytes=0)
    for index in range(len(items)):
        cached.keep(index, cached.load(index)[0])
    assert len(cached.cache) == 3
    for index in range(len(items)):
        assert torch.equal(cached.again(index), fresh.again(index))


def test_bad_files_are_skipped_counted_and_exit_1(tmp_path, src, checkpoints):
    import shutil

    root = tmp_path / "src"
    shutil.copytree(src, root)
    (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "cats" / "empty.png").write_bytes(b"")
    result = invoke("evaluate", root, *model_args(checkpoints[0]), "--quiet", "--json")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("latinhib: ")]
    assert len(lines) == 2
    assert lines[0].startswith("latinhib: bees/broken.jpg: cannot decode")
    assert lines[1] == "latinhib: cats/empty.png: empty file (0 bytes)"
    document = json.loads(result.stdout)
    assert document["variants"]["original"]["n"] == 21 and document["config"]["evaluate"]["failed"] == 2


def test_true_masks_replace_latinhibs(tmp_path, src, checkpoints):
    """All-white true masks keep everything: every variant but object_blurred is the image."""
    masks = tmp_path / "masks"
    for path in image_paths(src):
        target = masks / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (30, 20), 255).save(target.with_suffix(".png"))
    (masks / "cats" / "img3.png").unlink()  # one image without a mask: left out, named
    lines = []
    run = evaluate_folder(config_for(checkpoints[0]), src, masks=masks, quiet=True, log=lines.append)
    assert [line for line in lines if "no mask" in line] == [
        f"latinhib: cats/img3.png: no mask under {str(masks)!r} (looked for cats/img3.png and cats/img3.png.png)"]
    # 30x20 all-white masks: each is said to be doubtful (another aspect ratio, or no background), and used.
    assert len(run.doubtful) == 20 == len([line for line in lines if "(used)" in line or "; used)" in line])
    correct = run.result.correct[0]
    for name in ("background_blurred", "background_swapped", "object_only"):
        assert torch.equal(correct[VARIANTS.index(name)], correct[0])
    assert run.images == 20 and run.result.config["evaluate"]["masks"] == str(masks)


def test_save_variants_and_report(tmp_path, src, checkpoints):
    out, report = tmp_path / "variants", tmp_path / "report"
    result = invoke("evaluate", src, *model_args(checkpoints[0]), "--also-checkpoint", checkpoints[1],
                    "--save-variants", out, "--report", report, "--quiet")
    assert result.exit_code == 0, result.output
    assert "background_swapped" in result.stdout and "McNemar" in result.stdout
    for name in (*VARIANTS, "mask"):
        assert len(list((out / name).rglob("*.png"))) == 21
    mask = np.asarray(Image.open(out / "mask" / "ants" / "img1.png.png")) > 127
    only = np.asarray(Image.open(out / "object_only" / "ants" / "img1.png.png")).reshape(-1, 3)
    assert 0 < mask.mean() < 1
    assert len(np.unique(only[~mask.reshape(-1)], axis=0)) == 1  # one flat colour outside the mask
    assert sorted(p.name for p in report.iterdir()) == ["accuracy.png", "report.json", "report.md", "samples.png"]
    assert json.loads((report / "report.json").read_text())["compared"][0]["checkpoint"] == str(checkpoints[1])
    assert "| background_swapped |" in (report / "report.md").read_text()
