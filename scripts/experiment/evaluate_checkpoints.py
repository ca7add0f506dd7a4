"""`latinhib evaluate` on the experiment's test splits (issue 14), next to the experiment's own
accuracies.

    .venv/bin/python -m scripts.experiment.evaluate_checkpoints [--work out/experiment]

scripts/experiment/run.py trains its models in memory and keeps only the pretrain checkpoint,
so this script runs the stages it needs itself, each skipped when its output exists under
--work (the same folder run.py uses; a finished run.py leaves the data and pretrain.pth):
 1. the benchmark data and pretrain.pth (run.py's step 1, same seeds: the same bytes);
 2. `latinhib enhance` on the biased train set at the settings run.py chose (its state.json
    when present, else the ones docs/RESULTS.md reports), then two SmallResNets trained with
    seed 0 as run.py trains them: baseline.pth (the train set as is) and latinhib.pth (the
    enhanced copies); their accuracies on the four test sets, computed by the experiment's
    own `accuracy`;
 3. `latinhib evaluate` (the real CLI, as a subprocess) on test/original and
    test/mixed_rand, masks from the pretrain checkpoint at the protocol's settings (what
    `enhance` used), with --also-checkpoint baseline.pth latinhib.pth; once with latinhib's
    masks, once with --masks (the true garment masks): how close latinhib's masks come.
Prints markdown tables and writes them, with every JSON document, to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from scripts.experiment import data as bench
from scripts.experiment.models import SmallResNet
from scripts.experiment.common import ARCH, ROOT, Split, log, mask_arguments, run_enhance
from scripts.experiment.report_common import write_section
from scripts.experiment.train import MEAN, STD, accuracy, load_folder, train_model

#: What docs/RESULTS.md reports run.py chose on val (used when no state.json is there).
DOCUMENTED = {"layers": ["layer1"], "target": "entropy", "filter": "log", "sigma": 0.75, "k": 7,
              "q": 0.95, "r": 0.75, "blur": 3.0}
SPLITS = ("test/original", "test/mixed_rand")
#: Mask sources per split: latinhib at the protocol's q, latinhib at q = 0.8 (the share of
#: background: garments cover ~20% of an image), the true garment masks.
SOURCES = (("latinhib, q = protocol's", None, False), ("latinhib, q = 0.8", 0.8, False), ("true masks (--masks)", None, True))
VARIANTS = ("original", "background_blurred", "object_blurred", "background_swapped", "object_only")


def model_options(settings: dict, checkpoint: Path, classes: list[str]) -> list[str]:
    """The model and inhibition options `latinhib enhance` got in run.py (run_enhance with
    mask_arguments), plus the class names in training order (sorted folder names, as
    load_folder labels them)."""
    return [
        "--arch", ARCH, "--checkpoint", str(checkpoint),
        "--set", f"model.kwargs={{num_classes: {len(classes)}}}", "--set", "model.input_size=64",
        "--set", f"model.classes=[{','.join(classes)}]",
        "--set", f"model.mean={list(MEAN)}", "--set", f"model.std={list(STD)}",
        *mask_arguments(settings),
        "--blur-sigma", str(settings["blur"]), "--device", "cpu", "--batch-size", "64",
        # float32 like the experiment's own `accuracy`, so `original` equals it exactly
        # (runtime.amp auto would classify in bf16 on a CPU with AMX)
        "--set", "runtime.amp=off",
    ]


def train_checkpoints(work: Path, settings: dict, threads: int, epochs: int) -> dict:
    """Stages 1-2: data, pretrain.pth, the CLI's enhanced train set, baseline.pth and
    latinhib.pth, and the experiment's own accuracies of all three (cached in accuracies.json)."""
    data_root = work / "data"
    if not (data_root / "info.json").exists():
        log("generating the benchmark")
        bench.generate(data_root, seed=0)
    classes = sorted(json.loads((data_root / "info.json").read_text())["classes"])
    checkpoints = {"pretrain": work / "pretrain.pth", "baseline": work / "baseline.pth",
                   "latinhib": work / "latinhib.pth"}
    if not checkpoints["pretrain"].exists():
        log("training the pretrain checkpoint (as run.py does)")
        pretrain = Split(data_root, "pretrain", classes)
        model = train_model(pretrain.images, pretrain.labels, 0, len(classes), epochs=epochs)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, checkpoints["pretrain"])
    train_dir = data_root / "images" / "train"
    for name in ("baseline", "latinhib"):
        if checkpoints[name].exists():
            continue
        if name == "baseline":
            images, labels, _ = load_folder(train_dir, classes)
        else:
            enhanced = work / "evaluate-enhanced"
            run_enhance(train_dir, enhanced, work / "evaluate-enhanced-masks", checkpoints["pretrain"],
                        classes, mask_arguments(settings), settings["r"], settings["blur"], threads)
            images, labels, _ = load_folder(enhanced, classes)
        log(f"training {name}.pth (seed 0)")
        model = train_model(images, labels, 0, len(classes), epochs=epochs)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, checkpoints[name])
    cache = work / "accuracies.json"
    if cache.exists():
        return json.loads(cache.read_text())
    scores = {}
    for name, path in checkpoints.items():
        model = SmallResNet(num_classes=len(classes))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        scores[name] = {}
        for split in [f"test/{t}" for t in bench.TEST_SETS]:
            images, labels, _ = load_folder(data_root / "images" / split, classes)
            scores[name][split] = accuracy(model, images, labels)
    cache.write_text(json.dumps(scores, indent=1))
    return scores


def run_evaluate(work: Path, split: str, settings: dict, classes: list[str], true_masks: bool,
                 threads: int, report: Path | None = None) -> dict:
    """`latinhib evaluate` on one test split; returns its --json document. With latinhib's
    masks the first checkpoint is pretrain.pth (the model `enhance` used); with the true
    masks no model makes them, so baseline.pth goes first and the paired differences read
    latinhib.pth - baseline.pth."""
    data_root = work / "data"
    order = ["baseline", "latinhib", "pretrain"] if true_masks else ["pretrain", "baseline", "latinhib"]
    also = [option for name in order[1:] for option in ("--also-checkpoint", str(work / f"{name}.pth"))]
    command = [sys.executable, "-m", "latinhib", "evaluate", str(data_root / "images" / split),
               *model_options(settings, work / f"{order[0]}.pth", classes), *also,
               "--set", f"runtime.threads={threads}", "--json", "--quiet"]
    if true_masks:
        command += ["--masks", str(data_root / "masks" / split)]
    if report is not None:
        command += ["--report", str(report)]
    environment = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log("$ " + " ".join(command))
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"latinhib evaluate failed ({result.returncode}):\n{result.stderr}")
    log(f"  {time.time() - started:.0f} s")
    return json.loads(result.stdout)


def _cell(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def tables(documents: dict, accuracies: dict) -> str:
    """Markdown: per split and mask source, accuracy per variant and checkpoint."""
    lines = []
    names = {"pretrain": "pretrain (masks' model)", "baseline": "baseline (biased train set)",
             "latinhib": "trained on latinhib's copies"}
    for (split, source), document in documents.items():
        gap = "original - background_swapped"
        lines += [f"### {split}, masks: {source}", "",
                  "| checkpoint | experiment's accuracy | " + " | ".join(VARIANTS) + f" | {gap} |",
                  "|---" * (len(VARIANTS) + 3) + "|"]
        first = Path(document["config"]["model"]["checkpoint"]).stem
        rows = [(first, document["variants"], document["gaps"])]
        rows += [(Path(c["checkpoint"]).stem, c["variants"], c["gaps"]) for c in document["compared"]]
        for name, variants, gaps in rows:
            cells = [_cell(variants[v]) for v in VARIANTS]
            g = gaps[gap]
            lines.append(f"| {names.get(name, name)} | {100 * accuracies[name][split]:.1f} | " + " | ".join(cells)
                         + f" | {100 * g['difference']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}] |")
        lines.append("")
        for compared in document["compared"]:
            paired = compared["paired"]
            text = ", ".join(f"{v} {100 * paired[v]['difference']:+.1f} [{100 * paired[v]['ci95'][0]:+.1f}, "
                             f"{100 * paired[v]['ci95'][1]:+.1f}]" for v in VARIANTS)
            lines.append(f"- {Path(compared['checkpoint']).stem} - {first} (paired): {text}")
        lines.append("")
    return "\n".join(lines)


def seed_table(documents: dict) -> str:
    """The seed's "original image vs enhanced image" in form: each checkpoint on the test
    images as they are vs background_blurred (latinhib's masks at the protocol's q)."""
    lines = ["### The seed's table in form: test images as they are vs latinhib-enhanced (background_blurred)", "",
             "| checkpoint | test split | original | background_blurred | difference (paired) |", "|---|---|---|---|---|"]
    for (split, source), document in documents.items():
        if not source.startswith("latinhib, q = protocol's"):
            continue
        rows = [(Path(document["config"]["model"]["checkpoint"]).stem, document["variants"], document["gaps"])]
        rows += [(Path(c["checkpoint"]).stem, c["variants"], c["gaps"]) for c in document["compared"]]
        for name, variants, gaps in rows:
            gap = gaps["background_blurred - original"]
            lines.append(f"| {name} | {split} | {_cell(variants['original'])} | {_cell(variants['background_blurred'])} | "
                         f"{100 * gap['difference']:+.1f} [{100 * gap['ci95'][0]:+.1f}, {100 * gap['ci95'][1]:+.1f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "experiment")
    parser.add_argument("--out", type=Path, default=None, help="folder for the tables and JSON (default WORK/evaluate)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-only", action="store_true", help="stop after stage 2")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "EVALUATE.md",
                        help="the page to write (its figures go next to it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state.json"
    settings = json.loads(state.read_text()).get("settings", DOCUMENTED) if state.exists() else DOCUMENTED
    settings = dict(settings, filter="log")
    accuracies = train_checkpoints(work, settings, args.threads, args.epochs)
    log(f"experiment's accuracies: {json.dumps(accuracies)}")
    if args.train_only:
        return
    out = args.out or work / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(json.loads((work / "data" / "info.json").read_text())["classes"])
    started = time.time()
    documents = {}
    for split in SPLITS:
        for source, quantile, true_masks in SOURCES:
            chosen = dict(settings, q=quantile) if quantile is not None else settings
            name = f"{split.split('/')[-1]}-{'true' if true_masks else 'q' + str(chosen['q'])}"
            documents[(split, f"{source} (q = {chosen['q']})" if not true_masks else source)] = run_evaluate(
                work, split, chosen, classes, true_masks, args.threads, out / f"report-{name}")
    text = tables(documents, accuracies) + "\n" + seed_table(documents)
    print(text)
    (out / "tables.md").write_text(text + "\n")
    (out / "documents.json").write_text(json.dumps({f"{s} | {m}": d for (s, m), d in documents.items()}, indent=1))
    write_page(args.results, text, out, started)


def write_page(path: Path, text: str, out: Path, started: float) -> None:
    """docs/EVALUATE.md's section "evaluate-checkpoints": how it was made, the tables, and two
    figures from the reports. The page's hand-written part (the command's manual) is kept."""
    figures = {"evaluate-true-masks.png": out / "report-original-true" / "accuracy.png",
               "evaluate-samples.png": out / "report-original-q0.8" / "samples.png"}
    for name, source in figures.items():
        shutil.copy(source, path.parent / name)
    import platform

    header = [
        "## `latinhib evaluate` on the experiment's test splits: all tables", "",
        "Written by `.venv/bin/python -m scripts.experiment.evaluate_checkpoints` (from the repository root; "
        "`--work out/experiment`, shared with `scripts.experiment.run`). "
        f"Last run: {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {time.time() - started:.0f} s for this script's evaluate runs.", "",
        "Checkpoints (SmallResNet, seed 0, trained as `scripts/experiment/run.py` trains them): *pretrain* (random "
        "backgrounds: the model latinhib uses for its masks), *baseline* (the biased train set as is), "
        "*latinhib* (the train set after `latinhib enhance` at the protocol's settings). "
        "\"experiment's accuracy\" is `scripts/experiment/train.accuracy` on the same split; `original` must equal it. "
        "Accuracies in %, [95% bootstrap interval]; differences in points.", "",
        "![accuracy per variant, true masks, test/original](evaluate-true-masks.png)", "",
        "![the variants with latinhib's masks at q = 0.8 (test/original)](evaluate-samples.png)", ""]
    write_section(path, "evaluate-checkpoints", "\n".join(header) + "\n" + text)


if __name__ == "__main__":
    main()
