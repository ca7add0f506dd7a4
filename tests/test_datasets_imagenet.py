"""Issue 23, item 1: ImageNet's own folder layout (WordNet-ID class folders, the whole 1000
or a subset such as ImageNet-100) with the real ImageNet MobileNetV2: the folder is the
label (``target: auto``/``label``), the manifest names classes in words, ``evaluate`` runs on
it, and a job whose target falls back to ``pred`` although SRC has class folders says so
once on stderr."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torchvision
from PIL import Image

from dataset_files import (CAT_WNID, ESPRESSO, ESPRESSO_WNID, RUN, TABBY, imagenet_folder, invoke, jpeg, manifest,
                           needs_weights, said, wnid_folder)
from latinhib.imagenet import imagenet_wnids, is_imagenet_model, wnid_index

pytestmark = pytest.mark.real_model


def test_the_shipped_wnids_are_imagenets_1000_in_class_index_order():
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    names = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    for wnid, index, name in [("n01440764", 0, "tench"), (CAT_WNID, TABBY, "tabby"), (ESPRESSO_WNID, ESPRESSO, "espresso"),
                              ("n15075141", 999, "toilet tissue")]:
        assert wnid_index(wnid) == index and names[index] == name
    assert wnid_index("n99999999") is None and wnid_index("cat") is None
    assert is_imagenet_model(names) and is_imagenet_model(wnids) and not is_imagenet_model(names[:10])


@needs_weights
def test_wnid_folders_are_the_label_and_the_manifest_names_the_classes(tmp_path):
    src = imagenet_folder(tmp_path / "train")
    for target in ("label", "auto"):
        dst = tmp_path / f"out-{target}"
        result = invoke("enhance", src, dst, *RUN, "--ratio", "1", "--target", target, "--quiet")
        assert result.exit_code == 0, result.output
        lines = manifest(dst)
        assert [line["target"] for line in lines] == ["label"] * 4, lines
        assert said(result) == []  # nothing fell back: nothing to say
        by_class = {line["path"].split("/")[0]: line["predicted_class"] for line in lines}
        assert by_class[ESPRESSO_WNID] == "espresso"  # human names, not indices
        assert by_class[CAT_WNID] in ("tabby", "tiger cat", "Egyptian cat")


@needs_weights
def test_the_label_not_the_top1_is_explained(tmp_path):
    """chelsea is an 'Egyptian cat' to MobileNetV2 but sits in tabby's folder: the label's
    gradient differs from the top-1's, so the masks must differ from a ``pred`` run."""
    src = wnid_folder(tmp_path / "train", {f"{CAT_WNID}/cat.jpg": jpeg("chelsea")})
    masks = {}
    for target in ("auto", "pred"):
        out = tmp_path / f"masks-{target}"
        result = invoke("enhance", src, tmp_path / f"out-{target}", *RUN, "--ratio", "1", "-q", "0.5",
                        "--target", target, "--save-masks", out, "--quiet")
        assert result.exit_code == 0, result.output
        masks[target] = np.asarray(Image.open(out / f"{CAT_WNID}/cat.jpg.png")) > 127
    assert (masks["auto"] != masks["pred"]).mean() > 0.01


@needs_weights
def test_a_subset_of_the_wnids_maps_each_to_its_index_among_the_1000(tmp_path):
    """ImageNet-100 / Imagenette ship a few WNIDs, not all 1000; evaluate's classes say
    which class each folder became."""
    src = imagenet_folder(tmp_path / "val")
    result = invoke("evaluate", src, *RUN, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config"]["evaluate"]["classes"] == {CAT_WNID: "tabby", ESPRESSO_WNID: "espresso"}
    assert document["variants"]["original"]["n"] == 4


@needs_weights
def test_a_fallback_to_pred_with_class_folders_is_said_once_on_stderr(tmp_path):
    """Folders that are no ImageNet class (a WNID outside the 1000, a made-up name): the job
    runs on the top-1, one stderr line says why and what fixes it."""
    src = wnid_folder(tmp_path / "train", {"n99999999/a.jpg": jpeg("chelsea"), "n99999999/b.jpg": jpeg("chelsea", 70),
                                           "kitchen/c.jpg": jpeg("coffee")})
    result = invoke("enhance", src, tmp_path / "out", *RUN, "--ratio", "1")
    assert result.exit_code == 0, result.output
    assert {line["target"] for line in manifest(tmp_path / "out")} == {"pred"}
    fallback = [line for line in said(result) if "target" in line]
    assert len(fallback) == 1, result.stderr
    assert "'kitchen'" in fallback[0] and "pred" in fallback[0] and "model.classes" in fallback[0]
    # --target label names the folder that does not map, instead of a generic line.
    refused = invoke("enhance", src, tmp_path / "out2", *RUN, "--target", "label")
    assert refused.exit_code == 2
    assert "'kitchen'" in refused.stderr and "1000" in refused.stderr


@needs_weights
def test_evaluate_names_an_unknown_wnid_folder(tmp_path):
    src = wnid_folder(tmp_path / "val", {f"{CAT_WNID}/a.jpg": jpeg("chelsea"), "n99999999/b.jpg": jpeg("coffee")})
    result = invoke("evaluate", src, *RUN, "--quiet")
    assert result.exit_code == 2
    assert "'n99999999'" in result.stderr and "WordNet" in result.stderr
