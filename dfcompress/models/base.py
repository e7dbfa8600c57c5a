"""Model specs (``source:name``), the ModelSource interface, and building models and teachers from specs.

Sources are found in the plugin registry (kind ``teachers``), so third-party packages add their own.
"""
from __future__ import annotations

import abc
import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn

from ..components import InputSpec, Teacher
from ..errors import ConfigError, UnknownComponentError

if TYPE_CHECKING:
    from ..registry import Registry

logger = logging.getLogger(__name__)

#: ``weights="random"`` keeps the random initialisation (tests and benchmarks only)
RANDOM_WEIGHTS = "random"


class ModelSource(abc.ABC):
    """A family of models addressed as ``<source>:<name>`` (for example ``timm:resnet18``)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: specs shown by ``dfcompress models``
    examples: ClassVar[tuple[str, ...]] = ()
    #: the model a bare ``<source>`` spec means; None when a name is required
    default_name: ClassVar[str | None] = None
    #: run settings that suit this source's models, below config files and flags in precedence
    #: (for example a CPU-sized budget for the demo teacher)
    run_defaults: ClassVar[dict] = {}

    @abc.abstractmethod
    def build(
        self, name: str, *, num_classes: int | None = None, image_size: tuple[int, int] | None = None
    ) -> tuple[nn.Module, InputSpec]:
        """A randomly initialised model and what it expects; ``image_size`` overrides the default input size."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The model names this source knows (for checks and "did you mean")."""

    def has(self, name: str) -> bool:
        return name in self.names()

    def default_weights(self, name: str) -> Path | None:
        """Weights used when a teacher is loaded without ``--weights`` (None: the user must give them)."""
        return None

    def default_eval_data(self, name: str) -> str | None:
        """The evaluation data spec that fits this model out of the box, if any."""
        return None

    def check(self, name: str) -> None:
        """Raise UnknownComponentError, with the nearest names, when ``name`` is not a model of this source."""
        if self.has(name):
            return
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(f'{self.name}:{c}') for c in close)}?" if close else ""
        listing = f" Known: {', '.join(known)}" if len(known) <= 12 else f" ({len(known)} {self.name} models known)"
        raise UnknownComponentError(f"unknown {self.name} model '{name}'.{hint}{listing}")


class ModelSpec(NamedTuple):
    """A parsed ``source:name`` spec: the source object and the model name within it."""

    source: ModelSource
    name: str


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from ..plugins import get_registry

    return get_registry()


def parse_spec(spec: str, *, registry: Registry | None = None) -> ModelSpec:
    """``"timm:resnet18"`` -> (TimmSource(), "resnet18"); ``"demo"`` -> (DemoSource(), "teacher").

    Raises UnknownComponentError for an unknown source or model (naming the nearest), ConfigError for a
    malformed spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty model spec; use <source>:<name>, e.g. timm:resnet18, cifar:resnet56 or demo")
    registry = _registry(registry)
    source_name, sep, name = spec.strip().partition(":")
    known = registry.names("teachers")
    if source_name not in known:
        close = difflib.get_close_matches(source_name, known, n=1)
        hint = f" Did you mean '{close[0]}:{name}'?" if close and sep else (f" Did you mean '{close[0]}'?" if close else "")
        no_source = "" if sep else f" (a model spec is <source>:<name>, e.g. timm:{source_name})"
        raise UnknownComponentError(
            f"unknown model source '{source_name}' in '{spec}'{no_source}.{hint} Known sources: {', '.join(known)}"
        )
    source: ModelSource = registry.get("teachers", source_name)()
    if not name:
        if source.default_name is None:
            example = source.examples[0] if source.examples else f"{source_name}:<name>"
            raise ConfigError(f"model spec '{spec}' needs a model name: {source_name}:<name>, e.g. {example}")
        name = source.default_name
    source.check(name)
    return ModelSpec(source, name)


def create_model(
    spec: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    trust_weights: bool = False,
    image_size: tuple[int, int] | int | None = None,
    registry: Registry | None = None,
) -> tuple[nn.Module, InputSpec]:
    """Build the model named by ``spec`` (random initialisation unless ``weights`` names a file)."""
    from ..weights import apply_state_dict, read_state_dict

    source, name = parse_spec(spec, registry=registry)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}")
    model, input_spec = source.build(name, num_classes=num_classes, image_size=image_size)
    if weights is not None and str(weights) != RANDOM_WEIGHTS:
        apply_state_dict(model, read_state_dict(weights, trust=trust_weights), spec=spec, path=weights)
    return model, input_spec


def load_teacher(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    trust_weights: bool = False,
    device: str | torch.device = "cpu",
    image_size: tuple[int, int] | int | None = None,
    num_classes: int | None = None,
    registry: Registry | None = None,
) -> Teacher:
    """A frozen teacher in eval mode on ``device``.

    ``weights`` defaults to the source's own (the demo teacher is trained on first use); other teachers need a
    weights file, or ``weights="random"`` explicitly (tests and benchmarks)."""
    from ..context import resolve_device

    source, name = parse_spec(spec, registry=registry)
    if weights is None:
        weights = source.default_weights(name)
    if weights is None:
        raise ConfigError(
            f"teacher {spec} needs --weights PATH (a .pt/.pth/.th/.safetensors state dict): "
            f"a randomly initialised teacher is useless (--weights random only for tests)"
        )
    if str(weights) == RANDOM_WEIGHTS:
        logger.warning("teacher %s keeps its random initialisation (--weights random)", spec)
    model, input_spec = create_model(
        spec,
        num_classes=num_classes,
        weights=weights,
        trust_weights=trust_weights,
        image_size=image_size,
        registry=registry,
    )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(dev).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return Teacher(model, input_spec, spec)


def default_eval_data(spec: str, *, registry: Registry | None = None) -> str | None:
    """The evaluation data that fits ``spec`` out of the box (``demo`` -> ``digits:test``), if any."""
    source, name = parse_spec(spec, registry=registry)
    return source.default_eval_data(name)


def run_defaults(spec: str, *, registry: Registry | None = None) -> dict:
    """The run settings the teacher's source suggests (lowest precedence above the dataclass defaults)."""
    return dict(parse_spec(spec, registry=registry).source.run_defaults)
