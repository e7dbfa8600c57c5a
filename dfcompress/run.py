"""A run: its directory, configuration, teacher, components, stages and metrics. Tasks drive it."""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import options as opts
from ._version import __version__
from .components import Component, Teacher
from .config import RunConfig
from .context import RunContext, resolve_device
from .distributed import SINGLE, World, device_for
from .errors import ConfigError, DFCompressError
from .io import DirectoryLock, atomic_write_text
from .registry import Registry

logger = logging.getLogger(__name__)


def default_out_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.synth}-{config.task}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "torchvision", "timm", "torch-pruning", "numpy", "pluggy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "dfcompress": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **versions,
    }


#: what a run directory holds before any stage has finished (and the logs of ranks other than 0: log-rank<N>.txt)
RUN_BOOKKEEPING = frozenset({"config.toml", "env.json", "log.txt", ".lock"})


def _settings(config_toml: str) -> list[str]:
    """The lines of a config.toml without its top-level ``out`` (the same run, however its directory is spelled)."""
    lines, top = [], True
    for line in config_toml.splitlines():
        top = top and not line.lstrip().startswith("[")
        if not (top and line.partition("=")[0].strip() == "out"):
            lines.append(line)
    return lines


def same_request(previous_toml: str, current_toml: str) -> bool:
    """Whether two config.toml texts ask for the same run (``out`` aside: relative, absolute, trailing slash, or
    the default directory that a first run did not name)."""
    return _settings(previous_toml) == _settings(current_toml)


def finished_nothing(directory: Path) -> bool:
    """Whether a run directory holds only the bookkeeping of a run that failed before finishing any stage."""
    return all(p.name in RUN_BOOKKEEPING or p.match("log-rank*.txt") or (p.is_dir() and not any(p.iterdir()))
               for p in directory.iterdir())


class Run:
    """Everything a task needs: config, context (device, seed), registry, run directory, teacher, metrics."""

    def __init__(self, config: RunConfig, registry: Registry, *, quiet: bool = False, out_dir: Path | None = None,
                 world: World = SINGLE) -> None:
        self.config = config
        self.registry = registry
        if world.distributed and not (out_dir or config.out):
            raise ConfigError("a run of several processes needs --out DIR (or --resume DIR): a directory every process "
                              "sees, named the same on all of them")
        self.out_dir = Path(out_dir or config.out or default_out_dir(config))
        self.ctx = RunContext(
            device=resolve_device(device_for(config.device, world)), precision=config.precision,
            memory_format=config.memory_format, seed=config.seed, out_dir=self.out_dir,
            quiet=quiet or not world.is_main, world=world,
        )
        self.metrics: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.artifacts: dict[str, str] = {}
        #: values computed once per run and shared between stages (e.g. the teacher's eval logits)
        self.cache: dict[str, Any] = {}
        self._teacher: Teacher | None = None
        self._eval_data: Any = None
        self._lock = DirectoryLock(self.out_dir)
        self._log_handler: logging.Handler | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's reports and models (rank 0; the only process without torchrun)."""
        return self.ctx.world.is_main

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "Run":
        world = self.ctx.world
        with world.main_first("open the run directory"):
            if world.is_main:
                self._open()
            else:
                self._join()
        torch.manual_seed(self.config.seed)
        logger.info("run %s: %s", self.out_dir, json.dumps(self.config.to_dict(), default=str))
        return self

    def _log_to(self, name: str) -> None:
        self._log_handler = logging.FileHandler(self.out_dir / name, encoding="utf-8")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("dfcompress").addHandler(self._log_handler)

    def _join(self) -> None:
        """A rank other than 0: the directory rank 0 opened must be visible here with this run's config."""
        import socket

        rank = self.ctx.world.rank
        written = self.out_dir / "config.toml"
        if not written.is_file() or not same_request(written.read_text(encoding="utf-8"), self.config.to_toml()):
            raise ConfigError(f"rank {rank} on {socket.gethostname()} cannot see the run directory {self.out_dir} "
                              "that rank 0 opened: it must be on storage every process sees (docs/distributed.md)")
        self._log_to(f"log-rank{rank}.txt")

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        previous = self.out_dir / "config.toml"
        if previous.exists() and not same_request(previous.read_text(encoding="utf-8"), self.config.to_toml()):
            self._lock.release()
            raise DFCompressError(
                f"{self.out_dir} holds another run (its config.toml differs); continue it with "
                f"dfcompress run --resume {self.out_dir}, or choose another --out"
            )
        self._log_to("log.txt")
        atomic_write_text(self.out_dir / "config.toml", self.config.to_toml())
        atomic_write_text(self.out_dir / "env.json", json.dumps({**environment(), **self._world_info()}, indent=1))

    def _world_info(self) -> dict:
        world = self.ctx.world
        return {"world_size": world.size} if world.distributed else {}

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if self._log_handler is not None:
            logging.getLogger("dfcompress").removeHandler(self._log_handler)
            self._log_handler.close()
        if not self.is_main:
            return
        if exc_type is not None and issubclass(exc_type, DFCompressError) and finished_nothing(self.out_dir):
            # bad input found before any stage finished: leave the directory free for the corrected command
            for name in ("config.toml", "env.json"):
                (self.out_dir / name).unlink(missing_ok=True)
        self._lock.release()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; its seconds go into the report."""
        logger.info("stage %s started", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)
            logger.info("stage %s took %.1f s", name, self.timings[name])

    # -- components ----------------------------------------------------------------------------------
    def component(self, kind: str, name: str, options: dict, defaults: dict | None = None) -> Component:
        """Instantiate a registered component with its options (defaults < task defaults < user options)."""
        cls = self.registry.get(kind, name)
        values = {k: v for k, v in (defaults or {}).items() if k in {o.name for o in opts.options_of(cls.Config)}}
        values.update(options)
        config = opts.build(cls.Config, values, owner=f"{kind[:-1]} {name}")
        return cls(config, self.ctx)

    def synthesizer(self) -> Any:
        """The configured synthesizer; the run's ``iterations`` budget applies to those that iterate."""
        cls = self.registry.get("synthesizers", self.config.synth)
        overrides = {}
        if self.config.iterations is not None:
            if cls.iterations_option is not None:
                overrides[cls.iterations_option] = self.config.iterations
            else:
                logger.info("synthesizer %s does not iterate; --iterations is not used", self.config.synth)
        return self.component("synthesizers", self.config.synth, {**overrides, **self.config.synth_options})

    def check_before_work(self, *, distill_defaults: dict | None = None, pruner: bool = False) -> None:
        """Fail in seconds on what can be checked before any synthesis or training: the teacher and its weights,
        the eval data (readable, the teacher's class count), the synthetic-data source (a data set directory, or
        the synthesizer's options, its declared needs and an image count that can be trained on), and the
        options of the distiller (with the task's ``distill_defaults``) and, with ``pruner``, the pruner's options
        and a trial prune of the teacher (:meth:`dfcompress.components.Pruner.check_model`)."""
        from .synth.inversion import require_batchnorm

        cfg = self.config
        teacher = self.teacher
        if cfg.synthetic is not None:
            from .data.synthetic import read_manifest

            read_manifest(Path(cfg.synthetic))
        else:
            synth = self.synthesizer()
            synth.check_options()  # includes the declared iterations option
            if synth.needs_batchnorm:
                require_batchnorm(teacher, synth.name)
            if cfg.num_images < 2:
                raise ConfigError(f"--num-images must be at least 2 to train on, got {cfg.num_images}")
        self.distiller(distill_defaults).check_options()
        if self.ctx.world.distributed:
            self._check_world(distill_defaults)
        if pruner:
            chosen = self.pruner()
            chosen.check_options()
            # a trial prune of a copy of the teacher: an architecture that cannot be pruned fails here, in one line
            chosen.check_model(teacher.model, teacher.input, ratio=cfg.ratio, ratio_of=cfg.ratio_of, label=cfg.teacher)
        self.check_follow_up()
        _ = self.eval_data

    def _check_world(self, distill_defaults: dict | None) -> None:
        """What a run of several processes cannot do yet: the online schedule and time budgets (one process)."""
        from .schedule import choose_schedule

        synth = None if self.config.synthetic else self.synthesizer()
        mode = choose_schedule(self.config, synth, self.distiller(distill_defaults))
        if mode == "online" or self.config.budget_seconds is not None:
            what = "--time-budget" if self.config.budget_seconds is not None else "the online schedule"
            raise ConfigError(f"{what} runs in one process for now ({self.ctx.world.size} were started): run it "
                              "without torchrun, or use --schedule offline without --time-budget (docs/distributed.md)")

    def check_quantizer(self, model_spec: str) -> Any:
        """The configured quantizer, its options and this machine checked, and a trial of the model
        ``model_spec`` (the teacher's, or a student's architecture) through it: an UnsupportedModelError in
        seconds, before any synthesis, when it cannot be quantized."""
        quantizer = self.quantizer()
        quantizer.check_options()
        quantizer.check_environment()
        model = self.teacher.model if model_spec == self.config.teacher else self.build_model(model_spec)
        quantizer.check_model(model, self.teacher.input, label=model_spec)
        return quantizer

    def follow_up_task(self) -> Any:
        """The ``--then`` task (None without one)."""
        if self.config.then is None:
            return None
        return self.registry.get("tasks", self.config.then)(ctx=self.ctx)

    def check_follow_up(self) -> None:
        """With ``--then``: the first task must hand on a model and the second take one; then the second task's
        own checks (:meth:`dfcompress.components.Task.check_follow`)."""
        cfg = self.config
        follow = self.follow_up_task()
        if follow is None:
            return
        first = self.registry.get("tasks", cfg.task)(ctx=self.ctx)
        if not first.produces_model:
            raise ConfigError(f"--then {cfg.then}: task {cfg.task} does not end with a compressed model to hand on")
        if not follow.accepts_model:
            raise ConfigError(f"--then {cfg.then}: task {cfg.then} cannot take another task's model")
        follow.check_follow(self, model_spec=first.model_spec(self))

    def follow_up(self, model: nn.Module, *, source: str, data: Any) -> None:
        """Hand the compressed ``model`` (the report's row ``source``) and the run's synthetic ``data`` to the
        ``--then`` task, if any."""
        follow = self.follow_up_task()
        if follow is not None:
            follow.follow(self, model, source=source, data=data)

    def distiller(self, defaults: dict | None = None) -> Any:
        options = dict(self.config.distill_options)
        if self.config.epochs is not None:
            options.setdefault("epochs", self.config.epochs)
        return self.component("distillers", self.config.distiller, options, defaults)

    def pruner(self) -> Any:
        return self.component("pruners", self.config.pruner, self.config.prune_options)

    def quantizer(self) -> Any:
        return self.component("quantizers", self.config.quantizer, self.config.quant_options)

    # -- models and data ---------------------------------------------------------------------------
    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            from .models import load_teacher

            with self.stage("load teacher"):
                self._teacher = load_teacher(
                    self.config.teacher, weights=self.config.weights, trust_weights=self.config.trust_weights,
                    device=self.ctx.device, num_classes=self.config.num_classes, image_size=self.config.image_size,
                )
                if self.config.fuse_bn:
                    from .models.fusion import fused_teacher

                    self._teacher = fused_teacher(self._teacher)
                self.ctx.layout(self._teacher.model)
        return self._teacher

    def build_model(self, spec: str) -> nn.Module:
        """A randomly initialised model for the teacher's classes and input, on the run's device."""
        from .models import create_model

        model, spec_input = create_model(spec, num_classes=self.teacher.input.num_classes,
                                         image_size=self.teacher.input.image_size)
        if spec_input.channels != self.teacher.input.channels:
            raise ConfigError(
                f"student {spec} takes {spec_input.channels} input channels, the teacher {self.teacher.input.channels}"
            )
        return self.ctx.layout(model.to(self.ctx.device))

    @property
    def eval_data(self) -> Any:
        """Real evaluation data (``--eval-data`` or the teacher source's default), or None."""
        if self._eval_data is None:
            spec = self.config.eval_data
            if spec is None:
                from .models import default_eval_data

                spec = default_eval_data(self.config.teacher)
            if spec is None:
                return None
            from .data.real import load_data

            with self.stage("load eval data"):
                self._eval_data = load_data(spec, self.teacher.input, teacher=self.config.teacher)
        return self._eval_data

    def synthetic_data(self, synth: Any = None, student: nn.Module | None = None, directory: Path | None = None) -> Any:
        """The synthetic data set: ``--synthetic DIR`` when given, else synthesized into the run directory."""
        from .data import synthetic as synthdata
        from .synth.driver import finish_shards, open_writer, run_synthesis

        if self.config.synthetic:
            data = synthdata.load(self.config.synthetic)
            self._check_synthetic(data)
            self.artifacts["synthetic"] = str(self.config.synthetic)
            return data
        synth = synth if synth is not None else self.synthesizer()
        directory = directory or self.out_dir / "synthetic"
        writer = open_writer(directory, self.teacher, synth, num_images=self.config.num_images,
                             batch_size=self.config.batch_size, seed=self.config.seed, labels=self.config.labels,
                             world=self.ctx.world)
        with self.stage("synthesize"):
            synth.setup(self.teacher)
            try:
                run_synthesis(synth, self.teacher, writer, self.ctx, labels=self.config.labels, student=student)
            finally:
                synth.close()
            finish_shards(writer)
        self.artifacts["synthetic"] = str(directory)
        return synthdata.load(directory)

    def _check_synthetic(self, data: Any) -> None:
        expected = list(self.teacher.input.as_dict()["image_size"])
        shape = list(data.images.shape[1:])
        if shape != [self.teacher.input.channels, *expected]:
            raise DFCompressError(
                f"synthetic data set {self.config.synthetic} has images of shape {shape}, the teacher takes "
                f"{[self.teacher.input.channels, *expected]}"
            )

    def write_json(self, name: str, data: dict) -> Path:
        return atomic_write_text(self.out_dir / name, json.dumps(data, indent=1, default=str))


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    return replace(config, **changes)
