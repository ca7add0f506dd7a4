"""DST/latinhib-config.yaml says what really made DST (issue 16, item 8): the resolved layer
names, input size, mean and std, the weights only when weights were loaded, and the
checkpoint file's sha256 and size. The same file still decides whether a rerun may go on:
the same command is accepted, a different checkpoint is refused, and a DST written by the
previous version (``layers: null``) still resumes. A 1000-class model without class names
gets ImageNet's names in the manifest."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image

from latinhib.importance import default_layers
from helpers import ARCH, CLASSES, invoke, make_image, manifest_by_path

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WEIGHTS_FILE = Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth"


def args(checkpoint, *extra):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", "--set", "model.input_size=64", "--ratio", "1", "--quiet", *map(str, extra)]


def written(dst: Path) -> dict:
    return yaml.safe_load((dst / "latinhib-config.yaml").read_text())


@pytest.fixture()
def src(tmp_path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    root.mkdir()
    for i in range(3):
        make_image(rng, (56, 48)).save(root / f"{i}.png")
    return root


def test_written_config_records_the_resolved_model(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert invoke("enhance", src, dst, *args(checkpoint)).exit_code == 0
    model = written(dst)["model"]
    expected_layers = default_layers(torchvision.models.get_model(ARCH, num_classes=len(CLASSES)).eval(), (64, 64))
    assert expected_layers and model["layers"] == expected_layers
    assert model["input_size"] == [64, 64]
    assert model["mean"] == IMAGENET_MEAN and model["std"] == IMAGENET_STD
    assert model["weights"] is None  # a user checkpoint: no torchvision weights were loaded
    data = checkpoint.read_bytes()
    assert model["checkpoint_sha256"] == hashlib.sha256(data).hexdigest()
    assert model["checkpoint_bytes"] == len(data)
    assert model["checkpoint"] == str(checkpoint)


def test_rerun_of_the_same_command_is_accepted_and_another_checkpoint_refused(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    own = tmp_path / "model.pth"
    own.write_bytes(checkpoint.read_bytes())
    assert invoke("enhance", src, dst, *args(own)).exit_code == 0
    again = invoke("enhance", src, dst, *args(own, "--json"))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["already_done"] == 3
    # the same layers named explicitly are the same settings; other layers are not
    layers = ",".join(written(dst)["model"]["layers"])
    assert invoke("enhance", src, dst, *args(own, "--layers", layers)).exit_code == 0
    other = invoke("enhance", src, dst, *args(own, "--layers", "features.3"))
    assert other.exit_code == 2 and "was made with model.layers = [" in other.output
    # the checkpoint file at the same path now holds other weights: refused, naming the hash
    torch.manual_seed(1)
    retrained = torchvision.models.get_model(ARCH, num_classes=len(CLASSES))
    torch.save(retrained.state_dict(), own)
    result = invoke("enhance", src, dst, *args(own))
    assert result.exit_code == 2
    assert f"was made with model.checkpoint_sha256 = '{hashlib.sha256(checkpoint.read_bytes()).hexdigest()}'" \
        in result.output


def test_a_dst_written_by_the_previous_version_still_resumes(src, tmp_path, checkpoint):
    """Before this change DST's config held the requested values: ``layers: null``,
    ``input_size`` as given, ``weights: IMAGENET1K_V1`` next to a checkpoint, no hash."""
    dst = tmp_path / "dst"
    assert invoke("enhance", src, dst, *args(checkpoint)).exit_code == 0
    config = written(dst)
    old = dict(config["model"], layers=None, weights="IMAGENET1K_V1", mean=None, std=None)
    del old["checkpoint_sha256"], old["checkpoint_bytes"]
    (dst / "latinhib-config.yaml").write_text(yaml.safe_dump(dict(config, model=old), sort_keys=False))
    result = invoke("enhance", src, dst, *args(checkpoint, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["already_done"] == 3
    assert written(dst)["model"]["layers"] == config["model"]["layers"]  # rewritten with what was used


def test_checkpoint_sha256_in_a_config_is_checked(src, tmp_path, checkpoint):
    wrong = "ab" * 32
    result = invoke("enhance", src, tmp_path / "dst", *args(checkpoint, "--set", f"model.checkpoint_sha256={wrong}"))
    assert result.exit_code == 2
    assert f"has checkpoint_sha256 '{hashlib.sha256(checkpoint.read_bytes()).hexdigest()}', " \
           f"model.checkpoint_sha256 asks for '{wrong}'" in result.output
    assert not (tmp_path / "dst").exists()
    bad = invoke("enhance", src, tmp_path / "dst", *args(checkpoint, "--set", "model.checkpoint_sha256=abc"))
    assert bad.exit_code == 2 and "model.checkpoint_sha256: 'abc' is not allowed" in bad.output
    # the config DST records is a config that reproduces the job
    dst = tmp_path / "dst2"
    assert invoke("enhance", src, dst, *args(checkpoint)).exit_code == 0
    again = invoke("enhance", src, tmp_path / "dst3", "--config", dst / "latinhib-config.yaml", "--quiet")
    assert again.exit_code == 0, again.output


def test_a_1000_class_checkpoint_without_names_predicts_imagenet_names(src, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "in1k.pth"
    torch.save(torchvision.models.get_model(ARCH, num_classes=1000).state_dict(), path)
    dst = tmp_path / "dst"
    assert invoke("enhance", src, dst, *args(path)).exit_code == 0
    categories = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"]
    for entry in manifest_by_path(dst).values():
        assert entry["status"] == "enhanced"
        assert entry["predicted_class"] == categories[entry["predicted_index"]]


@pytest.mark.real_model
@pytest.mark.skipif(not WEIGHTS_FILE.is_file(), reason=f"torchvision's MobileNetV2 weights not in {WEIGHTS_FILE}")
def test_loaded_torchvision_weights_are_recorded_by_their_full_name(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(src / "a.png")
    result = invoke("enhance", src, dst, "--arch", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--device", "cpu",
                    "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    model = written(dst)["model"]
    assert model["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert model["layers"] == ["features.6", "features.13", "features.17"]
    assert model["input_size"] == [224, 224] and model["mean"] == IMAGENET_MEAN and model["std"] == IMAGENET_STD
    assert model["checkpoint"] is None and model["checkpoint_sha256"] is None
    # the short name the user gave resolves to the same weights: the rerun is accepted
    again = invoke("enhance", src, dst, "--weights", "IMAGENET1K_V1", "--device", "cpu", "--workers", "0", "--quiet")
    assert again.exit_code == 0, again.output
