"""Checkpoint files are read by what they hold (issue 24): a ``.safetensors`` file goes to
safetensors' own loader for every kind of architecture and is never unpickled; a malformed
one is one line naming the file, exit 2; its sha256 is recorded like any checkpoint's; timm's
training checkpoints (an ``argparse.Namespace`` under ``args``, ``state_dict_ema`` next to
``state_dict``) load with the safe unpickler."""
from __future__ import annotations

import argparse
import hashlib
import pickle

import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner
from PIL import Image

from latinhib.checkpoint_files import CheckpointError, read_checkpoint, sniff_format
from latinhib.cli import main
from latinhib.config import ModelConfig
from latinhib.models import load_model
from helpers import ARCH, build_tiny_cnn
from test_checkpoint_safety import Payload

safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors (the test and timm extras)")


@pytest.fixture()
def src(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "src" / "a.png")
    return tmp_path / "src"


@pytest.fixture()
def state():
    torch.manual_seed(0)
    return torchvision.models.get_model(ARCH, num_classes=3).state_dict()


def cli_args(path, arch=ARCH):
    return ["--arch", arch, "--checkpoint", str(path), "--device", "cpu", "--workers", "0",
            "--set", "model.input_size=64", "--quiet", "--ratio", "1"]


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Every way into an unpickler raises: a load that takes one fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a safetensors checkpoint went through an unpickler")

    class Refused(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refused)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_the_no_unpickling_fixture_does_catch_a_pickle_load(tmp_path, state, no_unpickling):
    """The guard below can fail: a .pth checkpoint (a pickle) trips it."""
    path = tmp_path / "plain.pth"
    with open(path, "wb") as handle:  # torch.save itself is fine, only loads are refused
        torch.serialization.save(state, handle)
    with pytest.raises(AssertionError, match="unpickler"):
        load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path)), torch.device("cpu"))


@pytest.mark.parametrize("name", ["model.safetensors", "named-like-a.pth"])
def test_safetensors_load_never_unpickles_whatever_the_name(tmp_path, state, name, no_unpickling):
    path = tmp_path / name
    safetensors_torch.save_file(state, str(path))
    assert sniff_format(path) == "safetensors"
    loaded = load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path)), torch.device("cpu"))
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.checkpoint_bytes == path.stat().st_size


def test_a_safetensors_name_holding_a_pickle_is_refused_and_never_runs(tmp_path, state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    torch.save({"state_dict": state, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.safetensors'.*not a valid safetensors file"):
        read_checkpoint(path, trust=True)  # not even --trust-checkpoint unpickles a .safetensors name
    assert not marker.exists()


def test_safetensors_for_a_module_callable_arch(tmp_path):
    model = build_tiny_cnn(seed=3, num_classes=4)
    path = tmp_path / "tiny.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    loaded = load_model(ModelConfig(arch="helpers:build_tiny_cnn", weights=None, checkpoint=str(path),
                                    input_size=(64, 64)), torch.device("cpu"))
    images = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.model(images), model(images), atol=1e-5)


def malformed_files(tmp_path, state):
    whole = tmp_path / "whole.safetensors"
    safetensors_torch.save_file(state, str(whole))
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"these are not the tensors you are looking for")
    header = int.from_bytes(data[:8], "little")
    bad_json = tmp_path / "bad-header.pth"  # a safetensors start, a broken header: content decides
    bad_json.write_bytes(data[:8] + b"{" + b"\xff" * (header - 1) + data[8 + header:])
    return [truncated, garbage, bad_json]


def test_malformed_safetensors_is_one_line_naming_the_file_exit_2(tmp_path, state, src):
    for path in malformed_files(tmp_path, state):
        dst = tmp_path / f"dst-{path.stem}"
        result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *cli_args(path)])
        assert result.exit_code == 2, result.output
        [line] = result.output.splitlines()
        assert line.startswith(f"Error: checkpoint '{path}': not a valid safetensors file ("), line
        assert not dst.exists()


def test_safetensors_sha256_is_recorded_in_dst_config(tmp_path, state, src):
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state, str(path))
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), *cli_args(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((dst / "latinhib-config.yaml").read_text())["model"]
    assert recorded["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded["checkpoint_bytes"] == path.stat().st_size


def timm_training_checkpoint(state, ema):
    """What timm's train.py (CheckpointSaver) writes: args is an argparse.Namespace."""
    return {"epoch": 7, "arch": "mobilenetv3_small", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
            "version": 2, "args": argparse.Namespace(model="mobilenetv3_small", lr=0.1, epochs=30),
            "metric": 71.5, "state_dict_ema": ema}


def test_timm_training_checkpoint_loads_safely_and_prefers_the_ema(tmp_path, state):
    torch.manual_seed(1)
    ema = torchvision.models.get_model(ARCH, num_classes=3).state_dict()
    path = tmp_path / "checkpoint-7.pth.tar"
    torch.save(timm_training_checkpoint(state, ema), path)
    loaded = load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path)), torch.device("cpu"))
    key = next(k for k, v in ema.items() if v.is_floating_point() and not torch.equal(v, state[k]))
    assert torch.equal(loaded.model.state_dict()[key], ema[key])
    assert "state_dict_ema" in loaded.description
    torch.save({k: v for k, v in timm_training_checkpoint(state, ema).items() if k != "state_dict_ema"}, path)
    loaded = load_model(ModelConfig(arch=ARCH, weights=None, checkpoint=str(path)), torch.device("cpu"))
    assert torch.equal(loaded.model.state_dict()[key], state[key])
