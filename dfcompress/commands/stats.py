"""``dfcompress stats collect``: class-conditional statistics for the ``seeded`` synthesizer
(:mod:`dfcompress.synth.seeded_stats`), added through ``register_commands``.

torch is imported inside the command so that ``dfcompress --help`` stays fast."""
from __future__ import annotations

import click

from dfcompress import hookimpl


@click.group("stats")
def stats() -> None:
    """Class-conditional feature statistics (for --synth seeded)."""


@stats.command("collect")
@click.option("--teacher", "teacher_spec", required=True, help="teacher spec, e.g. cifar:resnet56 or timm:resnet18")
@click.option("--weights", default=None, help="teacher weights file (state dict)")
@click.option("--fuse-bn", is_flag=True, help="fold the teacher's BatchNorms into its convolutions first (collect for "
                                              "a run with --fuse-bn: the layer outputs differ)")
@click.option("--data", "data_spec", required=True,
              help="labelled images: a class-per-folder directory of seed images, or a data spec (cifar10:PATH:train)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="output .safetensors file")
@click.option("--per-class", type=int, default=None, help="use at most N images per class (random, --seed)")
@click.option("--augment", type=int, default=0, show_default=True,
              help="add K random crop+flip views of every image (one-seed scenario C)")
@click.option("--layers", default="Conv2d", show_default=True,
              help="layers whose outputs are summarised: class names (Conv2d,Linear) or re:REGEX on module names")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def collect(
    teacher_spec: str,
    weights: str | None,
    fuse_bn: bool,
    data_spec: str,
    out_path: str,
    per_class: int | None,
    augment: int,
    layers: str,
    batch_size: int,
    seed: int,
    device: str,
) -> None:
    """Collect per-class mean/variance of the teacher's layer outputs on labelled images."""
    from ..context import resolve_device
    from ..data.real import load_data
    from ..models import load_teacher
    from ..synth.seeded_stats import collect_stats

    dev = resolve_device(device)
    teacher = load_teacher(teacher_spec, weights=weights, device=dev)
    if fuse_bn:
        from ..models.fusion import fused_teacher

        teacher = fused_teacher(teacher)
    data = load_data(data_spec, teacher.input, teacher=teacher_spec)
    if per_class is not None:
        data = data.subset_per_class(per_class, seed=seed)
    result = collect_stats(teacher, data.images, data.labels, layers=layers, augment=augment,
                           batch_size=batch_size, seed=seed, device=dev)
    result.metadata.update(data=data.name, classes=list(data.classes), augment=augment)
    path = result.save(out_path)
    counts = ", ".join(f"{name}:{int(c)}" for name, c in zip(data.classes, result.counts))
    click.echo(f"wrote {path}: {len(result.layers)} layers, views per class {counts}")


@hookimpl
def register_commands(cli):
    cli.add_command(stats)
