"""Markdown tables of issue 26's fine-detail draws: per draw, each method's test/mixed_rand
and val_rand accuracy and its train masks (kept share / IoU / precision / recall), and the
pooled paired differences of each latinhib row against each CAM (scripts.experiment.pool),
and of every other latinhib row against the first one (the default).

    PYTHONPATH=. .venv/bin/python -m scripts.experiment.report_issue26 out/issue26-s20 ... out/issue26-s25
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scripts.experiment.pool import CAMS, mean_se, pairs, verdict

LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}


def masks_of(state: dict, method: str) -> dict:
    if method in state["cli"]:
        return {"kept": state["cli"][method]["kept_share"], **state["cli"][method]["mask_quality_train"]}
    if method == "gradcam":
        return {"kept": state["gradcam"]["kept_share"], **state["gradcam"]["mask_quality_train"]}
    return {"kept": state["cams"][method]["kept_share"], **state["cams"][method]["mask_quality_train"]}


def where(state: dict, method: str) -> str:
    if method == "gradcam":
        return state["gradcam"]["layer"]
    if method in state.get("cams", {}):
        c = state["cams"][method]
        return c["layer"] + (f" ({c['fusion']})" if "+" in c["layer"] else "")
    return "-"


def main(folders: list[str]) -> None:
    states = [json.loads((Path(f) / "state.json").read_text()) for f in folders]
    methods = [m for m in states[0]["order"] if all(m in s["order"] for s in states)]
    names = [Path(f).name.rsplit("-s", 1)[-1] for f in folders]
    print("| method | layer(s) chosen on val_rand | " + " | ".join(f"draw {n}" for n in names)
          + " | mean | val_rand mean | kept share / IoU / precision / recall (train) |")
    print("|---|---|" + "---:|" * (len(folders) + 2) + "---|")
    for m in methods:
        test = [100 * s["protocol"][f"{m}/0"]["test/mixed_rand"] for s in states]
        val = [100 * s["protocol"][f"{m}/0"]["val_rand"] for s in states]
        q = [masks_of(s, m) for s in states]
        avg = {k: sum(x[k] for x in q) / len(q) for k in ("kept", "iou", "precision", "recall")}
        layers = sorted({where(s, m) for s in states})
        print(f"| {LABELS.get(m, m)} | {', '.join(layers)} | " + " | ".join(f"{t:.1f}" for t in test)
              + f" | **{sum(test) / len(test):.1f}** | {sum(val) / len(val):.1f} | "
              + f"{avg['kept']:.2f} / {avg['iou']:.3f} / {avg['precision']:.3f} / {avg['recall']:.3f} |")
    print()
    rows = [m for m in methods if m not in CAMS]
    cams = [c for c in CAMS if c in methods]
    print("| row | split | " + " | ".join(f"minus {LABELS[c]}" for c in cams) + " |")
    print("|---|---|" + "---|" * len(cams))
    for row in rows:
        for split in ("test/mixed_rand", "val_rand"):
            cells = []
            for c in cams:
                mean, se = mean_se(pairs(states, row, c, split))
                cells.append(f"{mean:+.1f} ± {se:.1f} ({verdict(mean, se).split(':')[0]})")
            print(f"| {row} | {split} | " + " | ".join(cells) + " |")
    if len(rows) > 1:  # the latinhib rows against the first (the default), paired the same way
        print()
        print(f"| row | split | minus {rows[0]} |")
        print("|---|---|---|")
        for row in rows[1:]:
            for split in ("test/mixed_rand", "val_rand"):
                mean, se = mean_se(pairs(states, row, rows[0], split))
                print(f"| {row} | {split} | {mean:+.1f} ± {se:.1f} ({verdict(mean, se).split(':')[0]}) |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
