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


# -- decoding on the job's device (a CUDA job: nvJPEG, a batch at a time) -------------------
# The same code as on CUDA, run here with device="cpu": only the device differs.

def test_decode_on_device_gives_what_decoding_in_the_worker_gives(photo_jpegs, tmp_path):
    from latinhib.data import DecodeError, decode, decode_on_device

    size, mean, std = (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    paths = []
    for k, data in enumerate(photo_jpegs):
        paths.append(tmp_path / f"{k}.jpg")
        paths[-1].write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(photo_jpegs[0][:2000])  # a header Pillow opens, the image cut short
    paths.append(tmp_path / "cut.jpg")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "x.png")
    paths.append(tmp_path / "x.png")
    batch = [(k, decode(p, size, mean, std, codec="torchvision", on_device=True), None) for k, p in enumerate(paths)]
    # the workers only read and check: the JPEGs are bytes, the PNG decoded (Pillow's path)
    assert [d.jpeg is not None for _, d, _ in batch] == [True, True, True, True, False]
    done = decode_on_device(batch, size, mean, std, torch.device("cpu"))
    for k, path in enumerate(paths[:3]):
        reference = decode(path, size, mean, std, codec="torchvision")
        got = done[k][1]  # decoded by torchvision on the device, not by the Pillow fallback
        assert got.jpeg is None and got.codec == "torchvision" and torch.equal(got.pixels, reference.pixels)
        assert torch.equal(got.pixels, _pillow_pixels(photo_jpegs[k]))  # the independent reference
        assert torch.allclose(got.model_input, reference.model_input) and got.size == reference.size
    index, decoded, error = done[3]  # the batch call fails on the cut file; each alone; Pillow names why
    assert index == 3 and decoded is None and isinstance(error, DecodeError) and "cannot decode" in str(error)
    assert done[4][1] is batch[4][1]


def test_decode_on_device_leaves_the_whole_batch_on_the_device(photo_jpegs, tmp_path):
    """A PNG (decoded by the worker, on the CPU) beside JPEGs decoded on the device: every
    model input ends up on the device, so the batch stacks. PyTorch's ``meta`` device
    stands in for CUDA here (a device that is not the workers' CPU)."""
    from latinhib.data import decode, decode_on_device

    size, mean, std = (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    (tmp_path / "a.jpg").write_bytes(photo_jpegs[0])
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "b.png")
    batch = [(k, decode(tmp_path / name, size, mean, std, codec="torchvision", on_device=True), None)
             for k, name in enumerate(("a.jpg", "b.png"))]
    meta = torch.device("meta")
    done = decode_on_device(batch, size, mean, std, meta)
    assert [d.model_input.device.type for _, d, _ in done] == ["meta", "meta"]
    assert torch.stack([d.model_input for _, d, _ in done]).shape == (2, 3, 64, 64)


def test_the_devices_float_resize_matches_the_uint8_one(photo_jpegs):
    from latinhib.data import _resize_8bit, _resize_8bit_float

    pixels = codec.decode_jpegs(photo_jpegs[:1], torch.device("cpu"))[0]
    exact, float_path = _resize_8bit(pixels, (224, 224)), _resize_8bit_float(pixels, (224, 224))
    assert (exact - float_path).abs().max() <= 1  # one grey level, from the kernels' own rounding
    assert (exact - float_path).abs().mean() < 0.25  # uint8's fixed-point weights: 0.15 levels on average


@pytest.mark.parametrize("decoders", ["threads", "processes"])
def test_a_job_decoding_on_the_device_gives_the_same_masks(tmp_path, monkeypatch, decoders):
    """The pipelined executor (a CUDA job's) with decoding left to the device, forced onto
    the CPU: the same manifest and masks as the ordinary job. ``processes``: the files read
    in DataLoader worker processes, as on CUDA, their bytes sent back to the main process."""
    import json

    import torchvision
    from click.testing import CliRunner

    from latinhib import executors
    from latinhib.cli import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=2).state_dict(), checkpoint)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for k, photo in enumerate((photos.chelsea(), photos.coffee(), photos.astronaut())):
        (src / "a" / f"{k}.jpg").write_bytes(_jpeg(np.array(Image.fromarray(photo).resize((160, 120)))))
    (src / "a" / "bad.jpg").write_bytes(_jpeg(photos.chelsea())[:2000])  # its header reads, its pixels do not

    def job(name, *extra):
        dst, masks = tmp_path / f"dst-{name}", tmp_path / f"masks-{name}"
        result = CliRunner().invoke(main, [
            "enhance", str(src), str(dst), "--arch", "mobilenet_v3_small", "--checkpoint", str(checkpoint),
            "--device", "cpu", "--set", "model.input_size=64", "--ratio", "1", "--save-masks", str(masks),
            "--set", "runtime.codec=torchvision", "--quiet", *extra], catch_exceptions=False)
        entries = {e["path"]: e for e in map(json.loads, (dst / "latinhib-manifest.jsonl").read_text().splitlines())}
        return result, masks, entries

    _, plain_masks, plain = job("plain")
    calls = []
    real = executors.decode_on_device
    monkeypatch.setattr(executors, "_decode_on_device", lambda device, codec: True)
    monkeypatch.setattr(executors, "_whole_core_streams", lambda device, streams: False)
    monkeypatch.setattr(executors, "decode_on_device", lambda batch, *a: calls.append(len(batch)) or real(batch, *a))
    extra = ()
    loaders = []
    if decoders == "processes":
        real_loader = executors.DataLoader
        monkeypatch.setattr(executors, "_decode_in_threads", lambda device: False)
        monkeypatch.setattr(executors, "DataLoader", lambda *a, **kw: loaders.append(kw["num_workers"]) or real_loader(*a, **kw))
        extra = ("--workers", "2")
    result, device_masks, on_device = job("device", *extra)
    assert loaders == ([2] if decoders == "processes" else [])  # worker processes read the files
    assert calls and sum(calls) == 4  # every selected file went through it, a batch at a time
    assert result.exit_code == 1 and "bad.jpg" in result.output  # the cut file failed, named
    assert {k: e["status"] for k, e in on_device.items()} == {k: e["status"] for k, e in plain.items()}
    for rel, e in plain.items():
        if e["status"] == "enhanced":
            assert (plain_masks / f"{rel}.png").read_bytes() == (device_masks / f"{rel}.png").read_bytes(), rel
            assert on_device[rel]["kept_fraction"] == e["kept_fraction"]


@pytest.mark.needs_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_the_cpu(photo_jpegs, tmp_path):
    from latinhib.data import decode, decode_on_device

    size, mean, std = (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = []
    for k, data in enumerate(photo_jpegs):
        (tmp_path / f"{k}.jpg").write_bytes(data)
        batch.append((k, decode(tmp_path / f"{k}.jpg", size, mean, std, codec="torchvision", on_device=True), None))
    cuda = decode_on_device(batch, size, mean, std, torch.device("cuda"))
    assert torch.stack([d.model_input for _, d, _ in cuda]).device.type == "cuda"
    for k, decoded, _ in cuda:
        cpu = decode(tmp_path / f"{k}.jpg", size, mean, std, codec="torchvision")
        assert decoded.pixels.device.type == "cuda" and decoded.model_input.device.type == "cuda"
        assert (decoded.pixels.cpu().int() - cpu.pixels.int()).abs().float().mean() < 1.0
        assert (decoded.model_input.cpu() - cpu.model_input).abs().mean() < 0.02
