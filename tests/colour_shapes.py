"""A folder of small colour images in the class-subfolder convention, drawn with PIL: a circle, a
square, a triangle or a cross per image, of a random colour, size and place on a dark background
of another colour. The class is the shape, never the colour, so that a network must see form.

    python tests/colour_shapes.py OUT [--per-class N] [--size S]

writes OUT/train/<shape>/NNNN.png and OUT/test/<shape>/NNNN.png (a tenth of N per class)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``shape``: a bright random colour on a dark random background."""
    background = tuple(int(v) for v in rng.integers(0, 70, 3))
    colour = tuple(int(v) for v in rng.integers(120, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    half = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(half, size - half, 2)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)],
                     fill=colour)
    else:
        bar = half / 3
        draw.rectangle((cx - half, cy - bar, cx + half, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - half, cx + bar, cy + half), fill=colour)
    return image


def write_shapes_folder(root: Path, per_class: int, size: int = 32, seed: int = 0,
                        test_per_class: int = 0) -> Path:
    """OUT/train/<shape>/ with ``per_class`` images each, OUT/test/<shape>/ with
    ``test_per_class`` (0: a tenth of ``per_class``, at least 5)."""
    rng = np.random.default_rng(seed)
    tests = test_per_class or max(5, per_class // 10)
    for split, count in (("train", per_class), ("test", tests)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_shape(shape, size, rng).save(folder / f"{i:04d}.png")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    write_shapes_folder(args.out, args.per_class, args.size)
    print(f"wrote {args.out}")
