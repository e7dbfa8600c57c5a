"""The plugin interfaces (Synthesizer, Distiller, Pruner, Quantizer, Task) and the data they exchange.

Each component carries its options as a dataclass ``Config`` whose defaults are the method's published
settings; the CLI (``--synth-opt key=value``), config files and docs are derived from it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from .context import RunContext


@dataclass(frozen=True)
class NoOptions:
    """A component without options."""


@dataclass(frozen=True)
class InputSpec:
    """What a classifier expects: image size, channels, normalisation and number of classes."""

    image_size: tuple[int, int] = (32, 32)
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_classes: int = 10

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space [0, 1] to the model's input space."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space to pixel space (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def example_input(self, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.channels, *self.image_size, device=device)

    def as_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
        }


@dataclass
class Teacher:
    """A frozen classifier in eval mode that takes normalised input, with its input metadata."""

    model: nn.Module
    input: InputSpec
    spec: str = ""


@dataclass
class SynthBatch:
    """One batch of synthetic images in pixel space [0, 1] (float, N x C x H x W) with their labels."""

    images: torch.Tensor
    labels: torch.Tensor
    #: scalar summaries of the batch (final loss terms, iterations, seconds ...), logged and stored
    metrics: dict[str, float] = field(default_factory=dict)


class Component:
    """Common base: a registry name, a one-line summary, the paper, and a dataclass of options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str | None] = None
    Config: ClassVar[type] = NoOptions

    def __init__(self, config: Any = None, ctx: RunContext | None = None) -> None:
        from .context import RunContext

        self.config = config if config is not None else self.Config()
        self.ctx = ctx if ctx is not None else RunContext()

    def check_options(self) -> None:
        """Raise a ConfigError for option values out of range. ``dfcompress run`` calls it before any work, so
        that a bad value fails in seconds rather than after synthesis; the default accepts everything."""


SCHEDULES = ("offline", "online")


class Synthesizer(Component, abc.ABC):
    """Model inversion: produces labelled images from a frozen teacher, one batch at a time.

    The driver (:func:`dfcompress.synth.driver.run_synthesis`) chooses labels and a per-batch seed, so that
    a data set is reproducible batch by batch and an interrupted run resumes where it stopped.

    What a method can do is declared by class attributes (like llm's ``can_stream``), which tasks, the
    pipeline, the bench runner and ``dfcompress plugins`` read instead of guessing from option names.
    """

    #: the method can take the current student (a competition / adversarial term); see :meth:`wants_student`
    uses_student: ClassVar[bool] = False
    #: the name of the option that ``--iterations`` sets (optimisation steps per batch); None: no such budget
    iterations_option: ClassVar[str | None] = None
    #: the method keeps state across batches (a generator): :meth:`state_dict` must resume it
    stateful: ClassVar[bool] = False
    #: the teacher must have BatchNorm running statistics
    needs_batchnorm: ClassVar[bool] = False
    #: the method needs real guide images (``-s guides=FOLDER``) or statistics collected from them
    needs_guides: ClassVar[bool] = False
    #: the schedule used when ``--schedule`` is not given: ``offline`` (synthesize everything, then train)
    #: or ``online`` (rounds of synthesis against the current student, each followed by training)
    default_schedule: ClassVar[str] = "offline"
    #: run settings this method suggests (``RunConfig`` field -> value), e.g. the online rounds it was measured
    #: with: below the user's (flags, ``--config``) and above the teacher's model source's ``run_defaults``
    run_defaults: ClassVar[dict[str, Any]] = {}

    def check_options(self) -> None:
        """The declared iterations option (if any) must be at least 1; subclasses add their own checks."""
        from .errors import ConfigError

        option = self.iterations_option
        if option is not None and getattr(self.config, option) < 1:
            raise ConfigError(f"{self.name}: {option} must be >= 1, got {getattr(self.config, option)}")

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        """The declared capabilities, for listings and docs."""
        return {
            "uses_student": cls.uses_student,
            "iterates": cls.iterations_option is not None,
            "stateful": cls.stateful,
            "needs_batchnorm": cls.needs_batchnorm,
            "needs_guides": cls.needs_guides,
            "default_schedule": cls.default_schedule,
            "run_defaults": dict(cls.run_defaults),
        }

    @property
    def iterates(self) -> bool:
        return self.iterations_option is not None

    def wants_student(self) -> bool:
        """Whether this configured instance uses the student (e.g. DeepInversion only with ``adi_scale > 0``).
        Defaults to the class's ``uses_student``; methods whose student term is optional override it."""
        return self.uses_student

    def schedule(self) -> str:
        """The schedule this configured instance runs under by default: online when it uses the student."""
        return "online" if self.wants_student() else self.default_schedule

    def state_dict(self) -> dict[str, Any]:
        """State kept across batches (for ``stateful`` methods), saved with each online round."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`setup`)."""

    def setup(self, teacher: Teacher) -> None:
        """Check that this method can invert ``teacher`` (raise UnsupportedTeacherError if not) and prepare."""
        self.teacher = teacher

    @abc.abstractmethod
    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        """Images for ``labels`` (a 1-D long tensor on the context's device).

        ``generator`` seeds every random draw of this batch. ``student`` is the current student for
        methods that use it (``wants_student()``), or None (offline, or an online warm-up round): a method
        then leaves its student term out."""

    def close(self) -> None:
        """Release hooks and buffers; called when synthesis ends, also on error."""


class Distiller(Component, abc.ABC):
    """Trains a student from a teacher on (synthetic) images."""

    #: can train step by step on a pool that grows between calls (online schedule, time budgets)
    can_train_online: ClassVar[bool] = False

    def online_trainer(self, student: nn.Module, teacher: Teacher) -> Any:
        """An object with ``train(images, labels, steps, *, generator, progress) -> dict`` and
        ``state_dict()`` / ``load_state_dict()``, for distillers with ``can_train_online``."""
        raise NotImplementedError(f"distiller {self.name} cannot train online")

    @abc.abstractmethod
    def fit(
        self,
        student: nn.Module,
        teacher: Teacher,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        checkpoint: Any = None,
    ) -> dict[str, float]:
        """Train ``student`` in place on ``images`` (uint8 pixels, N x C x H x W) and their target labels.

        ``checkpoint`` is a path where training state is saved each epoch and resumed from if present.
        Returns scalar metrics (final loss, epochs, seconds)."""


@dataclass
class PruneResult:
    """What pruning did: the pruned model and its before/after size."""

    model: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    notes: list[str] = field(default_factory=list)

    @property
    def params_removed(self) -> float:
        return 1.0 - self.params_after / max(1, self.params_before)

    @property
    def macs_removed(self) -> float:
        return 1.0 - self.macs_after / max(1, self.macs_before)

    def as_dict(self) -> dict:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_removed": round(self.params_removed, 4),
            "macs_removed": round(self.macs_removed, 4),
            "notes": list(self.notes),
        }


class Pruner(Component, abc.ABC):
    """Structural pruning of a model to a ratio (channels, parameters or MACs removed)."""

    #: whether the criterion needs example batches (gradients or activations)
    needs_data: ClassVar[bool] = False

    @abc.abstractmethod
    def prune(
        self,
        model: nn.Module,
        input_spec: InputSpec,
        *,
        ratio: float,
        ratio_of: str = "channels",
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> PruneResult:
        """Prune ``model`` in place and return it with the achieved sizes.

        ``ratio`` is the fraction removed: of the channels of every prunable layer (``channels``), or of
        the whole model's parameters or MACs (``params``, ``macs``). ``batches`` are (normalised images,
        labels) for data-driven criteria."""

    def check_model(self, model: nn.Module, input_spec: InputSpec, *, ratio: float, ratio_of: str = "channels",
                    label: str = "") -> None:
        """Raise a one-line DFCompressError (ConfigError for a known limitation) when ``model`` cannot be pruned;
        ``dfcompress run`` calls it before any synthesis. Must leave ``model`` unchanged. Default: no check."""


@dataclass
class QuantizeResult:
    """What quantization made: a classifier that runs the quantized program (normalised images in, logits out,
    like the float model), the program that :meth:`Quantizer.save` writes, and what calibrated it."""

    model: nn.Module
    program: Any
    backend: str
    calib_images: int
    notes: list[str] = field(default_factory=list)
    #: scalar facts of the backend (quantized operators, folded BatchNorms, compile seconds ...)
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "calib_images": self.calib_images, **self.stats, "notes": list(self.notes)}


class Quantizer(Component, abc.ABC):
    """Post-training quantization of a classifier for one backend (e.g. static int8 for x86 CPUs).

    Capabilities are class attributes: ``needs_data`` (calibrates on images) and ``device_type`` (where the
    quantized program runs; the task moves a CPU copy of the model there)."""

    needs_data: ClassVar[bool] = True
    device_type: ClassVar[str] = "cpu"
    #: what the weights and activations become, in row names (``final-int8``) and the latency table
    precision: ClassVar[str] = "int8"

    def check_environment(self) -> None:
        """Raise a ConfigError when this machine cannot run the backend (a missing package or compiler)."""

    def check_model(self, model: nn.Module, input_spec: InputSpec, *, label: str = "") -> None:
        """Raise an UnsupportedModelError, in seconds, when ``model`` cannot be quantized by this backend
        (``dfcompress run`` calls it on the teacher before any synthesis); the default accepts every model."""

    @abc.abstractmethod
    def quantize(self, model: nn.Module, input_spec: InputSpec, *, batches: list[torch.Tensor],
                 label: str = "") -> QuantizeResult:
        """Quantize a copy of ``model`` (in eval mode; the original is untouched), calibrated on ``batches``
        (normalised float images on :attr:`device_type`). ``label`` names the model in error messages."""

    def compile(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backend's lowering of a float model, the fair baseline of the latency table (default: eager)."""
        return model

    @abc.abstractmethod
    def save(self, result: QuantizeResult, path: Path, *, meta: dict[str, Any]) -> Path:
        """Write the quantized program to ``path`` (atomically) with ``meta`` (arch, input spec ...)."""


class Task(Component, abc.ABC):
    """A pipeline run by ``dfcompress run --task NAME`` (synthesize, compress, evaluate, report).

    ``--then NAME`` chains a second task on the first one's result: a task that ``produces_model`` hands its
    compressed model to :meth:`dfcompress.run.Run.follow_up`, which gives it to the ``--then`` task, one that
    ``accepts_model`` (:meth:`follow`), with the images the first task trained on."""

    #: the task ends with a compressed model that a ``--then`` task can take
    produces_model: ClassVar[bool] = False
    #: the task can take another task's model (:meth:`follow`), e.g. quantization after pruning
    accepts_model: ClassVar[bool] = False

    def model_spec(self, run: Any) -> str:
        """The architecture of the model this task ends with (the teacher's by default)."""
        return run.config.teacher

    def check_follow(self, run: Any, *, model_spec: str) -> None:
        """The checks of :meth:`check` that still apply when this task follows another (``--then``) that ends
        with a model of architecture ``model_spec``."""

    def follow(self, run: Any, model: nn.Module, *, source: str, data: Any) -> None:
        """Compress ``model`` (the report's row ``source``) further, adding rows and metrics to ``run``;
        ``data`` is the synthetic data set the previous task used."""
        raise NotImplementedError(f"task {self.name} cannot follow another task")

    def check(self, run: Any) -> None:
        """Everything that can be checked without synthesizing or training (inputs, the options of the components
        this task will use); ``dfcompress run`` calls it before :meth:`run`. The default checks the teacher, the
        eval data and the synthetic-data settings (:meth:`dfcompress.run.Run.check_before_work`)."""
        run.check_before_work()

    @abc.abstractmethod
    def run(self, run: Any) -> dict[str, Any]:
        """Run on a :class:`dfcompress.run.Run` and return the metrics for the report; ``metrics["result"]``
        names the report row of the end result (leaderboards read its top-1)."""
