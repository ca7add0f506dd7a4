"""scripts/experiment/online.py's training loop is the benchmark's own (train_model) while the
helper is warming up, so the online row differs from the offline rows only by its inputs."""
from __future__ import annotations

import torch

from scripts.experiment.online import train_online
from scripts.experiment.train import train_model


def test_online_loop_is_train_model_until_the_helper_starts():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 3, 64, 64), dtype=torch.uint8, generator=generator)
    labels = torch.arange(80) % 4
    names = [f"c{i % 4}/{i}.png" for i in range(80)]
    plain = train_model(images, labels, 0, 4, epochs=1)
    warm = train_online(images, labels, 0, 4, epochs=1, warmup_epochs=1, names=names)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), warm.state_dict().values()))
    timing = {}
    online = train_online(images, labels, 0, 4, epochs=2, warmup_epochs=1, names=names, timing=timing)
    assert len(timing["plain_s"]) == 2 and len(timing["online_s"]) == 2 and len(timing["helper_s"]) == 2
    reference = train_model(images, labels, 0, 4, epochs=2)
    assert not all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), online.state_dict().values()))
