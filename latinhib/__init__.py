"""latinhib: lateral-inhibition data enhancement.

A pretrained CNN's loss gradients say which parts of an image matter; lateral inhibition
(a Mexican-hat filter) sharpens that map, and the unimportant regions of a fraction of the
images are Gaussian-blurred. See README.md.
"""
from .api import Importance, InhibitionResult, LateralInhibition
from .config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "EvaluationResult", "Importance", "InhibitionResult", "LateralInhibition",
           "evaluate", "load_config", "__version__"]

#: Names imported on first use (``latinhib.evaluate`` pulls in the folder pipeline).
_LAZY = {"evaluate": "evaluation", "EvaluationResult": "evaluation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'latinhib' has no attribute {name!r}")
