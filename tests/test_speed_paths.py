"""The fast paths give what the straightforward implementation gives, bit for bit.

Guarded here: ``encoding.tensor_bytes`` (one memcpy instead of ``bytes(storage)``), the
hard-mask select in ``inhibition.inhibit`` (instead of ``blend``'s arithmetic), the
one-thread section around steps 4-5 in the API (``runtime.single_thread``), the writer
threads' one-thread torch (``executors._one_torch_thread``), and the whole ``enhance`` output
against a reference written the plain way (decode, importance, scale the map, threshold,
8-bit blur, ``blend`` in float, round) from the same model.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from latinhib.api import LateralInhibition
from latinhib.config import load_config
from latinhib.data import decode
from latinhib.filters import blur_uint8, downsampled_gaussian_blur
from latinhib.importance import importance_maps
from latinhib.inhibition import auto_quantile, blend, combine_maps, gate_by_response, inhibit, make_mask, quantile_threshold
from latinhib.models import load_model
from latinhib.executors import _one_torch_thread
from latinhib.pipeline import JobOptions, run
from latinhib.encoding import tensor_bytes
from latinhib.runtime import amp_dtype, single_thread


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float32])
def test_tensor_bytes_equals_storage_bytes(dtype):
    values = torch.arange(2 * 5 * 7, dtype=torch.int64).remainder(251).to(dtype).view(2, 5, 7)
    for tensor in (values, values.permute(1, 2, 0), values[:, 1:4, ::2]):
        plain = bytes(tensor.contiguous().view(-1).untyped_storage())
        assert tensor_bytes(tensor) == plain


def _inputs(seed: int, n: int = 3, size=(37, 53)):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, *size, generator=g)
    combined = torch.rand(n, 24, 24, generator=g)
    combined[0, :12] = 0.5  # ties at the threshold
    threshold = torch.tensor([0.5, 0.3, 0.7])[:n]
    valid = torch.tensor([True, False, True])[:n]
    return image, combined, threshold, valid


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sigma", [1.5, 7.0])
def test_hard_mask_select_equals_blend(seed, sigma):
    image, combined, threshold, valid = _inputs(seed)
    out, mask = inhibit(image, combined, threshold, valid, blur_sigma=sigma)
    scaled = F.interpolate(combined[:, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    reference_mask = make_mask(scaled, threshold, valid)
    reference = blend(image, reference_mask, downsampled_gaussian_blur(image, sigma))
    assert torch.equal(mask, reference_mask)
    assert torch.equal(out, reference)
    assert torch.equal(out[1], image[1])  # not valid: unchanged


def test_feathered_mask_still_blends():
    image, combined, threshold, valid = _inputs(5)
    out, mask = inhibit(image, combined, threshold, valid, blur_sigma=3.0, feather_sigma=2.0)
    assert torch.equal(out, blend(image, mask, downsampled_gaussian_blur(image, 3.0)))


def test_single_thread_restores_the_count_and_changes_no_bits():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        maps = [torch.rand(5, 28, 28, generator=g), torch.rand(5, 14, 14, generator=g), torch.rand(5, 7, 7, generator=g)]
        combined, valid = combine_maps(maps, (224, 224))
        threshold = quantile_threshold(combined, 0.5)
        with pytest.raises(RuntimeError):
            with single_thread(torch.device("cpu")):
                assert torch.get_num_threads() == 1
                fast, fast_valid = combine_maps(maps, (224, 224))
                fast_threshold = quantile_threshold(fast, 0.5)
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        assert torch.equal(fast, combined) and torch.equal(fast_valid, valid)
        assert torch.equal(fast_threshold, threshold)
    finally:
        torch.set_num_threads(before)


def test_writer_threads_use_one_thread_and_leave_the_main_thread_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(max_workers=2, initializer=_one_torch_thread) as pool:
            counts = list(pool.map(lambda _: torch.get_num_threads(), range(4)))
        assert counts == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_api_importance_equals_the_plain_steps():
    from helpers import build_tiny_cnn

    model = build_tiny_cnn()
    enhancer = LateralInhibition(model, {"model.layers": ["features.2", "features.3"]}, input_size=(64, 64))
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    imp = enhancer.importance(images)
    s = enhancer.settings
    maps = importance_maps(model, images, ["features.2", "features.3"], kind=s.importance,
                           autocast_dtype=amp_dtype(enhancer.config.runtime.amp, images.device))
    combined, valid = combine_maps(maps.maps, (64, 64), kind=s.filter, kernel_size=s.kernel_size, sigma=s.sigma,
                                   scales=s.scales, gamma=s.scale_gamma)
    # q from the response; with outline importance (the default) the cut is made in the
    # unfiltered map gated by that response
    quantile = auto_quantile(combined, power=s.auto_power) if s.quantile == "auto" else s.quantile
    assert s.outline == "importance"
    combined = gate_by_response(combined, combine_maps(maps.maps, (64, 64), kind="none")[0])
    assert torch.equal(imp.combined, combined) and torch.equal(imp.valid, valid)
    assert torch.equal(imp.threshold, quantile_threshold(combined, quantile))


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", num_classes=3)
    checkpoint = root / "tiny.pth"
    torch.save(model.state_dict(), checkpoint)
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir()
    for i, (w, h) in enumerate([(90, 70), (64, 64), (50, 120), (133, 81)]):
        yy, xx = np.mgrid[0:h, 0:w]
        blob = ((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2 < (min(w, h) * 0.3) ** 2)[..., None]
        pixels = np.where(blob, rng.integers(0, 255, 3), rng.integers(0, 255, (h, w, 3)) * 0.6).astype(np.uint8)
        Image.fromarray(pixels).save(src / f"img{i}.png")
    config = load_config(overrides={
        "model.arch": "mobilenet_v3_small", "model.weights": None, "model.checkpoint": str(checkpoint),
        "model.input_size": 64, "model.target": "pred", "inhibition.ratio": 1.0,
        "runtime.device": "cpu", "runtime.workers": 0, "runtime.batch_size": 4,
    })
    return config, src, root


def test_enhance_output_equals_the_plain_reference(tiny_job):
    config, src, root = tiny_job
    dst = root / "dst"
    summary = run(config, src, dst, JobOptions(quiet=True))
    assert summary.enhanced == 4 and summary.failed == 0
    loaded = load_model(config.model, torch.device("cpu"))
    files = sorted(src.glob("*.png"))
    decoded = [decode(p, loaded.input_size, loaded.mean, loaded.std) for p in files]
    inputs = torch.stack([d.model_input for d in decoded]).contiguous(memory_format=torch.channels_last)
    imp = LateralInhibition(loaded.model, config, input_size=loaded.input_size).importance(inputs)
    for i, (path, d) in enumerate(zip(files, decoded)):
        color = d.pixels[None]
        h, w = color.shape[-2:]
        scaled = F.interpolate(imp.combined[i : i + 1, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        mask = make_mask(scaled, imp.threshold[i : i + 1], imp.valid[i : i + 1])
        sigma = config.blur.sigma * min(h, w) / min(loaded.input_size)
        # The SPEC's blend in float arithmetic, on the 8-bit image and its 8-bit blur.
        out = blend(color.float(), mask, blur_uint8(color, sigma).float())
        expected = out[0].round().to(torch.uint8).permute(1, 2, 0).numpy()
        written = np.asarray(Image.open(dst / path.name).convert("RGB"))
        assert np.array_equal(written, expected), path.name
        assert not np.array_equal(written, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("shape,sigma", [((1, 3, 375, 500), 6.7), ((2, 3, 101, 67), 13.0), ((1, 1, 90, 70), 9.5)])
def test_downsampled_blur_channels_last_upsample_changes_no_bits(shape, sigma):
    import math

    from latinhib.filters import gaussian_blur

    image = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    factor = int(sigma // 3.0) + 1
    small = F.avg_pool2d(image, factor, stride=factor, ceil_mode=True, count_include_pad=False)
    small = gaussian_blur(small, math.sqrt(max(sigma**2 - (factor**2 - 1) / 12.0, 0.25)) / factor)
    plain = F.interpolate(small, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    assert torch.equal(downsampled_gaussian_blur(image, sigma), plain[..., : shape[2], : shape[3]])


def test_model_streams_split_and_own_their_model():
    from latinhib.streams import ModelStreams, stream_count

    assert stream_count(torch.device("cpu"), 2, 16) == 2
    assert stream_count(torch.device("cpu"), 2, 4) == 1  # chunks under MIN_CHUNK images
    assert stream_count(torch.device("cpu"), 1, 16) == 1
    assert stream_count(torch.device("cpu"), 64, 64) == 4
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        owner = torch.nn.Linear(2, 2)
        streams = ModelStreams(owner, torch.device("cpu"), 16)
        assert streams.count == 2 and streams.threads_per_stream == 1
        assert streams.split(list(range(7))) == [[0, 1, 2, 3], [4, 5, 6]]
        assert streams.split([1]) == [[1]] and streams.split([]) == []
        barrier = threading.Barrier(2)

        def probe(model, _):
            barrier.wait(timeout=10)  # both streams run at once
            return id(model), torch.get_num_threads(), threading.current_thread().name

        seen = [f.result() for f in [streams.submit(probe, i) for i in range(2)]]
        streams.shutdown()
        assert len({s[0] for s in seen}) == 2 and id(owner) in {s[0] for s in seen}  # one model copy each
        assert {s[1] for s in seen} == {1} and all(s[2].startswith("latinhib-model") for s in seen)
        assert torch.get_num_threads() == 2  # the caller's count is untouched

        with pytest.raises(ZeroDivisionError):  # a failing pass reaches the caller
            ModelStreams(owner, torch.device("cpu"), 16).submit(lambda model: 1 / 0).result()
    finally:
        torch.set_num_threads(before)


def test_enhance_on_two_streams_equals_one(tiny_job, tmp_path):
    import dataclasses

    config, src, _ = tiny_job
    outputs = {}
    for threads in (1, 2):
        cfg = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, threads=threads, batch_size=8))
        before = torch.get_num_threads()
        try:
            summary = run(cfg, src, tmp_path / str(threads), JobOptions(quiet=True))
        finally:
            torch.set_num_threads(before)
        assert summary.enhanced == 4
        outputs[threads] = {p.name: p.read_bytes() for p in sorted((tmp_path / str(threads)).glob("*.png"))}
    assert outputs[1] == outputs[2]


def test_decode_ahead_keeps_order_and_stays_two_batches_ahead():
    from latinhib.executors import _decode_ahead, _decode_pool

    class Recording:
        def __init__(self, n):
            self.n, self.requested, self.lock = n, [], threading.Lock()

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            with self.lock:
                self.requested.append(i)
            return i

    for workers in (0, 3):
        data = Recording(23)
        pool = _decode_pool(workers)
        assert (pool is None) == (workers == 0)
        handed = 0
        for batch in _decode_ahead(data, 5, pool):
            assert batch == list(range(handed, handed + len(batch)))
            handed += len(batch)
            assert max(data.requested) < handed + 2 * 5  # never more than two batches ahead
        assert handed == 23 and sorted(data.requested) == list(range(23))
        if pool is not None:
            pool.shutdown()


def test_decoding_threads_and_worker_processes_write_the_same(tiny_job, tmp_path, monkeypatch):
    """CPU jobs decode in threads, CUDA jobs in DataLoader worker processes: both give the
    same files (the process path forced here on the CPU)."""
    import dataclasses

    import latinhib.executors as executors

    config, src, _ = tiny_job
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, workers=2))
    outputs = {}
    for threads in (True, False):
        monkeypatch.setattr(executors, "_decode_in_threads", lambda device, threads=threads: threads)
        summary = run(config, src, tmp_path / str(threads), JobOptions(quiet=True))
        assert summary.enhanced == 4
        outputs[threads] = {p.name: p.read_bytes() for p in sorted((tmp_path / str(threads)).glob("*.png"))}
    assert outputs[True] == outputs[False] and len(outputs[True]) == 4


@pytest.mark.parametrize("valid", [True, False])
def test_uint8_select_equals_the_float_blend(valid):
    """enhance_uint8's bitwise select against blend() in float on the same 8-bit blur; an
    image whose map has no spatial information comes back bit for bit."""
    from latinhib.finishing import enhance_uint8, kept_fraction

    g = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (1, 61, 83, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)
    combined = torch.rand(1, 24, 24, generator=g)
    threshold, flag = torch.tensor([0.5]), torch.tensor([valid])
    out, mask = enhance_uint8(image, combined, threshold, flag, 5.0)
    scaled = F.interpolate(combined[:, None], size=(61, 83), mode="bilinear", align_corners=False)[:, 0]
    reference_mask = make_mask(scaled, threshold, flag)
    reference = blend(image.float(), reference_mask, blur_uint8(image, 5.0).float()).round().to(torch.uint8)
    assert torch.equal(mask.float(), reference_mask) and torch.equal(out, reference)
    assert kept_fraction(mask) == pytest.approx(float(reference_mask.mean()))
    if not valid:
        assert torch.equal(out, image) and bool(mask.all())
    else:
        assert 0.2 < kept_fraction(mask) < 0.8


def test_decoding_threads_leave_the_warning_filters_alone(tiny_job, tmp_path, monkeypatch, recwarn):
    """Pillow's decompression-bomb warning is silenced once, by the job's main thread:
    ``warnings.catch_warnings`` entered from several decoding threads at once could leave
    the process's filters changed. Here every image but one is over a lowered limit."""
    import dataclasses
    import warnings

    config, src, _ = tiny_job
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, workers=3, batch_size=4))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5400)  # 6000-10773 px images warn, none refused
    before = list(warnings.filters)
    for attempt in range(3):
        summary = run(config, src, tmp_path / str(attempt), JobOptions(quiet=True))
        assert summary.enhanced == 4 and summary.failed == 0
    assert warnings.filters == before
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("scripted", [False, True])
def test_every_stream_runs_the_model_pass_on_its_own_copy(scripted):
    """Each stream's copy gives the original's maps; a TorchScript model is copied by a
    save/load round trip (its deepcopy has non-leaf parameters, which frozen_eval rejects)."""
    from helpers import build_tiny_cnn

    from latinhib.streams import ModelStreams, clone

    model = build_tiny_cnn()
    if scripted:
        model = torch.jit.script(model)
    layers = ["input"] if scripted else ["features.2", "features.3"]
    enhancer = LateralInhibition(model, {"model.layers": layers, "model.target": "pred"}, input_size=(64, 64))
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = enhancer.importance(images).combined
    copied = clone(enhancer)
    assert copied.model is not enhancer.model
    assert torch.equal(copied.importance(images).combined, expected)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        streams = ModelStreams(enhancer, torch.device("cpu"), 8)
        assert streams.count == 2
        chunks = streams.split(list(range(8)))
        futures = [streams.submit(lambda owner, idx: owner.importance(images[idx]).combined, c) for c in chunks]
        results = [f.result() for f in futures]
        streams.shutdown()
    finally:
        torch.set_num_threads(before)
    for chunk, result in zip(chunks, results):
        torch.testing.assert_close(result, expected[chunk], rtol=0, atol=1e-6)


def _threads_and_batch(config, threads: int, batch_size: int):
    import dataclasses

    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, threads=threads, batch_size=batch_size))


@pytest.mark.parametrize("threads,batch_size,whole_core", [(2, 8, True), (1, 4, True), (2, 4, False)])
def test_which_cpu_jobs_run_each_chunk_start_to_end_on_its_stream(tiny_job, tmp_path, monkeypatch,
                                                                  threads, batch_size, whole_core):
    """One-thread streams (one per core) decode, pass and write their own chunks; a stream
    of several threads leaves decoding and writing to their own threads. Both write the
    same files."""
    import latinhib.executors as executors

    config, src, _ = tiny_job
    chunks = []
    original = executors._run_chunk
    monkeypatch.setattr(executors, "_run_chunk", lambda *a: (chunks.append(list(a[1])), original(*a))[1])
    before = torch.get_num_threads()
    try:
        summary = run(_threads_and_batch(config, threads, batch_size), src, tmp_path / "out", JobOptions(quiet=True))
    finally:
        torch.set_num_threads(before)
    assert summary.enhanced == 4 and summary.failed == 0
    if whole_core:
        assert sorted(i for c in chunks for i in c) == [0, 1, 2, 3]
        assert len(chunks) == (2 if threads == 2 else 1)
    else:
        assert chunks == []
    reference = run(_threads_and_batch(config, 1, 4), src, tmp_path / "reference", JobOptions(quiet=True))
    assert reference.enhanced == 4
    for path in sorted((tmp_path / "reference").glob("*.png")):
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("threads,batch_size", [(2, 8), (2, 4)])
def test_a_failing_model_pass_stops_the_job_and_leaves_no_partial_file(tiny_job, tmp_path, monkeypatch,
                                                                         threads, batch_size):
    """On both CPU paths the model pass's error reaches the caller (it would fail every
    file alike), after the files in flight are written or dropped whole."""
    import latinhib.executors as executors

    config, src, _ = tiny_job

    def failing(*args):
        raise RuntimeError("boom: out of memory")

    monkeypatch.setattr(executors, "batch_importance", failing)
    dst = tmp_path / "out"
    before = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run(_threads_and_batch(config, threads, batch_size), src, dst, JobOptions(quiet=True))
    finally:
        torch.set_num_threads(before)
    assert not list(dst.glob("*.png")) and not list(dst.glob(".*"))
    assert (dst / "latinhib-manifest.jsonl").read_text() == ""


def test_run_chunk_settles_every_file_and_skips_cancelled_ones(tiny_job, tmp_path):
    """Each file's future gets its entry or its error; a file the job cancelled before the
    chunk started is not touched; an error outside one file's steps fails the rest."""
    from concurrent.futures import Future

    from latinhib.data import list_folder
    from latinhib.executors import _Decoding, _run_chunk
    from latinhib.finishing import Finisher
    from latinhib.recorder import PassFailed
    from latinhib.sinks import FolderSink

    config, src, _ = tiny_job
    loaded = load_model(config.model, torch.device("cpu"))
    enhancer = LateralInhibition(loaded.model, config, input_size=loaded.input_size)
    items = list_folder(src)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = items[:2] + list_folder(tmp_path)[:1] + items[2:]
    dataset = _Decoding(items, loaded, threads=True)
    dst = tmp_path / "out"
    finisher = Finisher(config, loaded, FolderSink(dst), torch.device("cpu"))
    futures = [Future() for _ in items]
    assert futures[3].cancel()
    _run_chunk(enhancer, range(5), futures, dataset, finisher, None, torch.device("cpu"))
    assert futures[3].cancelled() and not (dst / items[3].rel).exists()
    statuses = [futures[k].result()["status"] for k in (0, 1, 2, 4)]
    assert statuses == ["enhanced", "enhanced", "failed", "enhanced"]
    assert "cannot decode" in futures[2].result()["error"]

    class Exploding(_Decoding):
        def __getitem__(self, index):
            if index == 1:
                raise ValueError("decoder bug")
            return super().__getitem__(index)

    futures = [Future() for _ in range(3)]
    _run_chunk(enhancer, range(3), futures, Exploding(items, loaded, threads=True), finisher, None, torch.device("cpu"))
    assert all(isinstance(f.exception(timeout=0), PassFailed) for f in futures)
    assert "decoder bug" in str(futures[0].exception(timeout=0))


def test_copies_do_not_hold_back_the_next_batch(tiny_job, tmp_path, monkeypatch):
    """With many copies per batch (r = 0.2) the main thread hands out the next batch while
    the first one still runs: copies are bounded on their own, not counted against the
    images in flight (else a stream sat idle after each batch)."""
    import dataclasses

    import latinhib.executors as executors
    from latinhib.inhibition import selection_score

    config, _, _ = tiny_job
    config = _threads_and_batch(config, 2, 8)  # two streams of 4
    config = dataclasses.replace(config, inhibition=dataclasses.replace(config.inhibition, ratio=0.2))
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(src / f"{i:02d}.png")
    selected = sum(selection_score(config.inhibition.seed, f"{i:02d}.png") < 0.2 for i in range(80))
    assert selected > 8  # two batches at least
    submitted, waited = [], []
    second_batch = threading.Event()
    original = executors._run_chunk

    def chunk(*args):
        submitted.append(list(args[1]))
        if args[1][0] < 8:  # the first batch waits until the next one is handed out
            waited.append(second_batch.wait(timeout=5))
        return original(*args)

    real_submit = executors.ModelStreams.submit

    def submit(self, fn, *args):
        if fn is chunk and args[0][0] >= 8:
            second_batch.set()
        return real_submit(self, fn, *args)

    monkeypatch.setattr(executors, "_run_chunk", chunk)
    monkeypatch.setattr(executors.ModelStreams, "submit", submit)
    before = torch.get_num_threads()
    try:
        summary = run(config, src, tmp_path / "out", JobOptions(quiet=True))
    finally:
        torch.set_num_threads(before)
    assert summary.enhanced == selected and summary.copied == 80 - selected and summary.failed == 0
    assert waited and all(waited)
