"""`latinhib enhance` / `latinhib config` end to end, on folders and a tiny checkpoint made
here: the tree is mirrored, unselected files are byte-identical, selected files differ
only where the mask is 0, the manifest has a line per input, reruns skip, and bad input
gets the documented exit code and one-line error."""
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

from latinhib.inhibition import selection_score

from helpers import ARCH, CLASSES, files, invoke, make_image, manifest_entries


@pytest.fixture()
def src(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
            image = make_image(rng, size)
            if i % 3 == 0:
                image.save(root / cls / f"img{i}.png")
            elif i % 3 == 1:
                image.save(root / cls / f"img{i}.jpg", quality=90)
            else:
                image.save(root / cls / f"img{i}.webp", quality=90)
    (root / "notes.txt").write_text("not an image")
    return root


def base_args(checkpoint: Path):
    return ["--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", "--set", "model.input_size=64", "--quiet"]


def test_enhance_mirrors_tree_and_blurs_only_where_mask_is_zero(src, tmp_path, checkpoint):
    dst, masks = tmp_path / "dst", tmp_path / "masks"
    result = invoke("enhance", src, dst, *base_args(checkpoint), "--ratio", "0.5", "--save-masks", masks)
    assert result.exit_code == 0, result.output
    images = [f for f in files(src) if not f.endswith(".txt")]
    # a complete copy: the text file too, byte for byte
    assert files(dst) == sorted(files(src) + ["latinhib-config.yaml", "latinhib-manifest.jsonl"])
    assert (dst / "notes.txt").read_bytes() == (src / "notes.txt").read_bytes()
    entries = {e["path"]: e for e in manifest_entries(dst)}
    assert set(entries) == set(files(src))  # one line per input, the text file too
    assert entries["notes.txt"]["status"] == "copied" and entries["notes.txt"]["selected"] is False
    enhanced = [p for p in images if entries[p]["status"] == "enhanced"]
    copied = [p for p in images if entries[p]["status"] == "copied"]
    assert enhanced and copied
    for rel in images:
        # the selection is the documented hash, nothing else
        assert entries[rel]["selected"] == (selection_score(0, rel) < 0.5)
        a, b = Image.open(src / rel), Image.open(dst / rel)
        assert (a.format, a.size) == (b.format, b.size)
    for rel in copied:
        assert (src / rel).read_bytes() == (dst / rel).read_bytes()
        assert not (masks / f"{rel}.png").exists()
    for rel in enhanced:
        mask = np.asarray(Image.open(masks / f"{rel}.png"))
        assert mask.shape == Image.open(src / rel).size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        entry = entries[rel]
        assert abs(entry["kept_fraction"] - (mask == 255).mean()) < 1e-3
        assert entry["target"] == "pred" and entry["predicted_class"] is not None and entry["error"] is None
        if rel.endswith(".png"):  # lossless: exact comparison against the mask
            before = np.asarray(Image.open(src / rel)).astype(int)
            after = np.asarray(Image.open(dst / rel)).astype(int)
            diff = np.abs(before - after).max(axis=2)
            assert diff[mask == 255].max() <= 1
            assert diff[mask == 0].max() > 10


def test_rerun_skips_everything_and_overwrite_redoes(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert invoke("enhance", src, dst, *base_args(checkpoint), "--ratio", "0.5").exit_code == 0
    first = manifest_entries(dst)
    stamp = {p: (dst / p).stat().st_mtime_ns for p in files(dst) if not p.startswith("latinhib-")}
    result = invoke("enhance", src, dst, *base_args(checkpoint), "--ratio", "0.5", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["already_done"] == len(first) and summary["enhanced"] == summary["copied"] == 0
    assert {p: (dst / p).stat().st_mtime_ns for p in stamp} == stamp
    assert manifest_entries(dst) == first
    result = invoke("enhance", src, dst, *base_args(checkpoint), "--ratio", "0.5", "--overwrite", "--json")
    assert json.loads(result.stdout)["already_done"] == 0


def test_selected_fraction_follows_ratio(tmp_path, checkpoint):
    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        make_image(rng, (24, 24)).save(root / f"{i:03d}.png")
    result = invoke("enhance", root, tmp_path / "out", *base_args(checkpoint), "--ratio", "0.3", "--json")
    summary = json.loads(result.stdout)
    assert summary["enhanced"] + summary["unchanged"] == sum(selection_score(0, f"{i:03d}.png") < 0.3 for i in range(60))
    assert 0.3 * 60 - 4 * (60 * 0.3 * 0.7) ** 0.5 <= summary["enhanced"] <= 0.3 * 60 + 4 * (60 * 0.3 * 0.7) ** 0.5


def test_missing_src(tmp_path, checkpoint):
    result = invoke("enhance", tmp_path / "nope", tmp_path / "dst", *base_args(checkpoint))
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: SRC '{tmp_path / 'nope'}': no such directory"
    assert not (tmp_path / "dst").exists()


def test_dst_inside_src_is_refused(src, checkpoint):
    for dst in (src / "out", src):
        result = invoke("enhance", src, dst, *base_args(checkpoint))
        assert result.exit_code == 2
        assert result.output.startswith("Error: DST ")
        assert "SRC" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (src / "out").exists()


def test_unknown_config_key(src, tmp_path, checkpoint):
    config = tmp_path / "bad.yaml"
    config.write_text("inhibition:\n  sigmma: 2\n")
    result = invoke("enhance", src, tmp_path / "dst", *base_args(checkpoint), "--config", config)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: config file '{config}': unknown key 'inhibition.sigmma' (did you mean 'sigma'?); "
        "keys of inhibition: quantile, filter, sigma, kernel_size, ratio, norm, seed, scales, scale_gamma, auto_power, outline, importance, flip"
    )
    assert not (tmp_path / "dst").exists()


def test_out_of_range_quantile(src, tmp_path, checkpoint):
    result = invoke("enhance", src, tmp_path / "dst", *base_args(checkpoint), "-q", "1.5")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: inhibition.quantile: 1.5 is not allowed; expected a number in [0.0, 1.0] or auto"
    assert not (tmp_path / "dst").exists()


def test_checkpoint_that_does_not_fit(src, tmp_path, checkpoint):
    result = invoke("enhance", src, tmp_path / "dst", *base_args(checkpoint), "--arch", "resnet18")
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"Error: checkpoint '{checkpoint}' does not fit the architecture: missing keys: conv1.weight")
    assert "unexpected keys: features.0.0.weight" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "dst").exists()


def test_config_command_prints_effective_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("inhibition:\n  quantile: 0.7\n  ratio: 0.2\n")
    result = invoke("config", "--config", config, "--set", "inhibition.ratio=0.9", "--sigma", "3")
    assert result.exit_code == 0
    import yaml

    data = yaml.safe_load(result.stdout)
    assert data["inhibition"]["quantile"] == 0.7  # from the file
    assert data["inhibition"]["ratio"] == 0.9  # --set beats the file
    assert data["inhibition"]["sigma"] == 3.0  # option
    assert data["model"]["arch"] == "mobilenet_v2"  # default


def test_default_config_file_matches_defaults():
    from latinhib.config import load_config

    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "configs" / "default.yaml") == load_config()
    for example in (root / "configs").glob("*.yaml"):
        load_config(example)  # every shipped example is valid


def test_help_ends_with_an_example():
    for command in ([], ["enhance"], ["config"]):
        text = invoke(*command, "--help").output
        assert "Example:" in text and "latinhib " in text.split("Example:")[1]
    assert invoke("--version").output.strip().startswith("latinhib, version ")


def test_subprocess_stdout_carries_only_outputs(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    proc = subprocess.run(
        [sys.executable, "-m", "latinhib", "enhance", str(src), str(dst), *map(str, base_args(checkpoint)),
         "--ratio", "1", "--print-outputs"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = sorted(proc.stdout.splitlines())
    expected = sorted(str(dst / f) for f in files(src))  # the copied text file is an output too
    assert printed == expected


def test_torchscript_checkpoint_uses_the_input_gradient(src, tmp_path):
    model = torchvision.models.get_model(ARCH, num_classes=len(CLASSES)).eval()
    path = tmp_path / "model.ts"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(model), str(path))
    args = ["--checkpoint", path, "--device", "cpu", "--workers", "0", "--set", "model.input_size=64", "--quiet"]
    result = invoke("enhance", src, tmp_path / "dst", *args, "--ratio", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["enhanced"] == 18
    result = invoke("enhance", src, tmp_path / "dst2", *args, "--layers", "features.3")
    assert result.exit_code == 2
    assert "TorchScript models cannot be hooked" in result.output and "layers: [input]" in result.output


def test_user_architecture_with_kwargs_from_config(src, tmp_path, monkeypatch):
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width=8, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.stages = nn.Sequential(\n"
        "            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(inplace=True),\n"
        "            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(inplace=True),\n"
        "            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(inplace=True),\n"
        "            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(inplace=True))\n"
        "        self.head = nn.Linear(width, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.stages(x).mean((2, 3)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    net = importlib.import_module("mynets").Net(width=6, num_classes=5)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    config = tmp_path / "net.yaml"
    config.write_text("model:\n  arch: mynets:Net\n  kwargs: {width: 6}\n  input_size: 64\n  layers: [stages.5]\n")
    result = invoke("enhance", src, tmp_path / "dst", "--config", config, "--checkpoint", tmp_path / "net.pth",
                    "--device", "cpu", "--workers", "0", "--ratio", "1", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["enhanced"] == 18  # num_classes=5 read from the checkpoint
    result = invoke("enhance", src, tmp_path / "dst3", "--config", config, "--checkpoint", tmp_path / "net.pth",
                    "--set", "model.kwargs={width: 7}", "--quiet")
    assert result.exit_code == 2 and "does not fit the architecture" in result.output


def test_offline_weights_error_names_the_cache_file(src, tmp_path, monkeypatch):
    import urllib.error

    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    result = invoke("enhance", src, tmp_path / "dst", "--arch", "resnet18", "--weights", "IMAGENET1K_V1", "--quiet")
    assert result.exit_code == 2
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"torchvision looks for {expected}" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()


def test_label_target_uses_folder_classes(src, tmp_path, checkpoint):
    args = [*base_args(checkpoint), "--set", f"model.classes=[{','.join(CLASSES)}]", "--ratio", "1"]
    assert invoke("enhance", src, tmp_path / "dst", *args).exit_code == 0
    assert {e["target"] for e in manifest_entries(tmp_path / "dst") if e["status"] == "enhanced"} == {"label"}
    result = invoke("enhance", src, tmp_path / "dst2", *base_args(checkpoint), "--target", "label")
    assert result.exit_code == 2 and "model.target: 'label' needs" in result.output


def test_unwritable_dst_is_one_line(src, tmp_path, checkpoint):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = invoke("enhance", src, blocker / "sub", *base_args(checkpoint))
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"Error: DST '{blocker / 'sub'}': cannot write") and len(line.splitlines()) == 1


def test_foreign_config_in_dst_is_refused(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "latinhib-config.yaml").write_text("- not\n- a config\n")
    result = invoke("enhance", src, dst, *base_args(checkpoint))
    assert result.exit_code == 2
    assert "latinhib-config.yaml is unreadable or not a latinhib config" in result.output
    assert invoke("enhance", src, dst, *base_args(checkpoint), "--overwrite").exit_code == 0
