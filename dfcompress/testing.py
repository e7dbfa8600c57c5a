"""A plugin author's test kit: contract checks for synthesizers, distillers, pruners and tasks.

Every built-in passes them, and a third-party package calls them from its own tests::

    from dfcompress.testing import check_synthesizer
    from dfcompress_example.impressions import ClassImpressions

    def test_contract():
        check_synthesizer(ClassImpressions)

A check raises :class:`ContractError` (an ``AssertionError``, so pytest shows it as a failure) whose
message names the class and lists what is wrong. Class-level checks (base class, ``name``, ``summary``,
the ``Config`` dataclass and its round trip through :mod:`dfcompress.options`, declared capabilities)
come first; then the behavioural check runs the component on tiny models built here (a BatchNorm CNN at
16 x 16, see :func:`tiny_teacher`), on the CPU, in well under a second for the built-ins.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .components import (
    SCHEDULES,
    Component,
    Distiller,
    InputSpec,
    Pruner,
    PruneResult,
    SynthBatch,
    Synthesizer,
    Task,
    Teacher,
)
from .context import RunContext
from .synth.contract import batch_problems, metric_problems
from .options import as_dict, build, options_of

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKS",
    "ContractError",
    "check_distiller",
    "check_pruner",
    "check_registered",
    "check_synthesizer",
    "check_task",
    "tiny_cnn",
    "tiny_teacher",
]

#: the input of the models built here: small enough for fast checks, large enough for a 3-level pyramid
TINY_INPUT = InputSpec(image_size=(16, 16), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=10)

#: the option types the CLI (``--synth-opt key=value``) and config files can set
_SCALARS = (bool, int, float, str)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
#: option values for a quick behavioural run of a distiller, used where its Config has the field
_QUICK_DISTILL = {"epochs": 1, "batch_size": 8}


class ContractError(AssertionError):
    """A component breaks the plugin contract; the message says how."""


# --------------------------------------------------------------------------- tiny models


def tiny_cnn(spec: InputSpec = TINY_INPUT, *, seed: int = 0, width: int = 8) -> nn.Module:
    """A three-block BatchNorm CNN (stride 1, 2, 2, global pooling, linear head) for ``spec``, in eval mode.

    The BatchNorm running statistics are made non-trivial by a few forward passes on random images; the
    weights are random (seeded), nothing is trained. The global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(spec.channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, spec.num_classes),
        )
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(spec.normalize(torch.rand(8, spec.channels, *spec.image_size)))
    return model.eval()


def tiny_teacher(spec: InputSpec = TINY_INPUT, *, seed: int = 0) -> Teacher:
    """A frozen :func:`tiny_cnn` (eval mode, no gradients) as a :class:`~dfcompress.components.Teacher`."""
    model = tiny_cnn(spec, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, spec, "dfcompress.testing:tiny_cnn")


def _pixels(spec: InputSpec, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, spec.channels, *spec.image_size), generator=g) * 255).to(torch.uint8)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model: nn.Module, before: Mapping[str, torch.Tensor]) -> list[str]:
    after = model.state_dict()
    return [k for k, v in before.items() if k not in after or not torch.equal(after[k], v)]


# --------------------------------------------------------------------------- class-level checks


def _label(cls: Any) -> str:
    name = getattr(cls, "name", "")
    qualname = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"
    return f"{qualname} ('{name}')" if name else qualname


def _fail(cls: Any, problems: Iterable[str]) -> None:
    problems = list(problems)
    if problems:
        raise ContractError(f"{_label(cls)} breaks the plugin contract:\n  - " + "\n  - ".join(problems))


def _cli_text(value: Any) -> str:
    """How a user types ``value`` after ``--synth-opt key=``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_cli_text(v) for v in value)
    return str(value)


def _settable(tp: Any) -> bool:
    if tp in _SCALARS:
        return True
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return all(a in _SCALARS for a in args)
    return False


def config_problems(config_cls: Any) -> list[str]:
    """What is wrong with an options dataclass (empty if nothing): see :func:`check_synthesizer`."""
    if not (inspect.isclass(config_cls) and dataclasses.is_dataclass(config_cls)):
        return [f"Config must be a dataclass, got {config_cls!r}"]
    problems = []
    if not config_cls.__dataclass_params__.frozen:
        problems.append("Config must be a frozen dataclass (@dataclass(frozen=True))")
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"option '{f.name}' has no default")
        help_text = f.metadata.get("help")
        if not isinstance(help_text, str) or not help_text.strip():
            problems.append(f"option '{f.name}' has no help (field(..., metadata={{'help': '...'}}))")
    try:
        options = options_of(config_cls)
    except Exception as exc:  # noqa: BLE001 - unresolvable annotations
        return problems + [f"the types of Config's fields do not resolve: {type(exc).__name__}: {exc}"]
    for o in options:
        if not _settable(o.type):
            problems.append(f"option '{o.name}' has type {o.type!r}, which --*-opt and config files cannot set "
                            f"(use bool, int, float, str, a tuple of those, or Optional of one)")
        if o.choices and o.default is not None and o.default not in o.choices:
            problems.append(f"option '{o.name}' defaults to {o.default!r}, not one of its choices {o.choices}")
    if problems:
        return problems
    try:
        default = config_cls()
    except Exception as exc:  # noqa: BLE001 - any failure breaks the contract
        return [f"Config() with no arguments raised {type(exc).__name__}: {exc}"]
    values = as_dict(default)
    for kind, given in (("as_dict values", values),
                        ("CLI strings", {o.name: _cli_text(getattr(default, o.name)) for o in options})):
        try:
            again = as_dict(build(config_cls, given, owner="Config"))
        except Exception as exc:  # noqa: BLE001 - any failure breaks the contract
            problems.append(f"the defaults do not round-trip through dfcompress.options.build from {kind}: "
                            f"{type(exc).__name__}: {exc}")
            continue
        if again != values:
            diff = {k: (values[k], again.get(k)) for k in values if again.get(k) != values[k]}
            problems.append(f"the defaults do not round-trip through dfcompress.options.build from {kind}: "
                            f"(default, rebuilt) = {diff}")
    return problems


def _component_problems(cls: Any, base: type) -> list[str]:
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ContractError(f"{_label(cls)} must be a subclass of dfcompress.components.{base.__name__}")
    problems = []
    if inspect.isabstract(cls):
        problems.append(f"abstract method(s) not implemented: {', '.join(sorted(cls.__abstractmethods__))}")
    name, summary, paper = cls.name, cls.summary, cls.paper
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(f"name must be a non-empty lower-case snake_case string, got {name!r}")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
        problems.append(f"summary must be a non-empty one-line string, got {summary!r}")
    if paper is not None and (not isinstance(paper, str) or not paper.strip()):
        problems.append(f"paper must be None or a non-empty string, got {paper!r}")
    problems += config_problems(cls.Config)
    return problems


def _synthesizer_class_problems(cls: type) -> list[str]:
    problems = _component_problems(cls, Synthesizer)
    for attr in ("uses_student", "stateful", "needs_batchnorm", "needs_guides"):
        value = getattr(cls, attr)
        if not isinstance(value, bool):
            problems.append(f"{attr} must be a bool, got {value!r}")
    option = cls.iterations_option
    if option is not None:
        try:
            fields = {o.name: o for o in options_of(cls.Config)}
        except Exception:  # noqa: BLE001 - reported by config_problems
            fields = {}
        if not isinstance(option, str) or option not in fields:
            problems.append(f"iterations_option {option!r} must be None or the name of a field of Config "
                            f"({', '.join(fields) or 'which has none'})")
        elif fields[option].type is not int:
            problems.append(f"iterations_option '{option}' names a {fields[option].type_name} option; it must be an int")
    if cls.default_schedule not in SCHEDULES:
        problems.append(f"default_schedule must be one of {', '.join(SCHEDULES)}, got {cls.default_schedule!r}")
    suggested = getattr(cls, "run_defaults", {})
    if not isinstance(suggested, dict):
        problems.append(f"run_defaults must be a dict of run settings, got {suggested!r}")
    else:
        from .config import RunConfig, make_run_config

        unknown = sorted(set(suggested) - set(RunConfig.__dataclass_fields__))
        if unknown:
            problems.append(f"run_defaults names {', '.join(unknown)}, which are not run settings (RunConfig fields)")
        else:
            try:
                make_run_config(suggested)
            except Exception as exc:  # a value of the wrong type or out of range
                problems.append(f"run_defaults {suggested!r} is not a valid run configuration: {exc}")
    caps = cls.capabilities()
    if not isinstance(caps, dict) or not all(isinstance(k, str) for k in caps):
        problems.append(f"capabilities() must return a dict keyed by strings, got {caps!r}")
    return problems


# --------------------------------------------------------------------------- behavioural helpers


def _configure(cls: type, values: Mapping[str, Any]) -> Any:
    try:
        return build(cls.Config, values, owner=cls.name)
    except Exception as exc:
        raise ContractError(f"{_label(cls)}: cannot build its Config from {dict(values)}: {exc}") from exc


def _call(cls: type, what: str, fn: Any, *args: Any, hint: str = "", **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(f"{_label(cls)}: {what} raised {type(exc).__name__}: {exc}{hint}") from exc


def _hooks_left(model: nn.Module) -> list[str]:
    return [name or type(model).__name__ for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]


# --------------------------------------------------------------------------- the checks


def check_synthesizer(
    cls: type,
    options: Mapping[str, Any] | None = None,
    *,
    teacher: Teacher | None = None,
    labels: Iterable[int] = (0, 3, 3, 9),
) -> SynthBatch:
    """Check a :class:`~dfcompress.components.Synthesizer` subclass and return its first batch.

    Class level: the base class; ``name`` (snake_case) and a one-line ``summary``; ``Config`` is a frozen
    dataclass whose every field has a default and a ``help`` string, is constructible with no arguments,
    has CLI-settable types and round-trips through :func:`dfcompress.options.build` and
    :func:`~dfcompress.options.as_dict`; the declared capabilities have the right types
    (``iterations_option`` names an int field of ``Config``, ``default_schedule`` is in ``SCHEDULES``).

    Behaviour, on ``teacher`` (default :func:`tiny_teacher`) on the CPU, with the iterations option set to 2
    and then ``options`` (option values, as strings or typed; a ``needs_guides`` method gets its guides
    here, e.g. ``{"stats": path}``): ``setup()`` then ``synthesize_batch()`` for ``labels`` returns a
    ``SynthBatch`` of float CPU images in [0, 1] of the teacher's N x C x H x W with the requested labels
    and float metrics; a fresh instance with the same seed returns the same images, another seed other
    images; ``state_dict()`` after the first batch is a dict from which ``load_state_dict()`` on a fresh
    instance resumes (the same second batch); if the instance ``wants_student()``, a batch with a student
    leaves the student unchanged; after ``close()`` the teacher has no hooks left and unchanged weights, buffers and mode."""
    _fail(cls, _synthesizer_class_problems(cls))
    teacher = teacher if teacher is not None else tiny_teacher()
    values = {cls.iterations_option: 2} if cls.iterations_option else {}
    values.update(options or {})
    config = _configure(cls, values)
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    ctx = RunContext()
    before, training = _snapshot(teacher.model), teacher.model.training
    hint = (" (it declares needs_guides: pass its guides through options=, e.g. a statistics file)"
            if cls.needs_guides else "")

    def fresh() -> Synthesizer:
        synth = _call(cls, "the constructor", cls, config, ctx)
        _call(cls, "setup() on the tiny teacher", synth.setup, teacher, hint=hint)
        return synth

    def batch(synth: Synthesizer, seed: int, student: nn.Module | None = None) -> SynthBatch:
        what = f"synthesize_batch(seed {seed}{', with a student' if student is not None else ''})"
        result = _call(cls, what, synth.synthesize_batch, labels.clone(), generator=ctx.generator(seed),
                       student=student)
        _fail(cls, batch_problems(result, labels, teacher.input, what))
        return result

    problems = []
    first = fresh()
    try:
        a = batch(first, 1)
        state = _call(cls, "state_dict()", first.state_dict)
        if not isinstance(state, dict):
            _fail(cls, [f"state_dict() must return a dict, got {type(state).__name__}"])
        resumable = copy.deepcopy(state)
        b = batch(first, 2)
        if torch.equal(a.images, b.images):
            problems.append("the images do not depend on the generator (seed 1 and seed 2 gave the same batch)")
        if first.wants_student():
            student = tiny_cnn(teacher.input, seed=1).train()
            student_before = _snapshot(student)
            batch(first, 3, student)
            if _changed(student, student_before) or not student.training:
                problems.append("synthesize_batch changed the student's weights, buffers or mode")
    finally:
        _call(cls, "close()", first.close)
    second = fresh()
    try:
        if not torch.equal(batch(second, 1).images, a.images):
            problems.append("not reproducible: a fresh instance with the same seed gave other images")
    finally:
        _call(cls, "close()", second.close)
    resumed = fresh()
    try:
        _call(cls, "load_state_dict(state_dict())", resumed.load_state_dict, resumable)
        if not torch.equal(batch(resumed, 2).images, b.images):
            problems.append("state_dict() does not resume: a fresh instance given the state after the first batch "
                            "made another second batch"
                            + (" (declare stateful = True and save the state)" if not cls.stateful else ""))
    finally:
        _call(cls, "close()", resumed.close)
    hooks = _hooks_left(teacher.model)
    if hooks:
        problems.append(f"hooks left on the teacher after close(): {', '.join(hooks)}")
    changed = _changed(teacher.model, before)
    if changed:
        problems.append(f"the teacher's weights or buffers changed: {', '.join(changed[:5])}")
    if teacher.model.training != training:
        problems.append("the teacher's train/eval mode changed")
    _fail(cls, problems)
    logger.debug("%s passes the synthesizer contract", _label(cls))
    return a


def check_distiller(cls: type, options: Mapping[str, Any] | None = None, *, images: int = 16) -> dict[str, float]:
    """Check a :class:`~dfcompress.components.Distiller` subclass and return the metrics of its ``fit``.

    Class level as in :func:`check_synthesizer` (without the synthesizer capabilities). Behaviour: ``fit``
    trains a fresh :func:`tiny_cnn` student from :func:`tiny_teacher` on ``images`` uint8 images for one
    epoch (``epochs=1``, ``batch_size=8`` where the Config has those fields, then ``options``): it returns a
    dict of finite floats, changes the student's weights, and leaves the teacher and the images as they
    were."""
    _fail(cls, _component_problems(cls, Distiller))
    names = {o.name for o in options_of(cls.Config)}
    values = {k: v for k, v in _QUICK_DISTILL.items() if k in names}
    values.update(options or {})
    distiller = _call(cls, "the constructor", cls, _configure(cls, values), RunContext())
    teacher = tiny_teacher()
    student = tiny_cnn(teacher.input, seed=1).train()
    pixels = _pixels(teacher.input, images, seed=0)
    labels = torch.arange(images) % teacher.input.num_classes
    kept = (pixels.clone(), labels.clone(), _snapshot(teacher.model), _snapshot(student))
    metrics = _call(cls, "fit()", distiller.fit, student, teacher, pixels, labels)
    problems = metric_problems(metrics, "fit()")
    if not _changed(student, kept[3]):
        problems.append("fit() did not change the student's weights")
    if _changed(teacher.model, kept[2]) or teacher.model.training:
        problems.append("fit() changed the teacher's weights, buffers or mode")
    if not (torch.equal(pixels, kept[0]) and torch.equal(labels, kept[1])):
        problems.append("fit() modified the images or labels it was given")
    _fail(cls, problems)
    return metrics


def check_pruner(cls: type, options: Mapping[str, Any] | None = None, *, ratio: float = 0.5) -> PruneResult:
    """Check a :class:`~dfcompress.components.Pruner` subclass and return its :class:`PruneResult`.

    Class level as in :func:`check_synthesizer`, and ``needs_data`` is a bool. Behaviour: pruning a
    :func:`tiny_cnn` at ``ratio`` of the channels (with two batches of normalised images and labels when
    the class ``needs_data``) returns a ``PruneResult`` whose model has fewer parameters, counted right,
    and the same output shape."""
    problems = _component_problems(cls, Pruner)
    if not isinstance(cls.needs_data, bool):
        problems.append(f"needs_data must be a bool, got {cls.needs_data!r}")
    _fail(cls, problems)
    pruner = _call(cls, "the constructor", cls, _configure(cls, options or {}), RunContext())
    spec = TINY_INPUT
    model = tiny_cnn(spec)
    example = spec.normalize(_pixels(spec, 2, seed=0).float() / 255)
    with torch.no_grad():
        out_shape = model(example).shape
    params = sum(p.numel() for p in model.parameters())
    batches = None
    if cls.needs_data:
        batches = [(spec.normalize(_pixels(spec, 8, seed=s).float() / 255), torch.arange(8) % spec.num_classes)
                   for s in (1, 2)]
    result = _call(cls, f"prune(ratio={ratio})", pruner.prune, model, spec, ratio=ratio, batches=batches)
    if not isinstance(result, PruneResult):
        _fail(cls, [f"prune() must return a dfcompress.components.PruneResult, got {type(result).__name__}"])
    pruned = result.model
    after = sum(p.numel() for p in pruned.parameters())
    if (result.params_before, result.params_after) != (params, after):
        problems.append(f"PruneResult counts params {result.params_before} -> {result.params_after}, "
                        f"the models have {params} -> {after}")
    if not after < params:
        problems.append(f"pruning at ratio {ratio} did not remove parameters ({params} -> {after})")
    if not all(isinstance(n, int) and n >= 0 for n in (result.macs_before, result.macs_after)):
        problems.append(f"MAC counts must be ints, got {result.macs_before!r} -> {result.macs_after!r}")
    if not all(isinstance(n, str) for n in result.notes):
        problems.append("PruneResult.notes must be strings")
    pruned.eval()
    with torch.no_grad():
        got = _call(cls, "the pruned model's forward", pruned, example).shape
    if got != out_shape:
        problems.append(f"pruning changed the output shape {tuple(out_shape)} -> {tuple(got)}")
    _fail(cls, problems)
    return result


def check_task(cls: type) -> None:
    """Check a :class:`~dfcompress.components.Task` subclass (class level only: a task runs a whole
    pipeline; test it end to end with ``dfcompress run --task NAME`` on the demo teacher)."""
    _fail(cls, _component_problems(cls, Task))


#: the check of each component kind of the registry (model and data sources have none)
CHECKS = {
    "synthesizers": check_synthesizer,
    "distillers": check_distiller,
    "pruners": check_pruner,
    "tasks": check_task,
}


def check_registered(kind: str, name: str, registry: Any = None) -> type:
    """Load ``name`` of ``kind`` from ``registry`` (default: :func:`dfcompress.plugins.get_registry`) and
    check that the registered name and summary are the class's own ``name`` and ``summary``; return the
    class. (With a lazy ``"module:Class"`` target the summary is given twice: keep them equal.)"""
    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    entry = registry.entry(kind, name)
    cls = entry.load()
    problems = []
    if entry.name != getattr(cls, "name", None):
        problems.append(f"registered as '{entry.name}' but its name attribute is {getattr(cls, 'name', None)!r}")
    if entry.summary != getattr(cls, "summary", None):
        problems.append(f"registered with summary {entry.summary!r} but its summary attribute is "
                        f"{getattr(cls, 'summary', None)!r}")
    if isinstance(cls, type) and issubclass(cls, Component):
        _fail(cls, problems)
    elif problems:
        raise ContractError(f"{kind} '{name}' of {entry.package}: " + "; ".join(problems))
    return cls
