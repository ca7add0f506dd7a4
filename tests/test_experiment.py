"""The downstream experiment's own pieces (scripts/experiment/): the fine-detail variant's
print, the per-image Grad-CAM threshold, paired differences, rows.yaml and the sectioned
RESULTS.md writer. Fast: no Fashion-MNIST, no training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latinhib.filters import downsampled_gaussian_blur
from scripts.experiment import data
from scripts.experiment.enhancers import per_image_quantile_mask
from scripts.experiment.finedetail import load_rows
from scripts.experiment.report_common import paired, write_section
from scripts.experiment.report_finedetail import criteria


def garment() -> np.ndarray:
    """A 28x28 grey blob standing in for a Fashion-MNIST garment."""
    ys, xs = np.mgrid[0:28, 0:28]
    return (255 * ((ys - 14) ** 2 + (xs - 14) ** 2 < 144)).astype(np.uint8)


@pytest.mark.parametrize("pattern", data.PATTERNS)
def test_the_print_is_visible_sharp_and_erased_by_the_experiments_blur(pattern):
    rgb, mask = data.place_garment(garment(), np.random.default_rng(3), pattern, data.PATTERN_GARMENT_SIZES)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    blurred = downsampled_gaussian_blur(image, 3.0)
    inner = torch.from_numpy(mask)
    # erode the mask so the garment's edge (which a blur also changes) is left out
    inner = inner & inner.roll(4, 0) & inner.roll(-4, 0) & inner.roll(4, 1) & inner.roll(-4, 1)
    sharp_spread = image[0, :, inner].std(dim=1).mean()
    blurred_spread = blurred[0, :, inner].std(dim=1).mean()
    assert sharp_spread > 0.1            # the print is there: dark/light alternation
    assert blurred_spread < 0.25 * sharp_spread  # and the 3 px blur removes most of it


def test_prints_differ_and_plain_garments_keep_the_fashion_variants_bytes():
    stripes = data.fine_pattern("stripes", np.random.default_rng(0))
    checks = data.fine_pattern("checks", np.random.default_rng(0))
    assert 0.3 < stripes.mean() < 0.7 and 0.3 < checks.mean() < 0.7
    assert not np.array_equal(stripes, checks)
    plain_a = data.place_garment(garment(), np.random.default_rng(5))
    plain_b = data.place_garment(garment(), np.random.default_rng(5), None)
    assert np.array_equal(plain_a[0], plain_b[0]) and np.array_equal(plain_a[1], plain_b[1])
    with pytest.raises(ValueError, match="unknown pattern"):
        data.fine_pattern("dots", np.random.default_rng(0))


def test_pattern_classes_are_shape_times_print():
    classes = data.pattern_classes()
    assert len(classes) == len(data.PATTERN_SHAPES) * len(data.PATTERNS) == len(data.FAMILIES)
    assert classes[:2] == ["tshirt_stripes", "tshirt_checks"]


def test_per_image_quantile_mask_matches_torch_quantile_image_by_image():
    maps = torch.rand(6, 9, 7, dtype=torch.float64)
    quantiles = torch.tensor([0.0, 0.25, 0.5, 0.73, 0.9, 1.0])
    masks = per_image_quantile_mask(maps, quantiles)
    for i in range(6):
        threshold = torch.quantile(maps[i].flatten(), float(quantiles[i]))
        assert torch.equal(masks[i], maps[i] > threshold)
    flat = per_image_quantile_mask(torch.ones(1, 4, 4), torch.tensor([0.5]))
    assert flat.all()  # a constant map keeps the image, as latinhib does


def test_paired_differences_use_per_seed_differences():
    state = {"protocol": {f"a/{s}": {"test/mixed_rand": v} for s, v in enumerate([0.5, 0.6, 0.7])}}
    state["protocol"].update({f"b/{s}": {"test/mixed_rand": v} for s, v in enumerate([0.4, 0.5, 0.6])})
    mean, se, n = paired(state, "a", "b")
    assert n == 3 and mean == pytest.approx(0.1) and se == pytest.approx(0.0, abs=1e-12)
    # an unpaired SE would be ~0.08 here: pairing removes the shared seed effect
    state["protocol"]["b/2"]["test/mixed_rand"] = 0.7
    mean, se, _ = paired(state, "a", "b")
    assert mean == pytest.approx(0.2 / 3) and se == pytest.approx(np.std([0.1, 0.1, 0.0], ddof=1) / np.sqrt(3))


def test_criteria_judge_by_the_numbers():
    values = {"baseline": [0.3, 0.32, 0.31], "oracle": [0.7, 0.72, 0.71], "blur-all": [0.4, 0.41, 0.43],
              "gradcam": [0.5, 0.52, 0.5], "row": [0.66, 0.69, 0.67]}
    state = {"protocol": {f"{m}/{s}": {"test/mixed_rand": v} for m, vs in values.items() for s, v in enumerate(vs)}}
    assert [met for _, met, _ in criteria(state, "row")] == [True, True, True]
    values["row"] = [0.45, 0.40, 0.47]  # below Grad-CAM, not 2 SE above blur-all, < 80% of the oracle
    state = {"protocol": {f"{m}/{s}": {"test/mixed_rand": v} for m, vs in values.items() for s, v in enumerate(vs)}}
    assert [met for _, met, _ in criteria(state, "row")] == [False, False, False]


def test_write_section_replaces_only_its_own_section(tmp_path):
    page = tmp_path / "RESULTS.md"
    write_section(page, "one", "first")
    page.write_text(page.read_text() + "\nhand-written text\n")
    write_section(page, "two", "second")
    write_section(page, "one", "first, again")
    text = page.read_text()
    assert text.count("<!-- begin one -->") == 1 and "first, again" in text and "first\n" not in text
    assert "hand-written text" in text and "second" in text
    assert text.index("first, again") < text.index("hand-written") < text.index("second")


def test_rows_file_is_checked(tmp_path):
    rows = load_rows("pattern")["rows"]
    assert rows and all(isinstance(arg, str) for row in rows for arg in row["args"])
    bad = tmp_path / "rows.yaml"
    bad.write_text("pattern:\n  rows:\n    - {name: oracle, label: x, args: []}\n")
    with pytest.raises(SystemExit, match="not one of"):
        load_rows("pattern", bad)
    bad.write_text("pattern:\n  rows:\n    - {name: r, label: x, args: [--ratio, '1']}\n")
    with pytest.raises(SystemExit, match="benchmark's"):
        load_rows("pattern", bad)


def test_pool_pairs_by_seed_within_each_draw(tmp_path, capsys):
    """scripts.experiment.pool: a row and a reference pair only within a draw and a seed;
    the pooled SE is over all pairs."""
    import json

    from scripts.experiment import pool

    def draw(folder, offset):
        runs = {}
        for seed, (base, row, blur, cam, oracle) in enumerate([(30, 70, 60, 65, 80), (34, 76, 62, 69, 84)]):
            for name, acc in (("baseline", base), ("default", row + offset), ("blur-all", blur),
                              ("gradcam", cam), ("oracle", oracle)):
                runs[f"{name}/{seed}"] = {pool.SPLIT: acc / 100}
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps(
            {"order": ["baseline", "oracle", "blur-all", "gradcam", "default"], "protocol": runs}))

    draw(tmp_path / "a", 0)
    draw(tmp_path / "b", 4)
    assert pool.pairs([json.loads((tmp_path / d / "state.json").read_text()) for d in "ab"],
                      "default", "blur-all") == pytest.approx([10, 14, 14, 18])
    pool.main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    # vs blur-all: mean 14, SE = std([10, 14, 14, 18]) / 2 = 3.27 / 2
    assert "vs blur-all +14.0 ± 1.6 (met: 2 SE 3.3)" in out
    # gain (40 + 42 + 44 + 46) / 4 = 43 over an oracle gain of 50
    assert "86.0% of the oracle's gain (met)" in out


def test_evaluate_checkpoints_passes_the_protocols_own_mask_options():
    """scripts.experiment.evaluate_checkpoints imports (a renamed helper once broke it) and
    gives `latinhib evaluate` the mask options run.py gave `enhance`."""
    from pathlib import Path

    from scripts.experiment import evaluate_checkpoints
    from scripts.experiment.common import mask_arguments

    settings = evaluate_checkpoints.DOCUMENTED
    options = evaluate_checkpoints.model_options(settings, Path("pretrain.pth"), ["a", "b"])
    arguments = mask_arguments(settings)
    start = options.index(arguments[0])
    assert options[start:start + len(arguments)] == arguments
    assert "inhibition.importance=gradient" in arguments and "--sigma" in arguments


def test_pool_compares_with_every_cam_and_judges_by_two_standard_errors(tmp_path, capsys):
    """Issue 26's draws train only the CAMs and latinhib's rows: the pool compares a row
    with each CAM present, on any split, and calls a win only above 2 pooled SE."""
    import json

    from scripts.experiment import pool

    for d, (row, cam, camplus, layer) in enumerate([(80, 70, 71, 79), (82, 73, 72, 80), (81, 71, 70, 80)]):
        runs = {f"{name}/0": {"test/mixed_rand": acc / 100, "val_rand": (acc - 10) / 100}
                for name, acc in (("default", row), ("gradcam", cam), ("gradcam++", camplus), ("layercam", layer))}
        (tmp_path / str(d)).mkdir()
        (tmp_path / str(d) / "state.json").write_text(json.dumps(
            {"order": ["gradcam", "gradcam++", "layercam", "default"], "protocol": runs}))
    folders = [str(tmp_path / str(d)) for d in range(3)]
    pool.main(folders)
    out = capsys.readouterr().out
    # vs gradcam: 10, 9, 10 -> +9.7 ± 0.3 (a win); vs layercam: 1, 2, 1 -> +1.3 ± 0.3 (a win)
    assert "vs gradcam +9.7 ± 0.3 (win: > 2 SE)" in out
    assert "vs layercam +1.3 ± 0.3 (win: > 2 SE)" in out
    assert "blur-all" not in out and "oracle" not in out
    pool.main(folders, "val_rand")
    assert "val_rand" in capsys.readouterr().out
    assert pool.verdict(1.0, 0.6) == "tie: within 2 SE" and pool.verdict(-2.0, 0.5) == "loss: < -2 SE"
