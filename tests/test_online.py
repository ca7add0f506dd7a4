"""latinhib.OnlineInhibition: the model being trained enhances its own batches. It must never
change the model (parameters, their .grad, BatchNorm statistics, training mode), select ~r of
a batch reproducibly, respect the warm-up, and give for the chosen images exactly what
LateralInhibition gives for them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from latinhib import LateralInhibition, OnlineInhibition

SETTINGS = {"blur.sigma": 3.0}


def _labels(n: int, device="cpu") -> torch.Tensor:
    return (torch.arange(n) % 10).to(device)


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def test_never_changes_parameters_grads_buffers_or_mode(tiny_cnn, make_images):
    model = tiny_cnn.train()
    images = make_images(8)
    F.cross_entropy(model(images), _labels(8)).backward()  # a training step's .grad in place
    states, grads, flags = _snapshot(model)
    online = OnlineInhibition(model, SETTINGS, ratio=1.0, input_size=(64, 64))
    out = online(images, _labels(8))
    assert bool(online.last.selected.all()) and not torch.equal(out, images)
    assert model.training
    after_states, after_grads, after_flags = _snapshot(model)
    assert after_flags == flags
    for name, value in states.items():  # BatchNorm running stats and num_batches_tracked too
        assert torch.equal(after_states[name], value), name
    for name, grad in grads.items():
        assert grad is not None and torch.equal(after_grads[name], grad), name


def test_returned_batch_is_detached_and_leaks_no_gradient(tiny_cnn, make_images):
    model = tiny_cnn.train()
    images = make_images(6).requires_grad_(True)  # e.g. an augmentation that kept a graph
    out = OnlineInhibition(model, SETTINGS, ratio=1.0, input_size=(64, 64))(images, _labels(6))
    assert not out.requires_grad and out.grad_fn is None
    assert images.grad is None
    # the training step on the returned batch gives the same gradients as on a plain copy of it
    F.cross_entropy(model(out), _labels(6)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(out.clone()), _labels(6)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))


def test_selects_about_r_of_a_batch_reproducibly(tiny_cnn, make_images):
    images = make_images(400, size=32)
    labels = _labels(400)

    def chosen(seed: int, ratio: float) -> torch.Tensor:
        online = OnlineInhibition(tiny_cnn, {**SETTINGS, "inhibition.filter": "none"}, ratio=ratio, seed=seed,
                                  input_size=(32, 32))
        online(images, labels)
        return online.last.selected

    first = chosen(1, 0.3)
    assert 0.24 < first.float().mean() < 0.36  # 400 draws: 3 standard deviations is 0.069
    assert torch.equal(first, chosen(1, 0.3))
    assert not torch.equal(first, chosen(2, 0.3))
    assert not chosen(1, 0.0).any()


def test_warm_up_returns_the_batch_itself_then_enhances(tiny_cnn, make_images):
    images, labels = make_images(4), _labels(4)
    online = OnlineInhibition(tiny_cnn, SETTINGS, warmup_steps=2, ratio=1.0, input_size=(64, 64))
    for _ in range(2):
        assert online(images, labels) is images and online.last is None
    assert online.active and online.step == 2
    assert not torch.equal(online(images, labels), images)
    assert online.step == 3 and online.last.selected.all()


def test_chosen_images_get_exactly_what_lateral_inhibition_gives(tiny_cnn, make_images):
    images, labels = make_images(12), _labels(12)
    online = OnlineInhibition(tiny_cnn.train(), SETTINGS, ratio=0.5, seed=4, input_size=(64, 64))
    out = online(images, labels)
    chosen = online.last.selected
    assert 0 < chosen.sum() < 12
    # an independent enhancer on a copy of the model in eval mode, every image of the subset chosen
    reference = LateralInhibition(copy.deepcopy(tiny_cnn).eval(), {**SETTINGS, "inhibition.ratio": 1.0},
                                  input_size=(64, 64))(images[chosen], labels[chosen])
    torch.testing.assert_close(out[chosen], reference.enhanced, rtol=0, atol=1e-6)
    assert torch.equal(out[~chosen], images[~chosen])
    assert not torch.equal(out[chosen], images[chosen])


def test_keys_choose_the_same_files_as_latinhib_enhance(tiny_cnn, make_images):
    keys = [f"class_{i % 3}/img_{i}.png" for i in range(16)]
    online = OnlineInhibition(tiny_cnn, SETTINGS, ratio=0.5, input_size=(64, 64))
    online(make_images(16), _labels(16), keys)
    expected = LateralInhibition(tiny_cnn, {"inhibition.ratio": 0.5}, input_size=(64, 64)).select(16, keys)
    assert torch.equal(online.last.selected.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_device_kept(tiny_cnn, make_images, device, dtype):
    model = tiny_cnn.to(device=device, dtype=dtype)
    images = make_images(5, device=device).to(dtype)
    out = OnlineInhibition(model, SETTINGS, ratio=1.0, input_size=(64, 64))(images, _labels(5, device))
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert torch.isfinite(out).all()


def test_clear_errors(tiny_cnn, make_images):
    online = OnlineInhibition(tiny_cnn, SETTINGS, input_size=(64, 64))
    with pytest.raises(ValueError, match=r"labels should be \(N,\) = \(4,\) class indices. Got shape \(3,\)"):
        online(make_images(4), _labels(3))
    with pytest.raises(ValueError, match="labels should be"):
        online(make_images(4), _labels(8).view(4, 2))
    with pytest.raises(ValueError, match="float"):
        online(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), _labels(4))
    with pytest.raises(ValueError, match="warmup_steps"):
        OnlineInhibition(tiny_cnn, warmup_steps=-1, input_size=(64, 64))
    with pytest.raises(ValueError, match="ratio"):
        OnlineInhibition(tiny_cnn, ratio=1.5, input_size=(64, 64))
