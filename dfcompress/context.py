"""RunContext: what every component may use from the run (device, precision, seed, progress, interruption)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .distributed import SINGLE, World
from .errors import ConfigError, NonFiniteLossError

logger = logging.getLogger(__name__)

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: how the 4-d weights and activations of the run's models are laid out in memory; ``auto`` is channels_last for
#: models with 2-d convolutions (faster on CPUs with oneDNN and on GPUs with tensor cores; the same results up to
#: float rounding), contiguous for the others
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def apply_memory_format(model: torch.nn.Module, memory_format: str = "auto") -> torch.nn.Module:
    """Lay ``model`` out as ``memory_format`` (see MEMORY_FORMATS) in place and return it. Convolutions then run
    channels-last whatever the layout of their input, so callers need not convert images."""
    if memory_format == "auto":
        memory_format = "channels_last" if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()) else "contiguous"
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    return model.to(memory_format=fmt)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, then Apple MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA but none is available; use --device auto or cpu")
    return dev


@dataclass
class RunContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "32-true"
    memory_format: str = "auto"
    seed: int = 0
    out_dir: Path | None = None
    quiet: bool = True
    #: log losses every this many iterations (the only host synchronisation in inner loops)
    log_every: int = 50
    #: set by the SIGINT/SIGTERM handler; long loops check it between steps
    stop_requested: bool = False
    #: progress hook of inner loops: called after every step with (step, steps, loss values or None); the
    #: values come only every ``log_every`` steps, where the loop synchronises anyway (set by run_synthesis)
    on_step: Callable[[int, int, dict[str, float] | None], None] | None = field(default=None, repr=False, compare=False)
    #: the processes of this run (:mod:`dfcompress.distributed`); one unless started by torchrun
    world: World = SINGLE

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"memory format {self.memory_format!r} is not one of {', '.join(MEMORY_FORMATS)}")

    def layout(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with its 4-d parameters and buffers in the run's memory format (in place; returned)."""
        return apply_memory_format(model, self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision per ``precision``; a no-op for 32-true."""
        if self.precision == "32-true":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 mixed precision."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "16-mixed")

    def generator(self, seed: int) -> torch.Generator:
        """A torch.Generator on the run's device (CPU for MPS), seeded with ``seed``."""
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(int(seed))

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "") -> Iterator:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=self.quiet, leave=False, dynamic_ncols=True)


def check_finite(losses: dict[str, torch.Tensor], *, step: int, where: str, hint: str) -> None:
    """Raise NonFiniteLossError naming the first NaN/Inf loss term. Synchronises: call it every k steps."""
    for name, value in losses.items():
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLossError(
                f"{where}: loss term '{name}' became {value.detach().float().mean().item()} at step {step}; {hint}"
            )
