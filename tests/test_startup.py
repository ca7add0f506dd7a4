"""Start-up (issue 16): ``latinhib --version`` and ``--help`` never import torch (a CLI in
shell pipelines is started often; torch alone takes ~1 s), while the package's public
names still import as before."""
from __future__ import annotations

import subprocess
import sys

import pytest


def imported_modules(*args: str) -> list:
    """The modules ``python -X importtime -m latinhib ARGS`` imported, in order."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "latinhib", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["enhance", "--help"], ["merge", "--help"],
                                  ["preview", "--help"], ["config", "--help"]])
def test_version_and_help_do_not_import_torch(args):
    modules = imported_modules(*args)
    assert "latinhib.cli" in modules  # the measurement sees our imports at all
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "torchvision", "numpy", "PIL")]
    assert heavy == [], heavy[:5]


def test_a_job_still_imports_what_it_needs_and_the_api_names_resolve():
    modules = imported_modules("config")  # builds a config: no torch needed either
    assert "torch" not in modules
    code = ("import sys, latinhib; assert 'torch' not in sys.modules; "
            "from latinhib import LateralInhibition, Config, ConfigError, Importance, InhibitionResult, load_config; "
            "assert 'torch' in sys.modules and LateralInhibition.__module__ == 'latinhib.api'; "
            "assert set(latinhib.__all__) <= set(dir(latinhib))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import latinhib; latinhib.nope"], capture_output=True, text=True)
    assert "AttributeError: module 'latinhib' has no attribute 'nope'" in proc.stderr
