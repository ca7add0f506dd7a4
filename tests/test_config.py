"""Config: defaults < YAML < overrides, and every bad value named with its key."""
from __future__ import annotations

import pytest

from latinhib.config import Config, ConfigError, InhibitionConfig, load_config, parse_override, to_yaml


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    config = load_config()
    assert config == Config()
    assert config.inhibition.quantile == "auto" and config.inhibition.kernel_size == 13 and config.inhibition.ratio == 0.75
    assert config.inhibition.scales == (1.0, 1.5, 2.0, 3.0, 4.0, 6.0) and config.inhibition.scale_gamma == 2.65
    assert config.inhibition.importance == "gradient_x_activation" and config.inhibition.flip is False
    assert config.model.target == "auto" and config.inhibition.filter == "log"


def test_overrides_beat_yaml_beat_defaults(tmp_path):
    path = write(tmp_path, "inhibition:\n  quantile: 0.7\n  sigma: 3\nblur:\n  sigma: 6\n")
    config = load_config(path, {"inhibition.quantile": 0.2})
    assert config.inhibition.quantile == 0.2  # override beats YAML
    assert config.inhibition.sigma == 3.0  # YAML beats default
    assert config.blur.sigma == 6.0
    assert config.inhibition.ratio == InhibitionConfig().ratio  # default where neither says
    config = load_config(path, [parse_override("runtime.batch_size=4"), parse_override("model.layers=[a, b]")])
    assert config.runtime.batch_size == 4 and config.model.layers == ("a", "b")


def test_to_yaml_round_trips(tmp_path):
    config = load_config(overrides={"inhibition.quantile": 0.3, "model.layers": ["layer2", "layer3"]})
    assert load_config(write(tmp_path, to_yaml(config))) == config


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("inhibition.sigmma", 1, r"unknown key 'inhibition.sigmma' \(did you mean 'sigma'\?\)"),
        ("inhibiton.sigma", 1, r"unknown section 'inhibiton' \(did you mean 'inhibition'\?\)"),
        ("inhibition.quantile", 1.5, r"inhibition.quantile: 1.5 is not allowed; expected a number in \[0.0, 1.0\]"),
        ("inhibition.quantile", -0.1, r"inhibition.quantile: -0.1 is not allowed"),
        ("inhibition.quantile", "half", r"inhibition.quantile: 'half' is not allowed"),
        ("inhibition.kernel_size", 6, r"inhibition.kernel_size: 6 is not allowed; expected an odd integer >= 3"),
        ("inhibition.kernel_size", 1, r"inhibition.kernel_size: 1 is not allowed; expected an odd integer >= 3"),
        ("inhibition.kernel_size", 7.0, r"inhibition.kernel_size: 7.0 is not allowed"),
        ("inhibition.sigma", 0, r"inhibition.sigma: 0 is not allowed; expected a number > 0"),
        ("inhibition.sigma", -2.0, r"inhibition.sigma: -2.0 is not allowed; expected a number > 0"),
        ("inhibition.ratio", 1.01, r"inhibition.ratio: 1.01 is not allowed; expected a number in \[0.0, 1.0\]"),
        ("inhibition.filter", "logg", r"inhibition.filter: 'logg' is not allowed; expected one of log, gaussian, none \(did you mean 'log'\?\)"),
        ("model.target", "labels", r"model.target: 'labels' is not allowed; expected one of auto, label, pred, entropy"),
        ("blur.sigma", 0.0, r"blur.sigma: 0.0 is not allowed; expected a number > 0"),
        ("runtime.device", "gpu", r"runtime.device: 'gpu' is not allowed; expected auto, cpu, cuda or cuda:N"),
        ("runtime.batch_size", 0, r"runtime.batch_size: 0 is not allowed"),
        ("output.jpeg_quality", 101, r"output.jpeg_quality: 101 is not allowed"),
        ("model.input_size", [224], r"model.input_size: \[224\] is not allowed"),
    ],
)
def test_bad_values_name_the_key_and_value(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={key: value})


def test_bad_yaml_values_name_the_file_key_and_value(tmp_path):
    path = write(tmp_path, "inhibition:\n  kernel_size: 4\n")
    with pytest.raises(ConfigError, match=r"inhibition.kernel_size: 4 is not allowed"):
        load_config(path)
    path = write(tmp_path, "inhibition:\n  quantil: 0.4\n")
    with pytest.raises(ConfigError, match=r"config.yaml.*unknown key 'inhibition.quantil' \(did you mean 'quantile'\?\)"):
        load_config(path)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "inhibition:\n  quantile: 0.5\n  sigma: [1, 2\nblur:\n  sigma: 3\n")
    with pytest.raises(ConfigError, match=r"config.yaml' line \d+, column \d+: YAML syntax error") as info:
        load_config(path)
    line = int(str(info.value).split(" line ")[1].split(",")[0])
    assert line in (3, 4)  # the unclosed bracket (line 3), reported where PyYAML notices it


def test_yaml_tab_error_names_line_two(tmp_path):
    path = write(tmp_path, "inhibition:\n\tquantile: 0.5\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: YAML syntax error"):
        load_config(path)


def test_missing_file_and_wrong_shapes(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="section 'blur' should be a mapping"):
        load_config(write(tmp_path, "blur: 3\n"))
    with pytest.raises(ConfigError, match="expected a key of the form section.key"):
        load_config(overrides={"quantile": 0.5})
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("inhibition.quantile")


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(Exception):
        config.inhibition.quantile = 0.9  # type: ignore[misc]
