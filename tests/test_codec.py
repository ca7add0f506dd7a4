"""latinhib.codec: the torchvision.io JPEG path against Pillow's, on the CPU (the same code
runs on CUDA with another device): the same pixels decoded, encodings within JPEG
tolerance of each other, metadata kept, and only plain JPEGs taken."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from latinhib import codec

pytestmark = pytest.mark.skipif(not codec.available(), reason="torchvision built without JPEG support")


def _jpeg(pixels: np.ndarray, quality: int = 90, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, **options)
    return buffer.getvalue()


def _pillow_pixels(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as opened:
        array = np.array(opened)
    return torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)[None]


@pytest.fixture(scope="module")
def photo_jpegs():
    rgb = np.array(Image.fromarray(photos.chelsea()).resize((500, 375)))
    grey = photos.camera()[:300, :420]
    return [_jpeg(rgb), _jpeg(grey), _jpeg(photos.astronaut(), quality=75)]


def test_decode_gives_pillows_pixels(photo_jpegs):
    decoded = codec.decode_jpegs(photo_jpegs, torch.device("cpu"))
    for data, pixels in zip(photo_jpegs, decoded):
        reference = _pillow_pixels(data)
        assert pixels.dtype == torch.uint8 and pixels.shape == reference.shape
        # both are libjpeg-turbo with the same upsampling: JPEG tolerance, in practice exact
        assert (pixels.int() - reference.int()).abs().max() <= 2


def test_encode_is_within_jpeg_tolerance_of_pillows(photo_jpegs):
    pixels = codec.decode_jpegs(photo_jpegs, torch.device("cpu"))
    encoded = codec.encode_jpegs(pixels, 95)
    for original, data in zip(pixels, encoded):
        ours = _pillow_pixels(data).int()
        buffer = io.BytesIO()
        array = original.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="JPEG", quality=95)
        pillows = _pillow_pixels(buffer.getvalue()).int()
        assert ours.shape == original.shape
        assert (ours - original.int()).abs().float().mean() < 1.5  # q95: close to the input
        assert (ours - pillows).abs().float().mean() < 1.0  # and to what Pillow writes at q95


def test_metadata_survives_encoding(photo_jpegs):
    icc = bytes(range(256)) * 300  # 76.8 KB: two APP2 markers
    exif = Image.Exif()
    exif[0x010F] = "latinhib test camera"
    exif[codec.ORIENTATION] = 1
    pixels = codec.decode_jpegs(photo_jpegs[:1], torch.device("cpu"))
    data = codec.encode_jpegs(pixels, 95, [{"icc_profile": icc, "exif": exif.tobytes()}])[0]
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.info["icc_profile"] == icc
        assert opened.getexif()[0x010F] == "latinhib test camera"
        opened.load()


def test_no_metadata_leaves_the_bytes_alone(photo_jpegs):
    assert codec.with_metadata(photo_jpegs[0]) == photo_jpegs[0]


def test_only_plain_jpegs_take_the_path(tmp_path):
    rgb = photos.chelsea()
    rotated = Image.Exif()
    rotated[codec.ORIENTATION] = 6
    cases = {
        "plain.jpg": (_jpeg(rgb), True),
        "grey.jpg": (_jpeg(photos.camera()), True),
        "rotated.jpg": (_jpeg(rgb, exif=rotated.tobytes()), False),
    }
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    cases["cmyk.jpg"] = (cmyk.getvalue(), False)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    cases["photo.png"] = (png.getvalue(), False)
    for name, (data, plain) in cases.items():
        with Image.open(io.BytesIO(data)) as opened:
            assert codec.plain_jpeg(opened) is plain, name


def test_a_corrupt_jpeg_raises():
    with pytest.raises(RuntimeError):
        codec.decode_jpegs([b"\xff\xd8\xff\xe0 not a jpeg at all"], torch.device("cpu"))


def test_resolve():
    cpu = torch.device("cpu")
    assert codec.resolve("pillow", cpu) == "pillow"
    assert codec.resolve("torchvision", cpu) == "torchvision"
    assert codec.resolve("auto", cpu) == "torchvision"
    with pytest.raises(ValueError, match="runtime.codec: 'turbo' is not allowed"):
        codec.resolve("turbo", cpu)


@pytest.mark.needs_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decodes_and_encodes_as_the_cpu(photo_jpegs):
    cpu = codec.decode_jpegs(photo_jpegs, torch.device("cpu"))
    cuda = codec.decode_jpegs(photo_jpegs, torch.device("cuda"))
    for a, b in zip(cpu, cuda):
        assert b.device.type == "cuda" and (a.int() - b.cpu().int()).abs().float().mean() < 1.0
    encoded = codec.encode_jpegs(cuda, 95)
    for a, data in zip(cpu, encoded):
        assert (_pillow_pixels(data).int() - a.int()).abs().float().mean() < 1.5


def test_the_job_gives_the_same_masks_and_pixels_with_either_codec(tmp_path, monkeypatch):
    """``runtime.codec`` pillow and torchvision through ``latinhib enhance``: the same
    selection, the same masks, enhanced JPEGs within JPEG tolerance of each other; files
    that are not plain JPEGs (a rotated one, a PNG) go through Pillow under both."""
    import json

    import torchvision
    from click.testing import CliRunner

    from latinhib.cli import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=2).state_dict(), checkpoint)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    rgb = np.array(Image.fromarray(photos.chelsea()).resize((200, 150)))
    (src / "a" / "cat.jpg").write_bytes(_jpeg(rgb))
    (src / "a" / "grey.jpg").write_bytes(_jpeg(photos.camera()[::4, ::4]))
    rotated = Image.Exif()
    rotated[codec.ORIENTATION] = 6
    (src / "a" / "rotated.jpg").write_bytes(_jpeg(rgb, exif=rotated.tobytes()))
    Image.fromarray(rgb).save(src / "a" / "cat.png")
    outputs, decoded = {}, []
    real_decode = codec.decode_jpegs
    monkeypatch.setattr(codec, "decode_jpegs", lambda datas, device: decoded.extend(datas) or real_decode(datas, device))
    for name in ("pillow", "torchvision"):
        dst, masks = tmp_path / f"dst-{name}", tmp_path / f"masks-{name}"
        result = CliRunner().invoke(main, [
            "enhance", str(src), str(dst), "--arch", "mobilenet_v3_small", "--checkpoint", str(checkpoint),
            "--device", "cpu", "--set", "model.input_size=64", "--ratio", "1", "--save-masks", str(masks),
            "--set", f"runtime.codec={name}", "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = (dst, masks, {e["path"]: e for e in map(json.loads, (dst / "latinhib-manifest.jsonl").read_text().splitlines())})
        # only the plain JPEGs (cat.jpg, grey.jpg) took torchvision's path, and only under it
        assert len(decoded) == (2 if name == "torchvision" else 0), name
    (pil_dst, pil_masks, pil_entries), (tv_dst, tv_masks, tv_entries) = outputs["pillow"], outputs["torchvision"]
    assert {k: e["status"] for k, e in pil_entries.items()} == {k: e["status"] for k, e in tv_entries.items()}
    assert all(e["status"] == "enhanced" for e in tv_entries.values())
    for rel in pil_entries:
        assert (pil_masks / f"{rel}.png").read_bytes() == (tv_masks / f"{rel}.png").read_bytes(), rel
        a = _pillow_pixels((pil_dst / rel).read_bytes()).int()
        b = _pillow_pixels((tv_dst / rel).read_bytes()).int()
        assert a.shape == b.shape and (a - b).abs().float().mean() < 1.0, rel
        assert pil_entries[rel]["kept_fraction"] == tv_entries[rel]["kept_fraction"]
