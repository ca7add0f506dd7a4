"""A checkpoint is data, not code (issue 4): with default settings a pickle whose
unpickling would run code is refused with a clear error before it runs; the marker file
its payload would create never appears. Only ``--trust-checkpoint`` unpickles full models
(and then really does run the file's code, which is why it is opt-in)."""
from __future__ import annotations

import builtins

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main
from latinhib.config import ModelConfig
from latinhib.models import CheckpointError, load_model
from helpers import ARCH


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture()
def evil(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.get_model(ARCH, num_classes=3).state_dict()
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "extra": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


@pytest.fixture()
def src(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "src" / "a.png")
    return tmp_path / "src"


def args(path):
    return ["--arch", ARCH, "--checkpoint", str(path), "--device", "cpu", "--workers", "0",
            "--set", "model.input_size=64", "--quiet"]


def test_malicious_pickle_is_refused_and_never_runs(evil, src, tmp_path):
    path, marker = evil
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *args(path)], catch_exceptions=False)
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: checkpoint '{path}' holds pickled code or objects, not just tensors")
    assert line.endswith("refusing to load it. Pass --trust-checkpoint only if you trust this file.")
    assert not marker.exists()
    assert not dst.exists()
    with pytest.raises(CheckpointError, match="holds pickled code"):
        load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path)), torch.device("cpu"))
    assert not marker.exists()


def test_the_payload_is_real_and_trust_checkpoint_runs_it(evil):
    """The test above can fail: with --trust-checkpoint this very file runs its code."""
    path, marker = evil
    load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path), trust_checkpoint=True), torch.device("cpu"))
    assert marker.exists()


def test_full_pickled_model_needs_trust_checkpoint(src, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.get_model(ARCH, num_classes=3), path)
    refused = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "no"), *args(path)])
    assert refused.exit_code == 2 and "--trust-checkpoint" in refused.output
    assert not (tmp_path / "no").exists()
    trusted = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "yes"), *args(path), "--trust-checkpoint",
                                        "--ratio", "1"])
    assert trusted.exit_code == 0, trusted.output
    assert (tmp_path / "yes" / "a.png").is_file()
