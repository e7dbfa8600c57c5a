"""Target labels for synthesis: balanced, random, or a given list of classes."""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import ConfigError

LabelMode = Union[str, Sequence[int]]


def make_labels(
    n: int,
    num_classes: int,
    mode: LabelMode = "balanced",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` target labels (a 1-D CPU long tensor).

    * ``"balanced"``: every class ``n // num_classes`` times in cyclic order (0, 1, ..., K-1, 0, 1, ...);
      the ``n % num_classes`` remaining labels go to distinct classes, drawn from ``generator`` (the
      first classes when no generator is given), so per-class counts differ by at most one and the
      surplus does not always fall on the same classes. Works for any ``num_classes`` (also > n).
    * ``"random"``: uniform over the classes, drawn from ``generator``.
    * a sequence of class indices (or a comma-separated string such as ``"3,5"``): only those classes,
      balanced among them in the given order.
    """
    if n < 0:
        raise ConfigError(f"cannot make {n} labels; the number of images must be >= 0")
    if num_classes < 1:
        raise ConfigError(f"the teacher has {num_classes} classes; need at least 1")
    if isinstance(mode, str) and mode not in ("balanced", "random"):
        mode = _parse_class_list(mode)
    if isinstance(mode, str) and mode == "random":
        return torch.randint(0, num_classes, (n,), generator=_cpu(generator), dtype=torch.long)
    if isinstance(mode, str):
        return _balanced(n, torch.arange(num_classes), generator)
    classes = torch.as_tensor(list(mode), dtype=torch.long)
    if classes.numel() == 0:
        raise ConfigError("the label list is empty; give at least one class index")
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise ConfigError(
            f"label(s) {bad.tolist()} out of range for a teacher with {num_classes} classes (0..{num_classes - 1})"
        )
    return _balanced(n, classes, generator)


def _parse_class_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ConfigError(
            f"labels {text!r}: use 'balanced', 'random' or a comma-separated list of class indices"
        ) from exc


def _balanced(n: int, classes: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    k = classes.numel()
    full = classes.repeat(n // k)
    rest = n % k
    if rest == 0:
        return full.clone()
    if generator is None:
        extra = classes[:rest]
    else:
        pick = torch.randperm(k, generator=_cpu(generator))[:rest].sort().values
        extra = classes[pick]
    return torch.cat([full, extra])


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Label draws happen on the CPU; a CUDA generator is reduced to a CPU generator seeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)
