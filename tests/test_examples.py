"""examples/online_training.py runs as a user runs it (its smallest setting, CPU): the loop
with latinhib.OnlineInhibition trains and its masks enhanced part of the batches."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "online_training.py"


def test_online_training_example_runs_and_enhances(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "3", "--warmup", "1", "--train", "128", "--batch-size", "16",
         "--data", str(tmp_path)],  # no Fashion-MNIST there: the synthetic stand-in
        capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("synthetic") and "3 steps (1 warm-up)" in line, line
    kept = float(re.search(r"kept share of the enhanced images ([0-9.]+)", line).group(1))
    assert 0.0 < kept < 1.0, line  # the model's own masks blurred part of each chosen image
