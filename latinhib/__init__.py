"""latinhib: lateral-inhibition data enhancement.

A pretrained CNN's loss gradients say which parts of an image matter; lateral inhibition
(a Mexican-hat filter) sharpens that map, and the unimportant regions of a fraction of the
images are Gaussian-blurred. See README.md.
"""
from .api import Importance, InhibitionResult, LateralInhibition
from .config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Importance", "InhibitionResult", "LateralInhibition", "load_config", "__version__"]
