"""Issue 23, item 5: the Python API's and the CLI's rough edges: targets of the wrong length,
a float64 batch under bf16 autocast, ``-q auto``, defaults in the options' help, preview's
caption under scale selection and a grid over sigma, ``--files`` naming a missing file, and
help text that wraps names at their hyphens."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision

from dataset_files import CAT_WNID, RUN, invoke, jpeg, manifest, needs_weights, wnid_folder
from latinhib import LateralInhibition
from latinhib.config import load_config
from latinhib.preview import contact_table, grid_table


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10).eval()


@pytest.mark.parametrize("count", [2, 6])
def test_targets_of_the_wrong_length_are_a_value_error_naming_both(model, count):
    enhancer = LateralInhibition(model, {"inhibition.ratio": 1.0}, input_size=(64, 64))
    with pytest.raises(ValueError, match=rf"targets should have one entry per image \(4\)\. Got {count}"):
        enhancer(torch.randn(4, 3, 64, 64), targets=torch.zeros(count, dtype=torch.long))


def test_a_float64_batch_under_bf16_autocast_is_accepted(model):
    enhancer = LateralInhibition(model, {"inhibition.ratio": 1.0, "runtime.amp": "bf16"}, input_size=(64, 64))
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    result = enhancer(images, targets=torch.tensor([1, 2]))
    assert result.enhanced.dtype == torch.float64 and result.enhanced.shape == images.shape
    assert bool(result.selected.all()) and torch.isfinite(result.enhanced).all()


@needs_weights
def test_q_auto_is_accepted_on_the_command_line(tmp_path):
    src = wnid_folder(tmp_path / "src", {f"{CAT_WNID}/a.jpg": jpeg("chelsea")})
    result = invoke("enhance", src, tmp_path / "out", *RUN, "-q", "auto", "--ratio", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert manifest(tmp_path / "out")[0]["status"] == "enhanced"
    refused = invoke("enhance", src, tmp_path / "out2", *RUN, "-q", "1.5")
    assert refused.exit_code == 2 and "auto" in refused.stderr


@pytest.mark.parametrize("option, default", [("--quantile", "auto"), ("--ratio", "0.75"), ("--sigma", "2"),
                                             ("--target", "auto"), ("--batch-size", None)])
def test_options_help_shows_the_defaults(option, default):
    options = invoke("enhance", "--help").output.split("Options:", 1)[1]
    described = " ".join(options.split()).split(f"{option} ", 1)[1].split(" --", 1)[0]
    assert "default" in described, described
    if default is not None:
        assert re.search(rf"default: {re.escape(default)}\b", described), described


@needs_weights
def test_preview_caption_names_the_scales_not_a_fixed_sigma(tmp_path):
    src = wnid_folder(tmp_path / "src", {"a.jpg": jpeg("chelsea")})
    config = load_config(overrides={"runtime.device": "cpu", "runtime.workers": 0})
    caption = contact_table(config, src, count=1, log=lambda line: None).caption
    assert "sigma=2 " not in caption + " " and "k=13" not in caption, caption
    assert "scales=1,1.5,2,3,4,6" in caption, caption


@needs_weights
def test_a_grid_over_sigma_fits_the_kernel_to_each_sigma(tmp_path):
    src = wnid_folder(tmp_path / "src", {"a.jpg": jpeg("chelsea")})
    config = load_config(overrides={"runtime.device": "cpu", "runtime.workers": 0})
    lines = []
    table = grid_table(config, src, "sigma=1,3", log=lines.append)
    titles = [column.title for column in table.columns[1:]]
    assert "k=7" in titles[0] and "k=19" in titles[1], titles  # 2 * ceil(2.7 sigma) + 1


@needs_weights
def test_preview_files_naming_a_missing_file_is_one_error(tmp_path):
    src = wnid_folder(tmp_path / "src", {"a.jpg": jpeg("chelsea")})
    result = invoke("preview", src, "-o", tmp_path / "x.png", "--files", "nope.jpg", *RUN)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.jpg" in lines[0], lines


@pytest.mark.parametrize("width", [60, 80, 100])
@pytest.mark.parametrize("command", ["enhance", "evaluate", "preview", "merge"])
def test_help_never_wraps_a_name_at_its_hyphen(command, width):
    for line in invoke(command, "--help", terminal_width=width).output.splitlines():
        assert not re.search(r"[A-Za-z]-$", line.rstrip()), line
