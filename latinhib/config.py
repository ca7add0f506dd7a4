"""Configuration: frozen dataclasses, loaded from YAML and ``section.key=value`` overrides.

Defaults < YAML file < command-line overrides. Every value is validated here, with a
message that names the key, the bad value and what is allowed; unknown keys are an error
with a "did you mean" suggestion. Config is data: ``yaml.safe_load`` only.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import yaml

from .choices import FILTERS, IMPORTANCE_KINDS, OUTLINES, TARGETS

__all__ = [
    "Config",
    "ConfigError",
    "DEVICES",
    "load_config",
    "parse_override",
    "to_yaml",
]

DEVICES_HELP = "auto, cpu, cuda or cuda:N"
DEVICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
#: output.unselected (links.MODES) and runtime.codec (codec.CODECS), here without their modules' imports.
UNSELECTED_MODES = ("copy", "hardlink", "reflink", "symlink")
CODECS = ("auto", "pillow", "torchvision")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    # torchvision architecture name (resnet50, mobilenet_v2, ...), "timm:NAME" for a timm
    # model (timm:convnext_tiny, timm:resnet50.a1_in1k; the timm extra), or "package.module:Class"
    # for your own network. MobileNetV2: light enough for a laptop CPU, and its ImageNet
    # weights can be had offline (README.md#set-up-two-commands).
    arch: str = "mobilenet_v2"
    # torchvision weights name, e.g. IMAGENET1K_V1 or ResNet50_Weights.IMAGENET1K_V2; for
    # timm:NAME, pretrained (or this default) = timm's weights from the local Hugging Face
    # cache. Used when no checkpoint is given. null = random init (only useful in tests).
    weights: Optional[str] = "IMAGENET1K_V1"
    # a state_dict (.pth/.pt, also {"state_dict": ...} / {"model": ...}, timm's training
    # checkpoints with their state_dict_ema preferred), a .safetensors file or a TorchScript
    # file, told apart by content; overrides `weights`.
    checkpoint: Optional[str] = None
    # the checkpoint file's sha256 and size in bytes. A job records both in
    # DST/latinhib-config.yaml (so a dataset can be traced to the file that made it); set
    # in a config, a checkpoint that does not match is refused. null = not checked.
    checkpoint_sha256: Optional[str] = None
    checkpoint_bytes: Optional[int] = None
    # load a fully pickled model (runs code from the file): only for files you trust.
    trust_checkpoint: bool = False
    # layers whose output gradients are used, by module name; null = the last block at
    # strides 8, 16 and 32 that does not feed global pooling (see importance.default_layers).
    layers: Optional[Tuple[str, ...]] = None
    # with layers null: where the finest default map is shorter than this on a side (small
    # inputs), the deepest block with a map at least this large joins; 0 = off (the default:
    # no downstream gain on validation, issue 26). 16 picks layer2, layer3 at 64 px.
    min_map_side: int = 0
    # loss target: auto (label when the folder's classes map onto the model's, else pred),
    # label, pred, or entropy.
    target: str = "auto"
    # model input size (int or [h, w]); null = from the weights' metadata, else 224.
    input_size: Optional[Tuple[int, int]] = None
    # input normalisation; null = from the weights' metadata, else ImageNet's.
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    # class names in output order (for target: label and the manifest); null = from the
    # weights' metadata, else "0".."K-1".
    classes: Optional[Tuple[str, ...]] = None
    # WebDataset shards: the field of each sample's KEY.json that holds its label (a class
    # index or name), for target auto/label and evaluate; null = the sample's KEY.cls
    # member, as webdataset's writers and the ImageNet shard converters write labels.
    label_key: Optional[str] = None
    # keyword arguments for the architecture's constructor (num_classes is read from the
    # checkpoint when not given).
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InhibitionConfig:
    # q: the fraction of each image that is inhibited (blurred); the q-quantile of the
    # importance map is the threshold. auto: per image by Otsu's method on its own map,
    # clipped to [0.3, 0.95] (inhibition.AUTO_QUANTILE_BOUNDS) and written to the manifest:
    # one folder mixes objects of 5% and 70% of the frame, and on the real-model benchmark
    # (docs/RESULTS.md#summary) auto beat any single q. A number = the background's known share.
    quantile: Union[float, str] = "auto"
    # filter applied to each layer's importance map: log (Mexican hat, as in the paper),
    # gaussian (same sigma, no inhibitory surround) or none. log gave the best masks at
    # equal settings, though not better downstream accuracy than a Gaussian
    # (docs/RESULTS.md#downstream-does-it-help-a-classifier-ignore-backgrounds).
    filter: str = "log"
    # sigma and kernel size (k) of the filter, in pixels of a stride-16 feature map (14x14
    # at a 224 input); layers at other strides scale both by 16/stride, so the filter
    # covers the same part of the image at every layer. Best masks came at sigma ~ 0.6 x
    # the object's radius in those pixels: 2 suits objects that fill a third to a half of
    # the frame; well below 1 the filter sharpens gradient noise and masks collapse.
    sigma: float = 2.0
    # k must hold the inhibitory surround (zero crossing at 1.41 sigma, most of its mass
    # within 3 sigma): k >= 2 * ceil(2.7 sigma) + 1; a kernel that cuts it short costs mask
    # IoU (docs/RESULTS.md#downstream-does-it-help-a-classifier-ignore-backgrounds). 13 for sigma 2.
    kernel_size: int = 13
    # r: the fraction of images that is enhanced; the others are copied byte for byte.
    # 0.75 beat 0.5 and 1.0 on the benchmark's validation split
    # (docs/RESULTS.md#downstream-does-it-help-a-classifier-ignore-backgrounds).
    ratio: float = 0.75
    # p of the p-norm over channels (IoM); 2 as in most saliency work.
    norm: float = 2.0
    # seed of the per-image selection hash: same seed, same selected files.
    seed: int = 0
    # scale-selected Mexican hat: stride-16 sigmas; per image and layer the one whose
    # scale-normalised response peaks highest is used; null = the fixed `sigma` (the paper's).
    scales: Optional[Tuple[float, ...]] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    # scale normalisation exponent of that selection (Lindeberg's gamma; 2 = blob theory,
    # larger prefers larger sigmas).
    scale_gamma: float = 2.65
    # quantile auto: Otsu's method runs on each map raised to this power (1 = plain Otsu;
    # 2 keeps the halo of an upsampled map out).
    auto_power: float = 2.0
    # what the kept region's outline follows: response (the filtered map) or importance
    # (the unfiltered map times the response: the filter says where, the map the shape).
    outline: str = "importance"
    # what the p-norm is taken of: gradient (the paper's) or gradient_x_activation.
    importance: str = "gradient_x_activation"
    # average each map with that of the mirrored image (a second pass in the same batch).
    flip: bool = False


@dataclass(frozen=True)
class BlurConfig:
    # blur sigma in pixels of the model's input (224): each image is blurred with
    # sigma * (its short side / the input's short side), so the blur looks the same to a
    # model whatever the photo's resolution. 4 removes texture but keeps coarse layout.
    sigma: float = 4.0
    # soft mask edge, in the same units; 0 = a hard edge.
    feather: float = 0.0


@dataclass(frozen=True)
class OutputConfig:
    # JPEG quality of enhanced JPEGs (1-100); 95 keeps artefacts below the blur's effect.
    jpeg_quality: int = 95
    # folder for the masks (one-channel PNG per enhanced image); null = none.
    save_masks: Optional[str] = None
    # folder for importance heat maps (PNG per enhanced image); null = none.
    save_heatmaps: Optional[str] = None
    # redo outputs that already exist.
    overwrite: bool = False
    # leave out files latinhib does not enhance (labels.csv, README.txt, .gif, ...). By
    # default they are copied byte for byte, so DST is a complete copy of the dataset that
    # the next step of a pipeline can use in place of SRC.
    images_only: bool = False
    # what a file that is not enhanced becomes in DST (folder output): copy (its bytes),
    # hardlink (a second name of SRC's file: editing it in place edits SRC), reflink (a
    # copy-on-write clone, where the filesystem has them), symlink (a relative link to SRC).
    # A link that cannot be made (another filesystem) is a copy, said once; the manifest's
    # `link` says which. See docs/linked-copies.md.
    unselected: str = "copy"


@dataclass(frozen=True)
class RuntimeConfig:
    # auto = cuda when available, else cpu; or cpu, cuda, cuda:N.
    device: str = "auto"
    # images per model pass; 16 fits a CPU's cache (8-16 beat 32 per image,
    # docs/SPEED.md#the-benchmark), raise it to 64-256 on a GPU.
    batch_size: int = 16
    # decoding workers: processes on CUDA, threads on a CPU whose model streams have several
    # threads each; 0 = decode in the main thread. Unused where each core runs its own
    # one-thread stream (it decodes its own images).
    workers: int = 2
    # mixed precision for forward/backward: auto (bf16 on CUDA and on CPUs with AMX, else
    # off: runtime.amp_dtype), off, bf16, fp16.
    amp: str = "auto"
    # threads for torch on CPU (shared by the model streams); 0 = torch's default.
    threads: int = 0
    # JPEG decoder/encoder: pillow, torchvision (torchvision.io: libjpeg-turbo on a CPU,
    # nvJPEG on CUDA, no copies through a PIL image), or auto (torchvision where available:
    # measured faster on this project's CPU, scripts/bench/ceiling.py). Other formats, and
    # CMYK or EXIF-rotated JPEGs, always go through Pillow.
    codec: str = "auto"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    inhibition: InhibitionConfig = field(default_factory=InhibitionConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return {
            section.name: {
                f.name: _plain(getattr(getattr(self, section.name), f.name))
                for f in dataclasses.fields(getattr(self, section.name))
            }
            for section in dataclasses.fields(self)
        }


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")


def _number(key: str, value: Any, low: float, high: float, *, integer: bool = False,
            low_open: bool = False, allowed: str = "") -> Union[int, float]:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(key, value, allowed or f"{kind} in [{low}, {high}]")
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        raise _fail(key, value, allowed or f"{kind} in {'(' if low_open else '['}{low}, {high}]")
    return int(value) if integer else float(value)


def _optional_str(key: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise _fail(key, value, "a string or null")
    return str(value)


def _size(key: str, value: Any) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 4096 for v in value)):
        return (int(value[0]), int(value[1]))
    raise _fail(key, value, "null, an integer or [height, width], each in [16, 4096]")


def _floats(key: str, value: Any) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return tuple(float(v) for v in value)
    raise _fail(key, value, "null or a list of numbers, one per input channel")


def _strings(key: str, value: Any) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int)) for v in value):
        return tuple(str(v) for v in value)
    raise _fail(key, value, "null, a list of names, or a comma-separated string")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(key, value, "true or false")


def _choice(key: str, value: Any, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {', '.join(choices)}"
                          + (_suggest(str(value), choices) if isinstance(value, str) else ""))
    return value


def _device(key: str, value: Any) -> str:
    if isinstance(value, str):
        if value in DEVICES:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
    raise _fail(key, value, DEVICES_HELP)


def _validate(section: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """Check and normalise one section's values; returns the converted dict."""
    out = dict(values)
    k = lambda name: f"{section}.{name}"  # noqa: E731
    if section == "model":
        if not isinstance(out["arch"], str) or not out["arch"]:
            raise _fail(k("arch"), out["arch"], "a torchvision architecture name, 'timm:NAME' or 'package.module:Class'")
        out["weights"] = _optional_str(k("weights"), out["weights"])
        out["checkpoint"] = _optional_str(k("checkpoint"), out["checkpoint"])
        out["checkpoint_sha256"] = _optional_str(k("checkpoint_sha256"), out["checkpoint_sha256"])
        if out["checkpoint_sha256"] is not None:
            digest = out["checkpoint_sha256"].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise _fail(k("checkpoint_sha256"), out["checkpoint_sha256"], "null or 64 hexadecimal digits")
            out["checkpoint_sha256"] = digest
        if out["checkpoint_bytes"] is not None:
            out["checkpoint_bytes"] = _number(k("checkpoint_bytes"), out["checkpoint_bytes"], 0, 2**63 - 1,
                                              integer=True, allowed="null or a size in bytes")
        out["trust_checkpoint"] = _bool(k("trust_checkpoint"), out["trust_checkpoint"])
        out["layers"] = _strings(k("layers"), out["layers"])
        out["min_map_side"] = _number(k("min_map_side"), out["min_map_side"], 0, 4096, integer=True,
                                      allowed="an integer in [0, 4096] (0 = off)")
        out["target"] = _choice(k("target"), out["target"], TARGETS)
        out["input_size"] = _size(k("input_size"), out["input_size"])
        out["mean"] = _floats(k("mean"), out["mean"])
        out["std"] = _floats(k("std"), out["std"])
        if out["std"] is not None and any(v <= 0 for v in out["std"]):
            raise _fail(k("std"), list(out["std"]), "positive numbers")
        out["classes"] = _strings(k("classes"), out["classes"])
        out["label_key"] = _optional_str(k("label_key"), out["label_key"])
        if not isinstance(out["kwargs"], Mapping):
            raise _fail(k("kwargs"), out["kwargs"], "a mapping of keyword arguments")
        out["kwargs"] = dict(out["kwargs"])
    elif section == "inhibition":
        if out["quantile"] != "auto":
            out["quantile"] = _number(k("quantile"), out["quantile"], 0.0, 1.0,
                                      allowed="a number in [0.0, 1.0] or auto")
        out["filter"] = _choice(k("filter"), out["filter"], FILTERS)
        out["sigma"] = _number(k("sigma"), out["sigma"], 0.0, 1000.0, low_open=True,
                               allowed="a number > 0")
        out["kernel_size"] = _number(k("kernel_size"), out["kernel_size"], 3, 999, integer=True,
                                     allowed="an odd integer >= 3")
        if out["kernel_size"] % 2 == 0:
            raise _fail(k("kernel_size"), out["kernel_size"], "an odd integer >= 3")
        out["ratio"] = _number(k("ratio"), out["ratio"], 0.0, 1.0)
        out["norm"] = _number(k("norm"), out["norm"], 1.0, math.inf, allowed="a number >= 1 (p of the p-norm)") \
            if out["norm"] != math.inf else math.inf
        out["seed"] = _number(k("seed"), out["seed"], -2**63, 2**63 - 1, integer=True, allowed="an integer")
        if out["scales"] is not None:
            scales = out["scales"]
            if (not isinstance(scales, (list, tuple)) or not scales
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100 for v in scales)):
                raise _fail(k("scales"), scales, "null or a list of sigmas, each in (0, 100]")
            out["scales"] = tuple(float(v) for v in scales)
        out["scale_gamma"] = _number(k("scale_gamma"), out["scale_gamma"], 0.0, 10.0)
        out["auto_power"] = _number(k("auto_power"), out["auto_power"], 0.0, 10.0, low_open=True,
                                    allowed="a number in (0, 10]")
        out["importance"] = _choice(k("importance"), out["importance"], IMPORTANCE_KINDS)
        out["outline"] = _choice(k("outline"), out["outline"], OUTLINES)
        out["flip"] = _bool(k("flip"), out["flip"])
    elif section == "blur":
        out["sigma"] = _number(k("sigma"), out["sigma"], 0.0, 1000.0, low_open=True, allowed="a number > 0")
        out["feather"] = _number(k("feather"), out["feather"], 0.0, 1000.0, allowed="a number >= 0")
    elif section == "output":
        out["jpeg_quality"] = _number(k("jpeg_quality"), out["jpeg_quality"], 1, 100, integer=True)
        out["save_masks"] = _optional_str(k("save_masks"), out["save_masks"])
        out["save_heatmaps"] = _optional_str(k("save_heatmaps"), out["save_heatmaps"])
        out["overwrite"] = _bool(k("overwrite"), out["overwrite"])
        out["images_only"] = _bool(k("images_only"), out["images_only"])
        out["unselected"] = _choice(k("unselected"), out["unselected"], UNSELECTED_MODES)
    elif section == "runtime":
        out["device"] = _device(k("device"), out["device"])
        out["batch_size"] = _number(k("batch_size"), out["batch_size"], 1, 65536, integer=True)
        out["workers"] = _number(k("workers"), out["workers"], 0, 256, integer=True)
        if out["amp"] is False:  # YAML reads a bare `off` (--set runtime.amp=off) as false
            out["amp"] = "off"
        out["amp"] = _choice(k("amp"), out["amp"], AMP_CHOICES)
        out["threads"] = _number(k("threads"), out["threads"], 0, 1024, integer=True)
        out["codec"] = _choice(k("codec"), out["codec"], CODECS)
    return out


def parse_override(text: str) -> Tuple[str, Any]:
    """``"section.key=value"`` -> (key, value); the value is read as YAML (``0.3``,
    ``[1, 2]``, ``null``, ``true``), falling back to the plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _merge(data: Dict[str, Dict[str, Any]], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{origin}{key!r}: expected a key of the form section.key "
                          f"(sections: {', '.join(SECTIONS)})")
    section, name = parts
    if section not in SECTIONS:
        raise ConfigError(f"{origin}unknown section {section!r}{_suggest(section, SECTIONS)}; "
                          f"sections: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section]())]
    if name not in names:
        raise ConfigError(f"{origin}unknown key '{section}.{name}'{_suggest(name, names)}; "
                          f"keys of {section}: {', '.join(names)}")
    data.setdefault(section, {})[name] = value


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a config file; syntax errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping of sections, got {type(data).__name__}")
    return data


def fixed_filter(data: Dict[str, Dict[str, Any]], given: Iterable[str]) -> None:
    """A sigma or kernel size that one source (the config file, or the overrides) gives
    without ``scales`` asks for that one filter: scales becomes null, whatever an earlier
    source said. Otherwise the default scale selection would ignore ``--sigma 1`` silently
    (it uses ``sigma`` and ``kernel_size`` only when ``scales`` is null). ``given``: the
    inhibition keys the source sets."""
    given = set(given)
    if given & {"sigma", "kernel_size"} and "scales" not in given:
        data.setdefault("inhibition", {})["scales"] = None


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[Union[Mapping[str, Any], List[Tuple[str, Any]]]] = None,
) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` ({"section.key": value}).

    Raises :class:`ConfigError` naming the key, the value and what is allowed.
    """
    data: Dict[str, Dict[str, Any]] = {}
    if path is not None:
        raw = read_yaml(path)
        for section, values in raw.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                if section in SECTIONS:
                    raise ConfigError(f"config file {str(path)!r}: section {section!r} should be a mapping")
                _merge(data, f"{section}.?", None, f"config file {str(path)!r}: ")
            for name, value in values.items():
                _merge(data, f"{section}.{name}", value, f"config file {str(path)!r}: ")
        fixed_filter(data, raw.get("inhibition") or {})
    items = list(overrides.items() if isinstance(overrides, Mapping) else (overrides or []))
    for key, value in items:
        _merge(data, key, value, "")
    fixed_filter(data, [key.split(".", 1)[1] for key, _ in items if key.startswith("inhibition.")])
    sections = {}
    for section, factory in SECTIONS.items():
        defaults = dataclasses.asdict(factory())
        defaults.update(data.get(section, {}))
        checked = _validate(section, defaults)
        sections[section] = factory().__class__(**checked)
    return Config(**sections)


def to_yaml(config: Config) -> str:
    """The effective config as YAML, in section order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)
