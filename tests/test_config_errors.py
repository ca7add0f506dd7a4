"""Bad configuration at the command line (issue 4): exit code 2, one line naming the key,
the value and what is allowed, and nothing written to DST. ``tests/test_config.py`` checks
the messages of ``load_config`` itself; this checks what a user of ``latinhib enhance``
sees, including the one error only the loaded model can find (a layer it does not have)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image

from latinhib.cli import main
from helpers import ARCH

CASES = [
    # (YAML text or None, extra options, the expected line after "Error: ")
    ("inhibition:\n  quantil: 0.5\n", [],
     "config file '{cfg}': unknown key 'inhibition.quantil' (did you mean 'quantile'?); "
     "keys of inhibition: quantile, filter, sigma, kernel_size, ratio, norm, seed, scales, scale_gamma, auto_power, outline, importance, flip"),
    ("blurr:\n  sigma: 2\n", [], "config file '{cfg}': unknown section 'blurr' (did you mean 'blur'?); "
     "sections: model, inhibition, blur, output, runtime"),
    ("inhibition:\n  quantile: half\n", [], "inhibition.quantile: 'half' is not allowed; expected a number in [0.0, 1.0] or auto"),
    ("runtime:\n  batch_size: 2.5\n", [], "runtime.batch_size: 2.5 is not allowed; expected an integer in [1, 65536]"),
    (None, ["-q", "-0.1"], "inhibition.quantile: -0.1 is not allowed; expected a number in [0.0, 1.0] or auto"),
    (None, ["--kernel-size", "8"], "inhibition.kernel_size: 8 is not allowed; expected an odd integer >= 3"),
    (None, ["--kernel-size", "1"], "inhibition.kernel_size: 1 is not allowed; expected an odd integer >= 3"),
    (None, ["--sigma", "0"], "inhibition.sigma: 0.0 is not allowed; expected a number > 0"),
    (None, ["--set", "inhibition.sigma=-1"], "inhibition.sigma: -1 is not allowed; expected a number > 0"),
    (None, ["--ratio", "1.5"], "inhibition.ratio: 1.5 is not allowed; expected a number in [0.0, 1.0]"),
    (None, ["--set", "blur.sigma=0"], "blur.sigma: 0 is not allowed; expected a number > 0"),
]


@pytest.fixture()
def src(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "src" / "a.png")
    return tmp_path / "src"


def enhance(src, dst, checkpoint, *extra):
    argv = ["enhance", str(src), str(dst), "--arch", ARCH, "--checkpoint", str(checkpoint), "--device", "cpu",
            "--workers", "0", "--set", "model.input_size=64", "--quiet", *map(str, extra)]
    return CliRunner().invoke(main, argv, catch_exceptions=False)


@pytest.mark.parametrize("yaml_text, options, expected", CASES)
def test_bad_value_exits_2_with_one_line_and_writes_nothing(src, tmp_path, checkpoint, yaml_text, options, expected):
    cfg = tmp_path / "bad.yaml"
    extra = list(options)
    if yaml_text is not None:
        cfg.write_text(yaml_text)
        extra += ["--config", cfg]
    dst = tmp_path / "dst"
    result = enhance(src, dst, checkpoint, *extra)
    assert result.exit_code == 2
    assert result.output == f"Error: {expected.format(cfg=cfg)}\n"
    assert not dst.exists()


def test_yaml_syntax_error_names_its_line(src, tmp_path, checkpoint):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("inhibition:\n  quantile: 0.5\n  sigma: 2\n   ratio: 0.3\n")
    dst = tmp_path / "dst"
    result = enhance(src, dst, checkpoint, "--config", cfg)
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: config file '{cfg}' line 4, column 9: YAML syntax error: ")
    assert len(result.output.splitlines()) == 1 and not dst.exists()


def test_layer_the_model_does_not_have_lists_the_valid_names(src, tmp_path, checkpoint):
    dst = tmp_path / "dst"
    result = enhance(src, dst, checkpoint, "--layers", "features.3,feature.99")
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith("Error: model.layers: the model has no layer 'feature.99'; valid names: ")
    assert "features.0" in line and "features.1" in line  # mobilenet_v3_small's stages (list shortened)
    assert not dst.exists()


@pytest.mark.parametrize("kwargs, why", [("{bogus: 1}", "unexpected keyword argument 'bogus'"),
                                         ("{num_classes: 10}", "expected value 1000 but got 10")])
def test_kwargs_torchvision_weights_cannot_take_name_the_key(src, tmp_path, kwargs, why):
    """torchvision's MobileNetV2 refuses both before it fetches any weights (no download):
    one line naming the key."""
    dst = tmp_path / "dst"
    result = CliRunner().invoke(main, ["enhance", str(src), str(dst), "--arch", "mobilenet_v2", "--weights", "DEFAULT",
                                       "--device", "cpu", "--set", f"model.kwargs={kwargs}", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith("Error: model.kwargs: cannot build 'mobilenet_v2' with ") and why in line
    assert not dst.exists()
