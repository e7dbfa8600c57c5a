"""The ``dfcompress`` command line: the core commands (``run``, ``synthesize``, ``plugins``, ``models``, ``show``),
:func:`build_cli` and :func:`main`. Every other command lives in :mod:`dfcompress.commands` and is added through
the ``register_commands`` hook. Only this module and the command modules print; heavy imports happen inside
commands."""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import click

from ._version import __version__
from .commands import CONTEXT_SETTINGS
from .config import SCALAR_FIELDS, SYNTHESIZE_FIELDS, make_run_config, read_config_file
from .errors import DFCompressError, Interrupted
from .options import Option, parse_assignments

logger = logging.getLogger("dfcompress")


def _click_type(option: Option) -> Any:
    if option.choices:
        return click.Choice(option.choices)
    return {int: int, float: float, bool: bool}.get(option.type, str)


def run_config_options(fields: list[Option]):
    """Decorate a command with one flag per RunConfig field (default None: unset flags do not override)."""

    def decorate(fn):
        for option in reversed(fields):
            flag = "--" + option.name.replace("_", "-")
            default = "none" if option.default is None else option.default
            help_text = f"{option.help} [default: {default}]"
            if option.type is bool:
                fn = click.option(flag, option.name, is_flag=True, default=None, help=option.help)(fn)
            else:
                fn = click.option(flag, option.name, type=_click_type(option), default=None, help=help_text)(fn)
        return fn

    return decorate


component_option_flags = [
    click.option("-s", "--synth-opt", "synth_opt", multiple=True, metavar="KEY=VALUE",
                 help="a synthesizer option (repeatable); see `dfcompress show synthesizers NAME`"),
    click.option("-d", "--distill-opt", "distill_opt", multiple=True, metavar="KEY=VALUE",
                 help="a distiller option (repeatable)"),
    click.option("-p", "--prune-opt", "prune_opt", multiple=True, metavar="KEY=VALUE",
                 help="a pruner option (repeatable)"),
    click.option("-Q", "--quant-opt", "quant_opt", multiple=True, metavar="KEY=VALUE",
                 help="a quantizer option (repeatable); see `dfcompress show quantizers x86`"),
]


def with_component_options(fn):
    for deco in reversed(component_option_flags):
        fn = deco(fn)
    return fn


@contextlib.contextmanager
def graceful_stop(ctx: Any) -> Iterator[None]:
    """First SIGINT/SIGTERM asks the running loop to stop at the next step (state is saved); a second one
    interrupts at once."""

    def handler(signum, frame):
        if ctx.stop_requested:
            raise KeyboardInterrupt
        ctx.stop_requested = True
        click.echo("\nstopping after the current step (press Ctrl-C again to abort at once) ...", err=True)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("dfcompress")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    handler.setLevel(level)


def _registry():
    from .plugins import get_registry

    return get_registry()


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="dfcompress")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars, warnings and errors only")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, quiet: bool) -> None:
    """Data-free compression of image classifiers: synthesize training images from the model alone
    (model inversion), then distill or prune and fine-tune, and report accuracy, size and speed.

    \b
    Try:  dfcompress run --synth natural --task prune --ratio 0.9
          dfcompress plugins
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)
    _setup_logging(verbose, quiet)


def _layers(config_file: str | None, resume: str | None, values: dict, synth_opt, distill_opt, prune_opt,
            quant_opt=()) -> list[dict]:
    layers: list[dict] = []
    if resume:
        path = Path(resume) / "config.toml"
        if not path.is_file():
            raise DFCompressError(f"--resume {resume}: no config.toml there; is it a run directory?")
        layers.append(read_config_file(path))
        layers.append({"out": str(resume)})
    if config_file:
        layers.append(read_config_file(config_file))
    layers.append({k: v for k, v in values.items() if v is not None})
    layers.append({
        "synth_options": parse_assignments(synth_opt, flag="--synth-opt"),
        "distill_options": parse_assignments(distill_opt, flag="--distill-opt"),
        "prune_options": parse_assignments(prune_opt, flag="--prune-opt"),
        "quant_options": parse_assignments(quant_opt, flag="--quant-opt"),
    })
    return layers


def _with_source_defaults(layers: list[dict], registry: Any) -> list[dict]:
    """Put the suggested run settings below every user layer: the teacher source's, then the synthesizer's
    (``Synthesizer.run_defaults``) above them. An unknown synthesizer name is left to the caller's check."""
    teacher = next((layer["teacher"] for layer in reversed(layers) if layer.get("teacher")), None)
    synth = next((layer["synth"] for layer in reversed(layers) if layer.get("synth")), None)
    from .config import RunConfig
    from .errors import DFCompressError
    from .models import run_defaults

    try:
        synth_defaults = dict(getattr(registry.get("synthesizers", synth or RunConfig.synth), "run_defaults", {}))
    except DFCompressError:
        synth_defaults = {}
    return [run_defaults(teacher or RunConfig.teacher, registry=registry), synth_defaults, *layers]


@cli.command(context_settings=CONTEXT_SETTINGS)
@run_config_options(SCALAR_FIELDS)
@with_component_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="a TOML run configuration")
@click.option("--resume", type=click.Path(file_okay=False), help="continue an interrupted run in this directory")
@click.option("--json", "as_json", is_flag=True, help="print metrics.json instead of the table")
@click.pass_context
def run(ctx: click.Context, config_file, resume, as_json, synth_opt, distill_opt, prune_opt, quant_opt,
        **values) -> None:
    """Synthesize images from the teacher, compress with them, evaluate, report.

    Every option can also come from --config FILE (TOML; a run writes its resolved config.toml)."""
    layers = _layers(config_file, resume, values, synth_opt, distill_opt, prune_opt, quant_opt)
    registry = _registry()
    config = make_run_config(*_with_source_defaults(layers, registry))
    task_cls = registry.get("tasks", config.task)
    registry.get("synthesizers", config.synth)  # fail fast on unknown names, before any work
    from .distributed import init_world
    from .run import Run
    from .report import summary_rows, text_table, write_report

    world = init_world(config.device)
    with Run(config, registry, quiet=ctx.obj["quiet"], world=world) as run_:
        task = task_cls(ctx=run_.ctx)
        with graceful_stop(run_.ctx):
            try:
                with world.main_first("the checks before work"):  # rank 0 fills the caches the others then read
                    task.check(run_)  # everything that can fail without work fails here, in seconds
                metrics = task.run(run_)
            except Interrupted as exc:
                exc.resume_hint = f"dfcompress run --resume {run_.out_dir}"
                raise
        if not run_.is_main:
            return
        write_report(run_.out_dir, config.to_toml(), metrics, run_.timings, run_.artifacts)
    if as_json:
        click.echo((run_.out_dir / "metrics.json").read_text())
        return
    header, rows = summary_rows(metrics)
    click.echo(text_table(header, rows))
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in run_.timings.items())
    click.echo(f"\ntime: {timing}\nreport: {run_.out_dir / 'report.md'}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@run_config_options(SYNTHESIZE_FIELDS)
@click.option("-s", "--synth-opt", "synth_opt", multiple=True, metavar="KEY=VALUE", help="a synthesizer option")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="data set directory (re-run to resume)")
@click.option("--export-png", type=click.Path(file_okay=False), help="also export the images as an ImageFolder of PNGs")
@click.pass_context
def synthesize(ctx: click.Context, synth_opt, out, export_png, **values) -> None:
    """Write a synthetic data set (shards + manifest) that `run --synthetic DIR` and other tools can read."""
    registry = _registry()
    layers = [{k: v for k, v in values.items() if v is not None},
              {"out": out, "synth_options": parse_assignments(synth_opt, flag="--synth-opt")}]
    config = make_run_config(*_with_source_defaults(layers, registry))
    registry.get("synthesizers", config.synth)
    from .distributed import init_world
    from .run import Run

    world = init_world(config.device)
    with Run(config, registry, quiet=ctx.obj["quiet"], world=world) as run_:
        with graceful_stop(run_.ctx):
            try:
                with world.main_first("load the teacher"):  # rank 0 fills the caches the others then read
                    _ = run_.teacher
                data = run_.synthetic_data(directory=run_.out_dir)
            except Interrupted as exc:
                exc.resume_hint = f"re-run the same command (dfcompress synthesize ... --out {out})"
                raise
    if not run_.is_main:
        return
    click.echo(f"{len(data)} images in {out} (synthesis {run_.timings.get('synthesize', 0):.0f} s)")
    if export_png:
        from .data.synthetic import export_imagefolder

        n = export_imagefolder(data, export_png)
        click.echo(f"exported {n} PNG files to {export_png}")


def _capabilities(registry: Any) -> dict[str, dict]:
    """The declared capabilities of every synthesizer (loads the classes, so torch: only on request)."""
    found = {}
    for e in registry.list("synthesizers"):
        try:
            found[e.name] = registry.get("synthesizers", e.name).capabilities()
        except DFCompressError as exc:
            logger.warning("%s", exc)
    return found


CAPABILITY_FLAGS = {"uses_student": "student", "iterates": "iterates", "stateful": "stateful",
                    "needs_batchnorm": "needs BN", "needs_guides": "needs guides"}


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--capabilities", "with_capabilities", is_flag=True,
              help="also show what each synthesizer declares (uses the student, iterates, keeps state, needs "
                   "BatchNorm or guide images, default schedule); loads the classes")
def plugins(as_json: bool, with_capabilities: bool) -> None:
    """List every registered synthesizer, distiller, pruner, task, model source and data source."""
    from .registry import KINDS

    registry = _registry()
    capabilities = _capabilities(registry) if with_capabilities else {}
    if as_json:
        data = {kind: [e.as_dict() for e in registry.list(kind)] for kind in KINDS}
        for entry in data["synthesizers"]:
            if entry["name"] in capabilities:
                entry["capabilities"] = capabilities[entry["name"]]
        data["errors"] = [{"package": p, "error": m} for p, m in registry.errors]
        click.echo(json.dumps(data, indent=1))
        return
    for kind in KINDS:
        click.echo(f"{kind}:")
        for e in registry.list(kind):
            alias = f" (alias {', '.join(e.aliases)})" if e.aliases else ""
            click.echo(f"  {e.name:<15} {e.summary}{alias}  [{e.package} {e.version}]")
            if e.name in capabilities and kind == "synthesizers":
                caps = capabilities[e.name]
                flags = [text for key, text in CAPABILITY_FLAGS.items() if caps.get(key)]
                click.echo(f"  {'':<15} {', '.join(flags) or 'no special needs'}; "
                           f"default schedule {caps['default_schedule']}")
    for package, message in registry.errors:
        click.echo(f"broken plugin {package}: {message}", err=True)


@cli.command(context_settings=CONTEXT_SETTINGS)
def models() -> None:
    """List the model sources (teacher/student specs) with example specs."""
    registry = _registry()
    for e in registry.list("teachers"):
        click.echo(f"{e.name + ':':<14} {e.summary}  [{e.package}]")
    click.echo("\nexamples: demo, demo:small, cifar:resnet56 --weights resnet56.th, timm:resnet18, torchvision:resnet18")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("kind", type=click.Choice(["synthesizers", "distillers", "pruners", "quantizers", "tasks"]))
@click.argument("name")
def show(kind: str, name: str) -> None:
    """Show a component's declared capabilities (synthesizers) and its options (name, type, default, help)
    as a Markdown table."""
    from .options import markdown_table, options_of

    cls = _registry().get(kind, name)
    click.echo(f"{cls.name}: {cls.summary}")
    if getattr(cls, "paper", None):
        click.echo(f"paper: {cls.paper}")
    capabilities = getattr(cls, "capabilities", None)
    if callable(capabilities):
        click.echo("\ncapabilities:")
        for key, value in capabilities().items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            click.echo(f"  {key + ':':<17} {text}")
        if getattr(cls, "iterations_option", None):
            click.echo(f"  {'--iterations:':<17} sets option {cls.iterations_option}")
    click.echo("")
    click.echo(markdown_table(cls.Config) if options_of(cls.Config) else "no options")


def build_cli() -> click.Group:
    """The CLI with the sub-commands that plugins add through ``register_commands``, the built-in ones of
    :mod:`dfcompress.commands` included (one plugin at a time, so that a broken plugin costs only its own
    commands)."""
    from .plugins import get_plugin_manager, strict

    pm = get_plugin_manager()
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(**{arg: cli for arg in impl.argnames})
        except Exception as exc:
            package = pm.dists.get(impl.plugin_name, (impl.plugin_name, ""))[0]
            if strict():
                raise DFCompressError(f"plugin {package} failed to add its commands: {exc}") from exc
            logger.warning("skipping the commands of plugin %s: %s: %s", package, type(exc).__name__, exc)
    return cli


def _rank_prefix() -> str:
    """``[rank N] `` in a run of several processes (torchrun), so that each line says which process wrote it."""
    import os

    return f"[rank {os.environ.get('RANK', '?')}] " if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    finally:
        if "torch.distributed" in sys.modules:
            from .distributed import close_world

            close_world()


def _main(argv: list[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        build_cli().main(args=argv, prog_name="dfcompress", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except Interrupted as exc:
        click.echo(f"{_rank_prefix()}interrupted: {exc}", err=True)
        if exc.resume_hint:
            click.echo(f"resume with: {exc.resume_hint}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except DFCompressError as exc:
        if debug:
            raise
        click.echo(f"{_rank_prefix()}error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except RuntimeError as exc:
        if debug or not _rank_prefix():  # outside torchrun a RuntimeError is a bug: show its traceback
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        click.echo(f"{_rank_prefix()}error: {first} (another process of this run may have failed: see its message)",
                   err=True)
        sys.exit(2)
    except OSError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or ''})".replace(" ()", ""), err=True)
        sys.exit(2)
