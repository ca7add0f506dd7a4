"""The tar-shard format module (latinhib/shards.py): naming shards, listing and grouping
members, hostile shards, and writing an output shard member for member."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from latinhib import shards
from latinhib.shards import Member, Sample, Shard, ShardError


def make_tar(path: Path, members, fmt=tarfile.PAX_FORMAT) -> Path:
    """``members``: (name, bytes) for files, (name, None) for a folder entry."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def members_of(path: Path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


BASIC = [("000.jpg", b"J" * 700), ("000.cls", b"3"), ("000.json", b'{"a": 1}'),
         ("001.cls", b"4"), ("001.png", b"P" * 10), ("001.jpg", b"j" * 20),
         ("002.txt", b"no image here")]


def test_samples_grouped_by_key_with_the_image_member_chosen_by_extension_order(tmp_path):
    index = shards.index_shard(Shard(str(make_tar(tmp_path / "a.tar", BASIC)), "a.tar"))
    assert index.problems == []
    samples = index.samples
    assert [s.rel for s in samples] == ["a.tar/000", "a.tar/001", "a.tar/002"]
    assert [m.name for m in samples[0].members] == ["000.jpg", "000.cls", "000.json"]
    assert samples[0].image_member.name == "000.jpg"
    # jpg comes before png in the preference order, whatever the member order
    assert samples[1].image_member.name == "001.jpg"
    assert samples[2].image is None
    assert shards.read_member(index.path, samples[1].members[1]) == b"P" * 10


def test_keys_split_at_the_first_dot_of_the_base_name_as_webdataset_does():
    assert shards.split_name("a/b.seg.png") == ("a/b", "seg.png")
    assert shards.split_name("x.y/img.jpg") == ("x.y/img", "jpg")
    assert shards.split_name("plain") == ("plain", "")


def test_a_key_that_comes_back_later_is_its_own_sample_with_an_error(tmp_path):
    tar = make_tar(tmp_path / "d.tar", [("k.jpg", b"1"), ("m.jpg", b"2"), ("k.txt", b"3"), ("dir", None)])
    entries = shards.index_shard(Shard(str(tar), "d.tar")).entries
    assert [getattr(e, "key", None) for e in entries[:2]] == ["k", "m"]
    again = entries[2]
    assert isinstance(again, Sample) and again.error and "appears again" in again.error
    assert again.rel != entries[0].rel  # manifest paths stay unique
    assert isinstance(entries[3], Member) and not entries[3].regular


def test_output_shard_without_replacements_is_the_input_byte_for_byte(tmp_path):
    tar = make_tar(tmp_path / "a.tar", BASIC + [("sub", None)])
    index = shards.index_shard(Shard(str(tar), "a.tar"))
    out = io.BytesIO()
    shards.write_shard(out, _pieces(index, lambda m: None))
    assert out.getvalue() == tar.read_bytes()


def test_a_replaced_member_keeps_its_place_and_name_and_the_rest_is_unchanged(tmp_path):
    tar = make_tar(tmp_path / "a.tar", BASIC)
    index = shards.index_shard(Shard(str(tar), "a.tar"))
    out_path = tmp_path / "out.tar"
    with open(out_path, "wb") as out:
        shards.write_shard(out, _pieces(index, lambda m: b"NEW" * 300 if m.name == "001.jpg" else None))
    got = members_of(out_path)
    expected = [(n, b"NEW" * 300 if n == "001.jpg" else d) for n, d in BASIC]
    assert got == expected
    with tarfile.open(out_path) as t:
        assert t.getmember("001.jpg").mtime == 1_700_000_000


def _pieces(index, replace):
    for entry in index.entries:
        if isinstance(entry, Sample):
            if entry.complete:
                yield from shards.sample_pieces(index.path, entry, replace)
        else:
            yield (index.path, entry.offset, entry.end - entry.offset)


@pytest.mark.parametrize("cut", ["data", "padding", "boundary"])
def test_a_truncated_shard_keeps_what_came_before_the_cut_and_says_where(tmp_path, cut):
    tar = make_tar(tmp_path / "t.tar", [("a.jpg", b"A" * 1000), ("b.jpg", b"B" * 1000), ("c.jpg", b"C" * 100)])
    members = shards.index_shard(Shard(str(tar), "t.tar")).samples
    b = members[1].members[0]
    length = {"data": b.data_offset + 500, "padding": b.data_offset + 1000 + 10, "boundary": b.end}[cut]
    raw = tar.read_bytes()[:length]
    tar.write_bytes(raw)
    index = shards.index_shard(Shard(str(tar), "t.tar"))
    assert len(index.problems) == 1
    if cut == "data":  # b is lost whole: the problem is b's
        assert [s.key for s in index.samples] == ["a"]
        assert index.problems[0][0] == "t.tar/b" and "'b.jpg' has 500 of 1000 bytes" in index.problems[0][1]
    else:  # b is whole, the end of the shard is missing: the problem is the shard's
        assert [s.key for s in index.samples] == ["a", "b"]
        assert index.problems[0][0] == "t.tar" and "truncated" in index.problems[0][1]
    # Whatever was listed can be written out whole.
    out = io.BytesIO()
    shards.write_shard(out, _pieces(index, lambda m: None))
    out.seek(0)
    with tarfile.open(fileobj=out) as t:
        assert [m.name for m in t.getmembers()] == [s.key + ".jpg" for s in index.samples]


def test_a_cut_inside_a_sample_marks_it_incomplete_and_leaves_it_out_of_the_output(tmp_path):
    tar = make_tar(tmp_path / "t.tar", [("a.jpg", b"A" * 10), ("b.jpg", b"B" * 10), ("b.json", b"{}" * 400)])
    json = shards.index_shard(Shard(str(tar), "t.tar")).samples[1].members[1]
    tar.write_bytes(tar.read_bytes()[:json.data_offset + 100])
    index = shards.index_shard(Shard(str(tar), "t.tar"))
    assert index.problems == []  # the sample's own error says it
    b = index.samples[1]
    assert not b.complete and "'b.json' has 100 of 800 bytes" in b.error
    assert [m.name for m in b.members] == ["b.jpg"]
    out = io.BytesIO()
    shards.write_shard(out, _pieces(index, lambda m: None))
    out.seek(0)
    with tarfile.open(fileobj=out) as t:
        assert t.getnames() == ["a.jpg"]


def test_a_corrupt_header_in_the_middle_is_reported_not_silently_taken_as_the_end(tmp_path):
    tar = make_tar(tmp_path / "c.tar", [("a.jpg", b"A" * 10), ("b.jpg", b"B" * 10)])
    first = shards.index_shard(Shard(str(tar), "c.tar")).samples[0].members[0]
    raw = bytearray(tar.read_bytes())
    raw[first.end:first.end + 512] = b"garbage!" * 64
    tar.write_bytes(bytes(raw))
    index = shards.index_shard(Shard(str(tar), "c.tar"))
    assert [s.key for s in index.samples] == ["a"]
    assert len(index.problems) == 1 and f"corrupt header at byte {first.end}" in index.problems[0][1]


@pytest.mark.parametrize("content, cause", [(b"", "empty file"), (b"\x89PNG not a tar at all" * 40, "not a tar file")])
def test_a_file_that_is_no_tar_is_one_problem(tmp_path, content, cause):
    path = tmp_path / "x.tar"
    path.write_bytes(content)
    index = shards.index_shard(Shard(str(path), "x.tar"))
    assert index.entries == [] and len(index.problems) == 1
    assert index.problems[0][0] == "x.tar" and cause in index.problems[0][1]


def test_expand_a_brace_pattern_a_folder_a_file_and_pipes(tmp_path):
    for i in range(3):
        make_tar(tmp_path / f"train-{i:06d}.tar", BASIC)
    (tmp_path / "notes.txt").write_text("x")
    pattern = str(tmp_path / "train-{000000..000002}.tar")
    assert [s.name for s in shards.expand(pattern)] == [f"train-{i:06d}.tar" for i in range(3)]
    assert [s.name for s in shards.expand(str(tmp_path))] == [f"train-{i:06d}.tar" for i in range(3)]
    assert shards.expand(str(tmp_path / "train-000001.tar")) == [Shard(str(tmp_path / "train-000001.tar"),
                                                                      "train-000001.tar")]
    piped = shards.expand(f"pipe:cat {tmp_path}/train-{{000000..000001}}.tar")
    assert [(s.url, s.name) for s in piped] == [(f"pipe:cat {tmp_path}/train-00000{i}.tar", f"train-00000{i}.tar")
                                                for i in range(2)]
    assert shards.expand("pipe:curl -s 'https://host/b/x-1.tar?sig=abc'")[0].name == "x-1.tar"


def test_expand_refuses_what_it_cannot_name_or_find(tmp_path):
    make_tar(tmp_path / "a-0.tar", BASIC)
    with pytest.raises(ShardError, match=r"no such shard .*a-1\.tar"):
        shards.expand(str(tmp_path / "a-{0..2}.tar"))
    with pytest.raises(ShardError, match="no word ending in .tar"):
        shards.expand("pipe:generate-data --stdout")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no .tar shards"):
        shards.expand(str(tmp_path / "empty"))
    with pytest.raises(ShardError, match="two shards named 'a-0.tar'"):
        shards.expand(f"pipe:cat {tmp_path}/{{x,y}}/a-0.tar")


def test_looks_like_shards(tmp_path):
    folder = tmp_path / "f"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.jpg").write_bytes(b"x")
    assert not shards.looks_like_shards(str(folder))
    make_tar(tmp_path / "s" / "a.tar" if (tmp_path / "s").mkdir() is None else None, BASIC)
    assert shards.looks_like_shards(str(tmp_path / "s"))
    assert shards.looks_like_shards("pipe:cat x.tar")
    assert shards.looks_like_shards("data/train-{0..9}.tar")


def test_a_pipe_shard_is_spooled_and_a_failing_command_is_one_problem(tmp_path):
    tar = make_tar(tmp_path / "a.tar", BASIC)
    index = shards.index_shard(Shard(f"pipe:cat {tar}", "a.tar"), spool=tmp_path / "spool")
    assert index.problems == [] and [s.key for s in index.samples] == ["000", "001", "002"]
    assert shards.read_member(index.path, index.samples[0].members[0]) == b"J" * 700
    # A command that fails half way: what it sent is kept, and its status is the problem.
    half = tmp_path / "half.tar"
    half.write_bytes(tar.read_bytes()[:1536])
    index = shards.index_shard(Shard(f"pipe:cat {half}; exit 3", "half.tar"), spool=tmp_path / "spool2")
    assert [s.key for s in index.samples] == ["000"]
    assert [rel for rel, _ in index.problems] == ["half.tar"]  # the status explains the missing end: said once
    assert "exited with status 3" in index.problems[0][1]
