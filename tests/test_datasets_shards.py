"""Issue 23, items 2 and 3: labels inside WebDataset shards (``KEY.cls``, a JSON field named by
``model.label_key``) as the loss target, folder -> shards that the standard ``webdataset``
reader trains on as they are (every image a sample with its ``.cls``, non-image files
beside the shards, unique keys mapped back to source paths in the manifest), gzipped
shards in and out, ``pipe:`` commands that decompress or fail. Shards are written and
read back by the real ``webdataset`` library; the model is the real ImageNet MobileNetV2."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dataset_files import (CAT_WNID, ESPRESSO, ESPRESSO_WNID, RUN, TABBY, gz_members, invoke, jpeg,
                           labelled_samples, manifest, needs_weights, png, read_back, said, wnid_folder,
                           write_wds_shard)

pytestmark = [pytest.mark.real_model, needs_weights]


def test_cls_members_are_the_label_under_auto(tmp_path):
    shard = write_wds_shard(tmp_path / "src" / "train-000000.tar", labelled_samples())
    result = invoke("enhance", shard, tmp_path / "out", *RUN, "--ratio", "1", "--quiet")
    assert result.exit_code == 0, result.output
    lines = manifest(tmp_path / "out")
    assert len(lines) == 4 and {line["target"] for line in lines} == {"label"}, lines


def test_the_cls_label_is_what_the_mask_explains(tmp_path):
    """chelsea labelled espresso: the label's gradient, not the top-1's, so its mask
    differs from the same shard's under ``--target pred``."""
    shard = write_wds_shard(tmp_path / "src" / "s-000000.tar",
                            [{"__key__": "cat", "jpg": jpeg("chelsea"), "cls": ESPRESSO}])
    masks = {}
    for target in ("label", "pred"):
        folder = tmp_path / f"masks-{target}"
        result = invoke("enhance", shard, tmp_path / f"out-{target}", *RUN, "--ratio", "1", "-q", "0.5",
                        "--target", target, "--save-masks", folder, "--quiet")
        assert result.exit_code == 0, result.output
        masks[target] = np.asarray(Image.open(next(folder.rglob("*.png")))) > 127
    assert (masks["label"] != masks["pred"]).mean() > 0.01


def test_a_json_field_is_the_label_with_model_label_key(tmp_path):
    samples = [{"__key__": f"s{n}", "jpg": jpeg(name), "json": json.dumps({"label": index, "caption": name}).encode()}
               for n, (name, index) in enumerate([("chelsea", TABBY), ("coffee", ESPRESSO)])]
    shard = write_wds_shard(tmp_path / "src" / "j-000000.tar", samples)
    result = invoke("enhance", shard, tmp_path / "out", *RUN, "--ratio", "1", "--target", "label",
                    "--set", "model.label_key=label", "--quiet")
    assert result.exit_code == 0, result.output
    assert {line["target"] for line in manifest(tmp_path / "out")} == {"label"}
    # Without the key, the JSON is a sidecar and --target label says what it needs.
    refused = invoke("enhance", shard, tmp_path / "out2", *RUN, "--target", "label")
    assert refused.exit_code == 2
    assert ".cls" in refused.stderr and "model.label_key" in refused.stderr
    assert "class folder" not in refused.stderr.split("(")[0]


def test_a_cls_outside_the_models_classes_is_named(tmp_path):
    shard = write_wds_shard(tmp_path / "src" / "b-000000.tar",
                            [{"__key__": "ok", "jpg": jpeg("coffee"), "cls": ESPRESSO},
                             {"__key__": "bad", "jpg": jpeg("chelsea"), "cls": 5000}])
    refused = invoke("enhance", shard, tmp_path / "out", *RUN, "--target", "label")
    assert refused.exit_code == 2
    assert "b-000000.tar/bad" in refused.stderr and "5000" in refused.stderr


def user_folder(root):
    """What a user's ImageNet-style folder holds besides photos: a labels.csv at the top,
    dotted names, two images of one stem."""
    return wnid_folder(root, {
        "labels.csv": b"file,label\n",
        f"{CAT_WNID}/photo.2019.jpg": jpeg("chelsea"),
        f"{CAT_WNID}/photo.2020.jpg": jpeg("chelsea", 70),
        f"{CAT_WNID}/photo.png": png("chelsea"),
        f"{ESPRESSO_WNID}/{ESPRESSO_WNID}_1.JPEG": jpeg("coffee"),
        f"{ESPRESSO_WNID}/notes.txt": b"bought in Rome",
    })


def test_folder_to_shards_a_standard_reader_trains_on(tmp_path):
    src, dst = user_folder(tmp_path / "train"), tmp_path / "shards"
    result = invoke("enhance", src, dst, *RUN, "--ratio", "0.5", "--output-format", "webdataset",
                    "--shard-size", "2", "--quiet")
    assert result.exit_code == 0, result.output
    urls = sorted(str(p) for p in dst.glob("*.tar"))
    rows = read_back(urls, "jpg;png", "cls", "__key__")
    assert len(rows) == 4  # every image a sample, nothing else in the stream
    assert sorted(int(cls) for _, cls, _ in rows) == [TABBY, TABBY, TABBY, ESPRESSO]
    assert all(isinstance(image, Image.Image) for image, _, _ in rows)
    keys = [key for _, _, key in rows]
    assert len(set(keys)) == 4 and not any("." in key.rsplit("/", 1)[-1] for key in keys)
    # The manifest maps each sample back to its source file.
    lines = {line["path"]: line for line in manifest(dst)}
    images = [rel for rel in lines if rel.endswith((".jpg", ".png", ".JPEG"))]
    assert sorted(lines[rel]["key"].split("/", 1)[1] for rel in images) == sorted(keys)
    # Non-image files sit beside the shards, byte for byte, and are said to be there.
    assert (dst / "labels.csv").read_bytes() == b"file,label\n"
    assert (dst / ESPRESSO_WNID / "notes.txt").read_bytes() == b"bought in Rome"
    assert "beside the shards" in lines["labels.csv"]["error"]


def test_folder_shards_cls_follow_the_model_when_folders_are_class_names(tmp_path):
    """Class folders named as the model's classes ('tabby', 'espresso') get the model's
    indices, not ImageFolder's 0..K-1."""
    src = wnid_folder(tmp_path / "train", {"tabby/a.jpg": jpeg("chelsea"), "espresso/b.jpg": jpeg("coffee")})
    dst = tmp_path / "shards"
    assert invoke("enhance", src, dst, *RUN, "--ratio", "0", "--output-format", "webdataset", "--shard-size", "8",
                  "--quiet").exit_code == 0
    rows = read_back([str(p) for p in dst.glob("*.tar")], "jpg", "cls")
    assert sorted(int(cls) for _, cls in rows) == [TABBY, ESPRESSO]


def test_gzipped_shards_in_give_gzipped_shards_out(tmp_path):
    src = tmp_path / "src"
    write_wds_shard(src / "train-000000.tar.gz", labelled_samples()[:2], compress=True)
    write_wds_shard(src / "train-000001.tgz", labelled_samples()[2:], compress=True)
    for source, extra in [(src / "train-000000.tar.gz", ()), (src, ()),
                          (src / "train-000001.tgz", ("--input-format", "webdataset"))]:
        dst = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        result = invoke("enhance", source, dst, *RUN, "--ratio", "1", *extra, "--quiet")
        assert result.exit_code == 0, result.output
        written = sorted(p.name for p in dst.iterdir() if not p.name.startswith("latinhib-"))
        expected = sorted(p.name for p in ([source] if source.is_file() else src.iterdir()))
        assert written == expected
        lines = manifest(dst)
        assert lines and {line["status"] for line in lines} == {"enhanced"}, lines
        for name in written:
            with open(dst / name, "rb") as handle:
                assert handle.read(2) == b"\x1f\x8b", name  # compressed the same way
            assert len(gz_members(dst / name)) == 4
        rows = read_back([str(dst / name) for name in written], "jpg", "cls")
        assert len(rows) == len(lines)


def test_the_pipe_gzip_route_works(tmp_path):
    shard = write_wds_shard(tmp_path / "src" / "train-000000.tar.gz", labelled_samples(), compress=True)
    dst = tmp_path / "out"
    result = invoke("enhance", f"pipe:gzip -dc {shard}", dst, *RUN, "--ratio", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert (dst / "train-000000.tar").is_file()  # the command's output is a plain tar
    assert len(read_back([str(dst / "train-000000.tar")], "jpg", "cls")) == 4


def test_a_failing_pipe_command_is_one_error_with_its_status_and_stderr(tmp_path):
    result = invoke("enhance", f"pipe:cat {tmp_path / 'nonexist.tar'}", tmp_path / "out", *RUN)
    assert result.exit_code == 1
    lines = manifest(tmp_path / "out")
    assert len(lines) == 1, lines
    assert "exited with status 1" in lines[0]["error"] and "No such file" in lines[0]["error"]
    assert len([line for line in said(result) if "nonexist" in line]) == 1, result.stderr


def test_evaluate_and_preview_accept_shards(tmp_path):
    shard = write_wds_shard(tmp_path / "src" / "val-000000.tar", labelled_samples())
    result = invoke("evaluate", shard, *RUN, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variants"]["original"]["n"] == 4
    sheet = tmp_path / "sheet.png"
    result = invoke("preview", shard, "-o", sheet, "--n", "2", *RUN)
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[0] > 0


def test_sample_keys_are_unique_and_stable():
    from latinhib.shard_keys import member_extension, sample_keys

    rels = ["cat/photo.2019.jpg", "cat/photo.2020.jpg", "cat/photo.png", "cat/photo_2019.jpg", "cat/photo.jpg",
            "n0/n0_1.JPEG"]
    keys = sample_keys(rels)
    assert keys == {"cat/photo.2019.jpg": "cat/photo_2019", "cat/photo.2020.jpg": "cat/photo_2020",
                    "cat/photo.png": "cat/photo", "cat/photo_2019.jpg": "cat/photo_2019_jpg",
                    "cat/photo.jpg": "cat/photo_jpg", "n0/n0_1.JPEG": "n0/n0_1"}
    assert sample_keys(rels) == keys  # the same listing, the same keys (a rerun finds its shards)
    assert [member_extension(r) for r in ("a.JPEG", "b.jpeg", "c.PNG", "d.tiff")] == ["jpg", "jpg", "png", "tif"]
