"""Online self-enhancement on the fine-detail benchmark (issue 26, item 3).

    nice -n 10 .venv/bin/python -m scripts.experiment.online DRAW [DRAW ...] --work out/online
    .venv/bin/python -m scripts.experiment.online DRAW [DRAW ...] --work out/online --pool

Each DRAW is a finished ``--work`` folder of ``scripts.experiment.run --benchmark pattern``
(read only). Its offline rows were trained on copies that ``latinhib enhance`` made once,
with the pretrained checkpoint's masks. The online row trains the same SmallResNet with the
same seed, schedule, batch order and flips on the raw train set, and puts
:class:`latinhib.OnlineInhibition` after the flips: after ``--warmup-epochs`` plain epochs,
the model being trained makes its own masks for every batch, for the same files (the
selection hash on each file's name, r = 0.75) with the same blur (3 px) and the shipped
default mask settings, as the offline ``default`` row. Each step is timed, so the cost per
step with and without the helper comes from one run. Results go to ``--work/sSEED/state.json``
(the draw's own rows and references copied beside ``online``), so scripts.experiment.pool
reads them; ``--pool`` prints online minus the offline default and minus each reference,
pooled over the draws.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from scripts.experiment import data as bench
from scripts.experiment.finedetail import BLUR, RATIO
from scripts.experiment.models import SmallResNet
from scripts.experiment.pool import SPLIT, mean_se, pairs
from scripts.experiment.train import BATCH_SIZE, accuracy, normalise

ROW = "online"


def train_online(images, labels, seed, num_classes, epochs, warmup_epochs, names=None, config=None,
                 timing=None):
    """train_model's loop (scripts/experiment/train.py, the same seed, init, order, flips and
    schedule) with OnlineInhibition after the flips; the three marked lines are the change.
    ``timing`` (a dict) receives the wall time of every step, plain and online, and of the
    helper's own calls. With ``warmup_epochs >= epochs`` it is train_model exactly."""
    from latinhib import OnlineInhibition

    torch.manual_seed(seed)
    model = SmallResNet(num_classes=num_classes, width=16)
    steps_per_epoch = (len(images) + BATCH_SIZE - 1) // BATCH_SIZE
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.1, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    # (1) one helper for the whole run: the same settings as the offline rows
    online = OnlineInhibition(model, {"blur.sigma": BLUR, **(config or {})}, ratio=RATIO,
                              warmup_steps=warmup_epochs * steps_per_epoch, input_size=tuple(images.shape[-2:]))
    timing = timing if timing is not None else {}
    for key in ("plain_s", "online_s", "helper_s"):
        timing.setdefault(key, [])
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), BATCH_SIZE):
            began = time.perf_counter()
            batch = order[start: start + BATCH_SIZE]
            inputs = normalise(images[batch])
            flip = torch.rand(len(batch), generator=generator) < 0.5
            inputs[flip] = inputs[flip].flip(-1)
            active = online.active
            helper_began = time.perf_counter()
            keys = [names[i] for i in batch.tolist()] if names is not None else None  # (2) the files' names
            inputs = online(inputs, labels[batch], keys)  # (3) after the augmentations
            helper_s = time.perf_counter() - helper_began
            loss = F.cross_entropy(model(inputs), labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            elapsed = time.perf_counter() - began
            if active:
                timing["online_s"].append(elapsed)
                timing["helper_s"].append(helper_s)
            else:
                timing["plain_s"].append(elapsed)
    return model.eval()


def _mean_ms(values: list) -> float:
    return 1000 * sum(values) / len(values) if values else float("nan")


def run_draw(draw: Path, work: Path, epochs: int, warmup_epochs: int, seeds: list, log) -> None:
    from scripts.experiment.run import Split

    source = json.loads((draw / "state.json").read_text())
    out_dir = work / draw.name
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"online": {}, "timing": {}}
    data_root = draw / "data"
    classes = sorted(json.loads((data_root / "info.json").read_text())["classes"])
    eval_names = ["val_rand", "val_same"] + [f"test/{t}" for t in bench.TEST_SETS]
    train = Split(data_root, "train", classes)
    evaluation = {name: Split(data_root, name, classes) for name in eval_names}
    for seed in seeds:
        key = f"{ROW}/{seed}"
        if key in state["online"]:
            continue
        timing = {}
        started = time.time()
        model = train_online(train.images, train.labels, seed, len(classes), epochs, warmup_epochs,
                             names=train.names, timing=timing)
        scores = {name: accuracy(model, split.images, split.labels) for name, split in evaluation.items()}
        scores["bg_gap"] = scores["test/mixed_same"] - scores["test/mixed_rand"]
        scores["val_gap"] = scores["val_same"] - scores["val_rand"]
        state["online"][key] = scores
        state["timing"][key] = {"plain_ms_per_step": _mean_ms(timing["plain_s"]),
                                "online_ms_per_step": _mean_ms(timing["online_s"]),
                                "helper_ms_per_step": _mean_ms(timing["helper_s"]),
                                "plain_steps": len(timing["plain_s"]), "online_steps": len(timing["online_s"]),
                                "wall_s": time.time() - started}
        state.update(epochs=epochs, warmup_epochs=warmup_epochs, source=str(draw))
        _merge(state, source)
        state_path.write_text(json.dumps(state, indent=1))
        log(f"{draw.name} {key}: {scores}; {state['timing'][key]}")


def _merge(state: dict, source: dict) -> None:
    """The draw's own rows and references beside the online row, as scripts.experiment.pool
    reads a work folder."""
    state["order"] = [r for r in source["order"] if r != ROW] + [ROW]
    state["protocol"] = {**source["protocol"], **state["online"]}


def pool(work: Path, draws: list) -> None:
    states = []
    for draw in draws:
        state = json.loads((work / draw.name / "state.json").read_text())
        _merge(state, json.loads((draw / "state.json").read_text()))  # the draw's latest rows
        states.append(state)
    print(f"{len(states)} draws ({', '.join(d.name for d in draws)}); {SPLIT}, points, online row minus each "
          f"row, pooled over draws and seeds (SE = std / sqrt(pairs))")
    for other in [r for r in states[0]["order"] if r != ROW]:
        values = pairs(states, ROW, other)
        if values:
            mean, se = mean_se(values)
            verdict = "win" if mean > 2 * se else ("loss" if mean < -2 * se else "tie")
            print(f"  online - {other}: {mean:+.1f} ± {se:.1f} over {len(values)} pairs ({verdict} at 2 SE); "
                  f"per draw {', '.join(f'{v:+.1f}' for v in values)}")
    timings = [t for s in states for t in s["timing"].values()]
    plain = sum(t["plain_ms_per_step"] for t in timings) / len(timings)
    online = sum(t["online_ms_per_step"] for t in timings) / len(timings)
    helper = sum(t["helper_ms_per_step"] for t in timings) / len(timings)
    print(f"cost per training step (batch {BATCH_SIZE}, 64 px, SmallResNet, CPU, the same runs; mean over "
          f"{len(timings)} trainings): without the helper {plain:.0f} ms, with it {online:.0f} ms "
          f"(the helper's call {helper:.0f} ms), x{online / plain:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("draws", type=Path, nargs="+", help="finished --work folders of the pattern benchmark")
    parser.add_argument("--work", type=Path, default=Path("out/online"))
    parser.add_argument("--epochs", type=int, default=3, help="the draws' own --epochs")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--train-seeds", default="0", help="the draws' own training seeds")
    parser.add_argument("--pool", action="store_true", help="only print the pooled figures")
    args = parser.parse_args()
    if args.pool:
        pool(args.work, args.draws)
        return
    torch.set_num_threads(1)  # as the benchmark's own trainings run

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    seeds = [int(s) for s in args.train_seeds.split(",")]
    for draw in args.draws:
        run_draw(draw, args.work, args.epochs, args.warmup_epochs, seeds, log)


if __name__ == "__main__":
    main()
