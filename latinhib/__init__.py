"""latinhib: lateral-inhibition data enhancement.

A pretrained CNN's loss gradients say which parts of an image matter; lateral inhibition
(a Mexican-hat filter) sharpens that map, and the unimportant regions of a fraction of the
images are Gaussian-blurred. See README.md.
"""
__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "EvaluationResult", "Importance", "InhibitionResult", "LateralInhibition",
           "OnlineInhibition", "evaluate", "load_config", "__version__"]

#: Public names -> the module that defines them. Imported on first use (PEP 562), so that
#: ``latinhib --version`` and ``--help`` never import torch (~1 s) and
#: ``from latinhib import LateralInhibition`` still works.
_LAZY = {
    "Importance": "api",
    "InhibitionResult": "api",
    "LateralInhibition": "api",
    "OnlineInhibition": "online",
    "Config": "config",
    "ConfigError": "config",
    "load_config": "config",
    "evaluate": "evaluation",
    "EvaluationResult": "evaluation_statistics",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'latinhib' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
