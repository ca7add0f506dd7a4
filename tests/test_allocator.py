"""``latinhib enhance`` keeps freed large blocks for reuse (allocator.py): a model pass
then reuses the last batch's pages instead of faulting in fresh ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from latinhib import allocator

PROBE = """
import json, resource, sys
import torch
from latinhib.allocator import keep_large_blocks
applied = keep_large_blocks() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):  # like a batch's activations: a large block, small ones, the large one freed
    block = torch.empty(40 << 20, dtype=torch.uint8).fill_(1)
    small = torch.empty(1000)
    del block
print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


def _faults(mode: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
    applied, tuned = _faults("tuned")
    if not applied:
        pytest.skip("not glibc on Linux")
    _, default = _faults("default")
    # Each 40 MiB block is mapped afresh and faulted in again: 10240 faults of 4 KiB pages
    # per block here, 20 where transparent huge pages are always on.
    assert default >= 30 * 20
    assert tuned < default / 4


def test_the_users_own_malloc_settings_stand(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.keep_large_blocks() is False


def test_enhance_applies_it_before_the_job(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import latinhib.pipeline as pipeline
    from latinhib.cli import main
    from latinhib.plan import JobError

    calls = []
    monkeypatch.setattr(allocator, "keep_large_blocks", lambda: calls.append("tuned") or True)

    def fake_run(*args, **kwargs):
        calls.append("run")
        raise JobError("stop here")

    monkeypatch.setattr(pipeline, "run", fake_run)
    src = tmp_path / "src"
    src.mkdir()
    result = CliRunner().invoke(main, ["enhance", str(src), str(tmp_path / "dst"), "--arch", "resnet18"])
    assert result.exit_code != 0 and "stop here" in result.output
    assert calls == ["tuned", "run"]
