"""Make docs/demo.jpg, the README's original / enhanced / mask figure, from the outputs of
scripts/demo.sh (out/demo, out/demo-masks). Run: .venv/bin/python -m scripts.readme_figure"""
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, GAP = 260, 10


def row(rel: str) -> Image.Image:
    panels = [
        Image.open(ROOT / "examples" / rel),
        Image.open(ROOT / "out" / "demo" / rel),
        Image.open(ROOT / "out" / "demo-masks" / f"{rel}.png"),
    ]
    panels = [p.convert("RGB").resize((round(p.width * HEIGHT / p.height), HEIGHT)) for p in panels]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + GAP * 2, HEIGHT), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + GAP
    return canvas


def main() -> None:
    rows = [row(rel) for rel in ("cat/chelsea.jpg", "coffee/coffee.jpg")]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + GAP), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + GAP
    sheet.save(ROOT / "docs" / "demo.jpg", quality=88)
    print(ROOT / "docs" / "demo.jpg")


if __name__ == "__main__":
    main()
