"""Compose the README's picture: synthesized CIFAR-10 images beside real ones (no model runs).

No synthetic data set is committed (``benchmarks/results/.gitignore`` keeps the shards out), so the synthetic
rows come from the committed image grids in ``docs/images/<synth>-resnet56-200it.png``. Those grids were saved by
``benchmarks/speed/synth_speed.py --grid`` (``torchvision.utils.save_image``, ``nrow=10``, ``padding=1``) from
one batch of 40 images per synthesizer: ResNet-56 teacher, seed 0, 200 iterations, balanced labels in cyclic
order, so column ``c`` is class ``c`` (airplane ... truck); the command that made them is in
``docs/synthesizers.md`` (section on image quality). This script takes the first row of each grid (one image
per class) and adds one row of real CIFAR-10 test images (``test/<class>/0000.jpg`` of the JPEG ImageFolder
archive, read from the archive in memory: nothing is extracted into the repository).

Run from the repository root::

    .venv/bin/python benchmarks/make_readme_figure.py                       # ../shared/data/cifar10-jpeg.tar.gz
    .venv/bin/python benchmarks/make_readme_figure.py --cifar PATH.tar.gz --out docs/images/synthetic-vs-real.png

Writes one PNG (``docs/images/synthetic-vs-real.png`` by default): a header of class names, then one row per
synthesizer and a last row of real images, each cell scaled ``--scale`` times (nearest neighbour).
"""
from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ROWS = [  # (label in the figure, grid file under docs/images)
    ("noise", "noise-resnet56-200it.png"),
    ("DeepInversion", "deepinversion-resnet56-200it.png"),
    ("NaturalInversion", "natural-resnet56-200it.png"),
    ("seeded", "seeded-resnet56-200it.png"),
]
SIZE, PAD = 32, 1  # CIFAR image size and save_image's padding in the grids


def grid_row(path: Path, row: int = 0) -> list[Image.Image]:
    """The images of one row of a ``save_image`` grid (``nrow=10``, ``padding=1``)."""
    grid = Image.open(path).convert("RGB")
    expected_width = len(CLASSES) * (SIZE + PAD) + PAD
    if grid.width != expected_width:
        raise SystemExit(f"{path}: width {grid.width}, expected {expected_width} (10 columns of 32 px, padding 1)")
    y = PAD + row * (SIZE + PAD)
    return [grid.crop((PAD + c * (SIZE + PAD), y, PAD + c * (SIZE + PAD) + SIZE, y + SIZE)) for c in range(len(CLASSES))]


def real_row(archive: Path, split: str = "test", index: int = 0) -> list[Image.Image]:
    """``<split>/<class>/<index:04d>.jpg`` for every class, read from the ImageFolder archive."""
    wanted = {f"{split}/{name}/{index:04d}.jpg": name for name in CLASSES}
    found: dict[str, Image.Image] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted:
                data = tar.extractfile(member).read()
                found[wanted[name]] = Image.open(io.BytesIO(data)).convert("RGB")
                if len(found) == len(wanted):
                    break
    missing = [name for name in CLASSES if name not in found]
    if missing:
        raise SystemExit(f"{archive}: no {split}/<class>/{index:04d}.jpg for {', '.join(missing)}")
    return [found[name] for name in CLASSES]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def compose(rows: list[tuple[str, list[Image.Image]]], scale: int) -> Image.Image:
    cell, gap, label_w, header_h = SIZE * scale, 2, 118, 16
    font, small = _font(13), _font(10)
    width = label_w + len(CLASSES) * (cell + gap)
    height = header_h + len(rows) * (cell + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CLASSES):
        x = label_w + c * (cell + gap) + cell // 2
        draw.text((x, header_h // 2), name, fill="black", font=small, anchor="mm")
    for r, (label, images) in enumerate(rows):
        y = header_h + r * (cell + gap)
        draw.text((label_w - 8, y + cell // 2), label, fill="black", font=font, anchor="rm")
        for c, image in enumerate(images):
            canvas.paste(image.resize((cell, cell), Image.NEAREST), (label_w + c * (cell + gap), y))
    return canvas


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=root.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
                        help="CIFAR-10 JPEG ImageFolder archive (train/ and test/ of class folders)")
    parser.add_argument("--grids", type=Path, default=root / "docs" / "images", help="directory of the grids")
    parser.add_argument("--out", type=Path, default=root / "docs" / "images" / "synthetic-vs-real.png")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of each 32x32 image")
    args = parser.parse_args()
    rows = [(label, grid_row(args.grids / name)) for label, name in ROWS]
    rows.append(("real CIFAR-10", real_row(args.cifar)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(rows, args.scale).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
