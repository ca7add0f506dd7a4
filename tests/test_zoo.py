"""timm as a model source (issue 24): ``--arch timm:NAME`` builds with timm.create_model at
the class count the checkpoint's head says, takes its preprocessing from the model's
pretrained_cfg, gets default layers at strides 8, 16 and 32 from ``feature_info`` for any
family, finds pretrained weights in a local Hugging Face cache only (one line otherwise),
and says in one line what to install when timm is missing. All models here are small and
randomly initialised; nothing is downloaded."""
from __future__ import annotations

import argparse
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main
from latinhib.config import ConfigError, ModelConfig
from latinhib.importance import default_layers, importance_maps
from latinhib.models import CheckpointError, load_model
from test_startup import imported_modules

timm = pytest.importorskip("timm", reason="timm (the test and timm extras: pip install 'latinhib[timm]')")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors (the test and timm extras)")

CPU = torch.device("cpu")
SIZE = 64  # strides 8, 16, 32 -> maps of 8, 4 and 2 pixels

#: family -> (timm name, constructor kwargs, the default layers at strides 8, 16, 32)
FAMILIES = {
    "resnet": ("resnet18", {}, ["layer2", "layer3", "layer4.0"]),
    "convnext": ("convnext_atto", {}, ["stages.1", "stages.2", "stages.3.blocks.0"]),
    "efficientnet": ("efficientnet_b0", {}, ["blocks.2", "blocks.4", "blocks.6"]),
    "mobilenetv3": ("mobilenetv3_small_050", {}, ["blocks.1", "blocks.3", "blocks.4"]),
    "regnet": ("regnetx_002", {}, ["s2", "s3", "s4.b6"]),
    "densenet": ("densenet121", {}, ["features.denseblock2", "features.denseblock3", "features.denseblock4"]),
    "ghostnet": ("ghostnet_100", {}, ["blocks.4", "blocks.6", "blocks.8"]),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a shared, busy CPU spin-wait ~40x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def like_trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norm scales, shifts and statistics, and layer scales of order 1: timm
    zero-initialises the last norm of residual blocks and sets ConvNeXt's layer scales to
    1e-6, so at plain random init a stage can output a constant map no trained model does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.ndim != 1 or not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("weight", "gamma", "running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif leaf in ("bias", "running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_layers_from_feature_info_at_three_strides_with_spatial_maps(family):
    name, kwargs, expected = FAMILIES[family]
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(arch=f"timm:{name}", weights=None, kwargs=kwargs, input_size=(SIZE, SIZE)), CPU)
    model = like_trained(loaded.model)
    layers = default_layers(model, loaded.input_size)
    assert layers == expected
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    maps = importance_maps(model, images, layers, target="pred").maps
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 8), (4, 4), (2, 2)]
    for layer, iom in zip(layers, maps):
        flat = iom.flatten(1)
        spread = flat.std(dim=1) / flat.mean(dim=1)
        assert (spread > 1e-3).all(), f"{name} {layer}: spatially flat map ({spread.tolist()})"


def test_without_feature_info_the_stage_feeding_pooling_is_missed():
    """What feature_info buys: timm RegNet's stages are not Sequentials, so the plain walk
    (the model with its feature_info hidden) finds no stride-32 block but the final one."""
    model = timm.create_model("regnetx_002").eval()
    del model.feature_info
    assert default_layers(model, (SIZE, SIZE)) == ["s2", "s3"]


def fine_tuned(tmp_path, classes=37, name="mobilenetv3_small_050"):
    """A timm model with a new head of ``classes``, saved as timm's train.py saves it."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=classes)
    ema = timm.create_model(name, num_classes=classes).state_dict()
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save({"epoch": 3, "arch": name, "state_dict": model.state_dict(), "version": 2, "metric": 88.1,
                "args": argparse.Namespace(model=name, num_classes=classes), "state_dict_ema": ema,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path, model.state_dict(), ema


def test_fine_tuned_head_of_another_class_count_loads_without_flags(tmp_path):
    path, state, ema = fine_tuned(tmp_path)
    loaded = load_model(ModelConfig(arch="timm:mobilenetv3_small_050", checkpoint=str(path)), CPU)
    assert loaded.model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 37)
    # timm's loader prefers the EMA weights, and so does this one
    assert torch.equal(loaded.model.state_dict()["classifier.weight"], ema["classifier.weight"])
    assert not torch.equal(ema["classifier.weight"], state["classifier.weight"])
    assert loaded.classes is None  # 37 outputs: not ImageNet's names


def test_plain_state_dict_and_safetensors_of_a_timm_model(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("regnetx_002", num_classes=5).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    expected = model(images)
    plain = tmp_path / "regnet.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, plain)
    safe = tmp_path / "regnet.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(safe))
    for path in (plain, safe):
        loaded = load_model(ModelConfig(arch="timm:regnetx_002", checkpoint=str(path)), CPU)
        assert torch.allclose(loaded.model(images), expected, atol=1e-5), path


def test_preprocessing_comes_from_pretrained_cfg_and_the_config_keys_override_it():
    loaded = load_model(ModelConfig(arch="timm:tf_efficientnet_lite0", weights=None), CPU)
    assert (loaded.input_size, loaded.mean, loaded.std) == ((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    loaded = load_model(ModelConfig(arch="timm:cspresnet50", weights=None), CPU)
    assert loaded.input_size == (256, 256) and loaded.mean == (0.485, 0.456, 0.406)
    loaded = load_model(ModelConfig(arch="timm:tf_efficientnet_lite0", weights=None, input_size=(96, 128),
                                    mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2)), CPU)
    assert (loaded.input_size, loaded.mean, loaded.std) == ((96, 128), (0.4, 0.4, 0.4), (0.2, 0.2, 0.2))


@pytest.fixture()
def src(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "src" / "a.png")
    return tmp_path / "src"


def test_enhance_with_a_timm_safetensors_records_the_models_preprocessing(tmp_path, src):
    torch.manual_seed(0)
    path = tmp_path / "lite.safetensors"
    safetensors_torch.save_file(timm.create_model("tf_efficientnet_lite0", num_classes=4).state_dict(), str(path))
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), "--arch", "timm:tf_efficientnet_lite0",
                                       "--checkpoint", str(path), "--device", "cpu", "--workers", "0", "--ratio", "1",
                                       "--quiet", "--set", "model.input_size=64"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((dst / "latinhib-config.yaml").read_text())["model"]
    assert recorded["arch"] == "timm:tf_efficientnet_lite0"
    assert recorded["mean"] == [0.5, 0.5, 0.5] and recorded["std"] == [0.5, 0.5, 0.5]
    assert recorded["input_size"] == [64, 64]  # the override wins over pretrained_cfg's 224
    assert recorded["layers"] == ["blocks.2", "blocks.4", "blocks.6"]
    assert len(recorded["checkpoint_sha256"]) == 64
    assert (dst / "a.png").is_file()


# ----------------------------------------------------------------------------- pretrained weights


def hf_cache(root, repo: str, state) -> None:
    """The layout huggingface_hub's cache has after a download of ``repo``."""
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    safetensors_torch.save_file(state, str(snapshot / "model.safetensors"))
    (root / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_pretrained_weights_come_from_the_local_hugging_face_cache(offline_cache):
    torch.manual_seed(0)
    state = timm.create_model("mobilenetv3_small_050").state_dict()
    hf_cache(offline_cache, "timm/mobilenetv3_small_050.lamb_in1k", state)
    for weights in ("pretrained", "IMAGENET1K_V1"):  # the config's default means "the ImageNet weights"
        loaded = load_model(ModelConfig(arch="timm:mobilenetv3_small_050", weights=weights), CPU)
        assert torch.equal(loaded.model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
        assert loaded.weights == "pretrained" and "0123abcd" in loaded.description
        assert loaded.classes is not None and len(loaded.classes) == 1000


def test_pretrained_weights_missing_offline_is_one_line_naming_the_model_and_the_cache(offline_cache, tmp_path, src):
    with pytest.raises(CheckpointError) as caught:
        load_model(ModelConfig(arch="timm:mobilenetv3_small_050.lamb_in1k", weights="pretrained"), CPU)
    message = str(caught.value)
    assert "\n" not in message
    assert "timm:mobilenetv3_small_050.lamb_in1k" in message
    assert f"{offline_cache}/models--timm--mobilenetv3_small_050.lamb_in1k" in message
    assert "HF_HUB_OFFLINE is set" in message
    result = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "dst"), "--arch",
                                       "timm:mobilenetv3_small_050", "--weights", "pretrained", "--device", "cpu"])
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith("Error: model.weights: pretrained weights for timm:mobilenetv3_small_050 are not in")


def test_pretrained_weights_missing_online_are_not_fetched(offline_cache, monkeypatch):
    import huggingface_hub
    import huggingface_hub.file_download

    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_fetch(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_fetch)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", no_fetch)
    with pytest.raises(CheckpointError) as caught:
        load_model(ModelConfig(arch="timm:mobilenetv3_small_050", weights="pretrained"), CPU)
    message = str(caught.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" not in message
    assert "(hf download timm/mobilenetv3_small_050.lamb_in1k)" in message


def test_weights_names_that_are_not_for_timm_and_unknown_models_are_config_errors():
    with pytest.raises(ConfigError, match=r"model.weights: 'IMAGENET1K_V2' is not for a timm model"):
        load_model(ModelConfig(arch="timm:resnet18", weights="IMAGENET1K_V2"), CPU)
    with pytest.raises(ConfigError, match=r"'resnet181' is not a timm model \(did you mean 'timm:resnet18'\?\)"):
        load_model(ModelConfig(arch="timm:resnet181", weights=None), CPU)
    with pytest.raises(ConfigError, match=r"timm:resnet18.nope: Invalid pretrained tag \(nope\)"):
        load_model(ModelConfig(arch="timm:resnet18.nope", weights=None), CPU)


# ----------------------------------------------------------------------------- optional install


def test_without_timm_one_line_says_what_to_install(tmp_path, src, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # "import timm" raises ImportError
    with pytest.raises(ConfigError, match=r"^model.arch: timm models need the timm package: "
                                          r"pip install 'latinhib\[timm\]'$"):
        load_model(ModelConfig(arch="timm:resnet18", weights=None), CPU)
    result = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "dst"), "--arch", "timm:resnet18",
                                       "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["Error: model.arch: timm models need the timm package: "
                                          "pip install 'latinhib[timm]'"]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["enhance", "--help"]])
def test_help_and_version_import_neither_timm_nor_safetensors(args):
    modules = imported_modules(*args)
    assert "latinhib.cli" in modules
    heavy = [m for m in modules if m.split(".")[0] in ("timm", "safetensors", "huggingface_hub")]
    assert heavy == []
