"""Issue 23, item 4: the rough edges a new user hit in ``latinhib evaluate`` on the real
ImageNet MobileNetV2: a further checkpoint of another class count, a file that is no
checkpoint, doubtful true masks, the missing-mask line, one class folder, options that mean
nothing for evaluate, and what a log (stderr not a TTY) shows."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from PIL import Image

from dataset_files import CAT_WNID, ESPRESSO_WNID, RUN, imagenet_folder, invoke, jpeg, needs_weights, said, wnid_folder

pytestmark = [pytest.mark.real_model, needs_weights]


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return imagenet_folder(tmp_path_factory.mktemp("val") / "val")


def test_also_checkpoint_of_another_class_count_is_refused(val, tmp_path):
    ten = tmp_path / "ten.pth"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), ten)
    result = invoke("evaluate", val, *RUN, "--also-checkpoint", ten, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ten) in lines[0] and "10 classes" in lines[0] and "1000" in lines[0], lines


@pytest.mark.parametrize("trust", [False, True])
def test_a_file_that_is_no_checkpoint_is_one_line(val, tmp_path, trust):
    notes = tmp_path / "notes.pth"
    notes.write_text("these are my training notes, not a model\n" * 20)
    result = invoke("evaluate", val, *RUN, "--also-checkpoint", notes, *(["--trust-checkpoint"] if trust else []),
                    "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(notes) in lines[0] and "not a PyTorch checkpoint" in lines[0], lines
    assert "pickle" not in lines[0].lower() and "load key" not in lines[0]


def test_doubtful_true_masks_get_one_line_each_and_are_counted(val, tmp_path):
    masks = tmp_path / "masks"
    for rel in (f"{CAT_WNID}/{CAT_WNID}_1.JPEG", f"{CAT_WNID}/{CAT_WNID}_2.JPEG",
                f"{ESPRESSO_WNID}/{ESPRESSO_WNID}_1.JPEG", f"{ESPRESSO_WNID}/{ESPRESSO_WNID}_2.JPEG"):
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
    good = Image.new("L", (451, 300), 0)
    good.paste(255, (90, 60, 360, 280))
    good.save(masks / CAT_WNID / f"{CAT_WNID}_1.png")
    Image.new("L", (100, 100), 255).save(masks / CAT_WNID / f"{CAT_WNID}_2.png")  # square mask, 3:2 photo
    Image.new("L", (600, 400), 0).save(masks / ESPRESSO_WNID / f"{ESPRESSO_WNID}_1.png")  # all black
    Image.new("L", (600, 400), 255).save(masks / ESPRESSO_WNID / f"{ESPRESSO_WNID}_2.png")  # all white
    report = tmp_path / "report"
    result = invoke("evaluate", val, *RUN, "--masks", masks, "--json", "--report", report)
    lines = said(result)
    doubtful = {name: [line for line in lines if name in line] for name in
                (f"{CAT_WNID}_2", f"{ESPRESSO_WNID}_1", f"{ESPRESSO_WNID}_2")}
    assert all(len(found) == 1 for found in doubtful.values()), lines
    assert "aspect" in doubtful[f"{CAT_WNID}_2"][0]
    assert "all black" in doubtful[f"{ESPRESSO_WNID}_1"][0] and "all white" in doubtful[f"{ESPRESSO_WNID}_2"][0]
    assert not [line for line in lines if f"{CAT_WNID}_1" in line]
    document = json.loads(result.stdout)
    assert len(document["config"]["evaluate"]["doubtful_masks"]) == 3
    assert "3 doubtful masks" in (report / "report.md").read_text()


def test_the_missing_mask_line_lists_every_name_looked_for(val, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    result = invoke("evaluate", val, *RUN, "--masks", masks, "--quiet")
    rel = f"{CAT_WNID}/{CAT_WNID}_1.JPEG"
    line = next(line for line in said(result) if rel in line)
    for name in (rel, f"{rel}.png", f"{CAT_WNID}/{CAT_WNID}_1.png"):
        assert name in line, line


def test_one_class_folder_says_background_swapped_stays_in_the_class(tmp_path):
    src = wnid_folder(tmp_path / "val", {f"{CAT_WNID}/a.jpg": jpeg("chelsea"), f"{CAT_WNID}/b.jpg": jpeg("chelsea", 60)})
    result = invoke("evaluate", src, *RUN, "--quiet")
    assert result.exit_code == 0, result.output
    lines = [line for line in said(result) if "background_swapped" in line]
    assert len(lines) == 1 and "one class" in lines[0], result.stderr


def test_selection_options_are_not_evaluate_options(val):
    help_text = invoke("evaluate", "--help").output
    assert "--ratio" not in help_text
    assert "pairing" in help_text  # --seed is the pairing's and the bootstrap's seed here
    result = invoke("evaluate", val, *RUN, "--ratio", "0.5", "--quiet")
    assert result.exit_code == 2 and "--ratio" in result.stderr


def test_a_log_gets_whole_lines_the_failed_files_and_a_grammatical_summary(tmp_path):
    src = wnid_folder(tmp_path / "val", {f"{CAT_WNID}/a.jpg": jpeg("chelsea"),
                                         f"{ESPRESSO_WNID}/b.jpg": b"\xff\xd8\xff not really a jpeg"})
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "latinhib", "evaluate", str(src), *RUN, "--json",
                           "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    failure = [line for line in lines if "b.jpg" in line]
    assert len(failure) == 1 and failure[0].startswith("latinhib: "), lines  # not glued to a bar
    assert lines[-1].startswith("latinhib: 1 image evaluated, 1 failed"), lines
    assert "\r" not in proc.stderr  # a log gets lines, not a redrawn bar
    assert any(line.startswith("latinhib: masks: 2/2 images") for line in lines), lines  # images counted once
    assert any(line.startswith("latinhib: variants: 1/1 image ") for line in lines), lines  # ... to the end
    document = json.loads(proc.stdout)
    assert document["config"]["evaluate"]["failed_files"] == [
        {"path": f"{ESPRESSO_WNID}/b.jpg", "error": failure[0].split(": ", 2)[2]}]
    assert f"{ESPRESSO_WNID}/b.jpg" in (report / "report.md").read_text()
