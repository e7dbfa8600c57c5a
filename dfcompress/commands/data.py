"""``dfcompress data``: inspect, export and import synthetic data sets (:mod:`dfcompress.data.synthetic`),
added through ``register_commands``.

Nothing heavy is imported here: torch is imported inside the commands."""
from __future__ import annotations

import json
import sys

import click

from dfcompress import hookimpl

from . import CONTEXT_SETTINGS


@click.group(context_settings=CONTEXT_SETTINGS)
def data() -> None:
    """Inspect synthetic data sets."""


@data.command(context_settings=CONTEXT_SETTINGS)
@click.argument("directory", type=click.Path(file_okay=False))
def verify(directory: str) -> None:
    """Check every shard against the manifest's checksums; exit 1 and name the broken ones."""
    from ..data.synthetic import read_manifest, verify as verify_shards

    problems = verify_shards(directory)
    manifest = read_manifest(directory)
    for line in problems:
        click.echo(f"broken: {line}")
    n = len(manifest["shards"])
    state = "complete" if manifest.get("complete") else "unfinished"
    if problems:
        click.echo(f"{len(problems)} of {n} shard(s) broken in {directory}", err=True)
        sys.exit(1)
    click.echo(f"{n} shard(s) verified, {state}: {directory}")


@data.command(context_settings=CONTEXT_SETTINGS)
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
def export(directory: str, out: str) -> None:
    """Export a synthetic data set as an ImageFolder of PNG files."""
    from ..data.synthetic import export_imagefolder, load

    n = export_imagefolder(load(directory), out)
    click.echo(f"exported {n} PNG files to {out}")


@data.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("spec")
@click.option("--per-class", type=int, required=True, help="images drawn from each class")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the draw")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="data set directory (re-run to resume)")
@click.option("--teacher", default="demo", show_default=True, help="the teacher whose input size the images take")
@click.option("--weights", help="teacher weights (default: the source's own)")
@click.option("--trust-weights", is_flag=True, help="allow weights that need full unpickling (trusted files only)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def import_(spec, per_class, seed, out, teacher, weights, trust_weights, as_json) -> None:
    """Write real labelled images (e.g. cifar10:PATH:train) as a synthetic-format data set, for
    `dfcompress run --synthetic DIR`: the "real images through the same recipe" reference."""
    from ..bench.importing import import_real

    summary = import_real(spec, out, per_class=per_class, seed=seed, teacher=teacher, weights=weights,
                          trust_weights=trust_weights)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{summary['images']} images of {summary['classes']} classes from {spec} in {out} "
               f"(teacher accuracy on them {100 * summary['teacher_acc']:.1f} %)")


@hookimpl
def register_commands(cli):
    cli.add_command(data)
