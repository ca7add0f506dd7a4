"""How a rerun reads an earlier manifest (issue 25: a rerun's cost per file): each line is
kept as its JSON text, its path and status read by a match instead of a parse, checked
here against ``json.loads`` of the same lines (the independent reference); and a rerun
with nothing left to do does not rewrite a manifest that is already compact."""
from __future__ import annotations

import json
import os

import pytest

from helpers import ARCH, invoke, make_image
from latinhib.data import Item
from latinhib.manifest import MANIFEST_NAME, Manifest, entry, pack, read_all, read_manifest, status_of, unpack

PATHS = [
    "n01440764/plain.JPEG",
    'quote"in/name.jpg',
    "back\\slash/x.png",
    "caf\u00e9/\u732b.jpg",  # written as \\u escapes (ensure_ascii)
    "raw/\udcff\udcfe.jpg",  # a non-UTF-8 name, held as surrogates
    "top.txt",
]


def written_lines(tmp_path, entries):
    path = tmp_path / MANIFEST_NAME
    manifest = Manifest(path)
    manifest.write(entries)
    manifest.close()
    return path


def test_paths_statuses_and_lines_match_json(tmp_path):
    entries = [entry(Item(p, p, None), i % 2 == 0, status, error=error)
               for i, (p, status, error) in enumerate(zip(
                   PATHS, ["copied", "enhanced", "failed", "unchanged", "skipped", "copied"],
                   [None, None, 'cannot decode: "status": "enhanced"', None, "left out", None]))]
    path = written_lines(tmp_path, entries)
    read = read_manifest(path)
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    assert list(read) == [json.loads(line)["path"] for line in lines] == PATHS
    # kept verbatim (packed): the compaction writes them back as they are
    assert [unpack(rel, value) for rel, value in read.items()] == lines
    assert [status_of(value) for value in read.values()] == [json.loads(line)["status"] for line in lines]
    assert read.compact == path


def test_lines_without_per_file_values_share_one_tail():
    lines = {rel: json.dumps(entry(Item(rel, rel, None), False, "copied", link="hardlink"), ensure_ascii=True)
             for rel in PATHS}
    packed = {rel: pack(rel, line) for rel, line in lines.items()}
    tails = {id(value) for value in packed.values()}
    assert len(tails) == 1 and next(iter(packed.values())).startswith(", ")
    assert {rel: unpack(rel, value) for rel, value in packed.items()} == lines
    enhanced = json.dumps(entry(Item("a.jpg", "a.jpg", None), True, "enhanced", kept_fraction=0.25), ensure_ascii=True)
    assert pack("a.jpg", enhanced) == enhanced  # its own numbers: kept whole
    assert pack("b.jpg", enhanced) == enhanced  # not this path's line: kept whole


def test_foreign_duplicate_and_torn_lines(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text(
        '{"status": "copied", "path": "a.jpg"}\n'  # keys in another order: parsed, normalised
        '{"path": "b.jpg", "selected": false, "status": "failed", "error": "x"}\n'
        "not json\n"
        '{"path": "b.jpg", "selected": false, "status": "copied", "error": null}\n'  # the later line wins
        '{"path": "c.jpg", "selected": false, "status": "cop',  # torn by a kill -9
        encoding="utf-8",
    )
    read = read_manifest(path)
    assert list(read) == ["a.jpg", "b.jpg"]
    assert json.loads(unpack("a.jpg", read["a.jpg"])) == {"status": "copied", "path": "a.jpg"}
    assert [status_of(read[p]) for p in read] == ["copied", "copied"]
    assert read.compact is None  # rewriting it changes it


def test_a_file_with_one_rewritten_line_is_not_compact(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"path":"a.jpg","status":"copied"}\n', encoding="utf-8")  # no spaces: not latinhib's own
    assert read_manifest(path).compact is None
    assert read_all(tmp_path).compact is None


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("rerun") / "src"
    rng = np.random.default_rng(0)
    for c in ("ants", "bees"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            make_image(rng, (40, 32)).save(root / c / f"{i}.jpg", quality=90)
    (root / "notes.txt").write_text("not an image")
    return root


def enhance(src, dst, checkpoint, *extra):
    return invoke("enhance", src, dst, "--arch", ARCH, "--checkpoint", checkpoint, "--device", "cpu",
                  "--quiet", "--ratio", "0.5", "--target", "pred", *extra)


def test_a_rerun_with_nothing_to_do_leaves_the_manifest_alone(tree, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert enhance(tree, dst, checkpoint).exit_code == 0
    manifest = dst / MANIFEST_NAME
    before = manifest.read_bytes()
    os.utime(manifest, ns=(1, 1))  # any rewrite would give it a new mtime
    assert enhance(tree, dst, checkpoint).exit_code == 0
    assert manifest.stat().st_mtime_ns == 1 and manifest.read_bytes() == before
    # one output gone: it is redone and the manifest rewritten, in listing order, one line per input
    (dst / "bees" / "1.jpg").unlink()
    assert enhance(tree, dst, checkpoint).exit_code == 0
    assert manifest.stat().st_mtime_ns != 1
    after = manifest.read_text().splitlines()
    assert [json.loads(line)["path"] for line in after] == [json.loads(line)["path"] for line in before.decode().splitlines()]


# -- --files-from's fast path (issue 25: listing 1.28M lines) -----------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from latinhib.data import _plain, list_files_from  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab./", min_size=1, max_size=10))
def test_a_plain_line_is_what_normpath_would_make_of_it(text):
    if _plain(text):
        assert os.path.normpath(os.path.join("/src", text)) == "/src/" + text


def test_files_from_lines_fast_and_slow_give_the_same_items(tmp_path):
    src = tmp_path / "src"
    (src / "a" / ".hidden").mkdir(parents=True)
    for rel in ("a/1.jpg", "a/.hidden/2.jpg", "top.jpg"):
        (src / rel).write_bytes(b"x")
    lines = ["a/1.jpg\n", "./a/1.jpg", "a//1.jpg", "a/.hidden/2.jpg", "a/../top.jpg", str(src / "top.jpg"), "top.jpg"]
    items = list_files_from(src, lines)
    assert [(item.rel, item.path, item.class_name) for item in items] == [
        ("a/1.jpg", str(src / "a" / "1.jpg"), "a"),
        ("a/.hidden/2.jpg", str(src / "a" / ".hidden" / "2.jpg"), "a"),
        ("top.jpg", str(src / "top.jpg"), None),
    ]


def test_a_files_from_subset_keeps_the_other_entries(tree, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    assert enhance(tree, dst, checkpoint).exit_code == 0
    manifest = dst / MANIFEST_NAME
    everything = [json.loads(line)["path"] for line in manifest.read_text().splitlines()]
    (dst / "bees" / "2.jpg").unlink()
    listed = tmp_path / "list.txt"
    listed.write_text("bees/2.jpg\nbees/0.jpg\n")
    assert enhance(tree, dst, checkpoint, "--files-from", listed).exit_code == 0
    after = [json.loads(line)["path"] for line in manifest.read_text().splitlines()]
    # this run's listing first, then every entry it did not list, none lost
    assert after[:2] == ["bees/2.jpg", "bees/0.jpg"] and sorted(after) == sorted(everything)
    assert (dst / "bees" / "2.jpg").exists()
