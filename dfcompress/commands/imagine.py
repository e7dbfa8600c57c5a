"""``dfcompress imagine PHOTO...``: more images like these, from a classifier alone (IMAGINE,
:mod:`dfcompress.synth.imagine`), added through ``register_commands``.

Each photo is one target: its outputs are made in one optimisation (the paper's setting: one target, a batch of
outputs, one patch discriminator). The directory gets ``images/<photo>/NNN.png``, ``grid.png`` (each row: the
target, then its outputs), ``report.json`` and ``report.md``. A finished photo is recorded in
``done/<photo>.json``; re-running the same command skips it (Ctrl-C keeps the finished photos).

torch is imported inside the command so that ``dfcompress --help`` stays fast."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from dfcompress import hookimpl


def _load_photo(path: Path, channels: int, size: tuple[int, int]) -> Any:
    """A photo as uint8 C x H x W at the teacher's input: centre square crop, then resized (bicubic)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from ..errors import DataError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size[1], size[0]), Image.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def photo_report(teacher: Any, target: Any, outputs: Any, y_star: int) -> dict:
    """Teacher-side measures of one target's outputs (uint8 tensors): the teacher's class and confidence on the
    target, its agreement with y* and confidence on the outputs, diversity (mean pairwise cosine distance of the
    teacher's penultimate features between outputs; mean pairwise RMS pixel distance) and fidelity (mean cosine
    similarity of each output's features to the target's)."""
    import torch

    from ..metrics import mean_pairwise_cosine_distance
    from ..metrics.features import logits_and_features

    images = torch.cat([target.unsqueeze(0), outputs])
    logits, features = logits_and_features(teacher.model, images, teacher.input)
    probs = logits.softmax(1)
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    pixels = outputs.float().div(255).flatten(1)
    n = pixels.shape[0]
    rms = torch.cdist(pixels, pixels).div(pixels.shape[1] ** 0.5)
    return {
        "target_class": int(probs[0].argmax()), "target_confidence": round(float(probs[0].max()), 4),
        "class": y_star, "outputs": n,
        "agreement": round(float((probs[1:].argmax(1) == y_star).float().mean()), 4),
        "confidence": round(float(probs[1:, y_star].mean()), 4),
        "diversity_features": round(mean_pairwise_cosine_distance(features[1:]), 4) if n > 1 else None,
        "diversity_pixels": round(float(rms.sum() / (n * (n - 1))), 4) if n > 1 else None,
        "fidelity": round(float((unit[1:] @ unit[0]).mean()), 4),
    }


def _markdown(rows: list[dict], command: str) -> str:
    lines = ["# dfcompress imagine", "", f"`{command}`", "", "![targets and outputs](grid.png)", "",
             "| photo | teacher's class (confidence) | y* | outputs | agreement | confidence | diversity (features) "
             "| diversity (pixels) | fidelity | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['photo']} | {r['target_class']} ({r['target_confidence']:.2f}) | {r['class']} | "
                     f"{r['outputs']} | {r['agreement']:.2f} | {r['confidence']:.2f} | {r['diversity_features']} | "
                     f"{r['diversity_pixels']} | {r['fidelity']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "agreement / confidence: the teacher's on the outputs for y*; diversity: mean pairwise cosine distance "
              "of the teacher's penultimate features between outputs, and mean pairwise RMS pixel distance; fidelity: "
              "mean cosine similarity of each output's features to its target's.", ""]
    return "\n".join(lines)


@click.command("imagine")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--teacher", "teacher_spec", default="demo", show_default=True, help="teacher model spec")
@click.option("--weights", default=None, help="teacher weights file (default: the source's own)")
@click.option("--trust-weights", is_flag=True, help="allow weights that need full unpickling (trusted files only)")
@click.option("--fuse-bn", is_flag=True, help="fold the teacher's BatchNorm layers into its convolutions first")
@click.option("--num-images", type=int, default=8, show_default=True, help="outputs per photo")
@click.option("--iterations", type=int, default=None, help="Adam steps per photo (default: the synthesizer's)")
@click.option("-s", "--synth-opt", "synth_opt", multiple=True, metavar="KEY=VALUE",
              help="an option of the imagine synthesizer (dfcompress show synthesizers imagine)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory (re-run to resume)")
def imagine(photos: tuple[str, ...], teacher_spec: str, weights: str | None, trust_weights: bool, fuse_bn: bool,
            num_images: int, iterations: int | None, synth_opt: tuple[str, ...], seed: int, device: str,
            out: str) -> None:
    """More images like these: new, varied images of each photo's content, from the teacher alone (IMAGINE)."""
    import torch
    from torchvision.utils import save_image

    from ..cli import graceful_stop
    from ..context import RunContext, resolve_device
    from ..errors import ConfigError, Interrupted
    from ..io import atomic_write_text
    from ..models import load_teacher
    from ..options import build, parse_assignments
    from ..synth.imagine import Imagine

    if num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {num_images}")
    paths = [Path(p) for p in photos]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"no such photo: {', '.join(missing[:5])}")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ConfigError("two photos have the same file name; rename one (outputs are stored by name)")
    options = parse_assignments(synth_opt, flag="--synth-opt")
    options.setdefault("guides", "<the photos>")
    if iterations is not None:
        options["iterations"] = iterations
    ctx = RunContext(device=resolve_device(device), seed=seed, quiet=True)
    synth = Imagine(build(Imagine.Config, options, owner="imagine"), ctx)
    synth.check_options()
    teacher = load_teacher(teacher_spec, weights=weights, trust_weights=trust_weights, device=ctx.device)
    if fuse_bn:
        from ..models.fusion import fused_teacher

        teacher = fused_teacher(teacher)
    targets = torch.stack([_load_photo(p, teacher.input.channels, teacher.input.image_size) for p in paths])
    synth.teacher = teacher
    guides = synth.use_guides(targets)
    cfg = synth.config
    root = Path(out)
    (root / "done").mkdir(parents=True, exist_ok=True)
    command = "dfcompress imagine " + " ".join(
        [*photos, f"--teacher {teacher_spec}", *([f"--weights {weights}"] if weights else []),
         *(["--fuse-bn"] if fuse_bn else []), f"--num-images {num_images}",
         *[f"-s {k}={v}" for k, v in options.items() if k != "guides"], f"--seed {seed}", f"--out {out}"])
    rows, grid = [], []
    with graceful_stop(ctx):
        for k, (path, stem) in enumerate(zip(paths, stems)):
            done = root / "done" / f"{stem}.json"
            folder = root / "images" / stem
            if done.is_file():
                row = json.loads(done.read_text())
                outputs = torch.stack([_load_photo(folder / f"{i:03d}.png", teacher.input.channels,
                                                   teacher.input.image_size) for i in range(row["outputs"])])
            else:
                y_star = int(synth.cross_entropy_targets(torch.tensor([k]), guides.labels[k:k + 1])[0])
                labels = torch.full((num_images,), y_star, dtype=torch.long)
                generator = torch.Generator(device=ctx.device).manual_seed(seed * 100003 + k)
                started = time.perf_counter()
                batch = synth.imagine(torch.full((num_images,), k, dtype=torch.long), labels, generator)
                if ctx.stop_requested:
                    raise Interrupted(f"stopped during {path.name}; {k} photo(s) finished",
                                      resume_hint="re-run the same command")
                outputs = batch.images.mul(255).round().to(torch.uint8)
                folder.mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(outputs):
                    save_image(image.float() / 255, str(folder / f"{i:03d}.png"))
                row = {"photo": path.name, **photo_report(teacher, targets[k], outputs, y_star),
                       "seconds": round(time.perf_counter() - started, 1), "iterations": int(batch.metrics["iterations"]),
                       "loss_fm": batch.metrics.get("loss_fm"), "loss_ce": batch.metrics["loss_ce"]}
                atomic_write_text(done, json.dumps(row, indent=1))
            rows.append(row)
            grid.append(torch.cat([targets[k].unsqueeze(0), outputs]).float() / 255)
            click.echo(f"{path.name}: {row['outputs']} images, teacher agreement {row['agreement']:.2f}, "
                       f"diversity {row['diversity_features']}, fidelity {row['fidelity']:.3f}")
    save_image(torch.cat(grid), str(root / "grid.png"), nrow=num_images + 1, padding=1)
    report = {"command": command, "teacher": teacher_spec, "fuse_bn": fuse_bn, "options": {
        k: v for k, v in vars(cfg).items() if k != "guides"}, "photos": rows}
    atomic_write_text(root / "report.json", json.dumps(report, indent=1, default=str))
    atomic_write_text(root / "report.md", _markdown(rows, command))
    click.echo(f"report: {root / 'report.md'}")


@hookimpl
def register_commands(cli):
    cli.add_command(imagine)
