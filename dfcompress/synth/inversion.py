"""Pieces shared by the optimisation-based synthesizers: the best-so-far snapshot, progress reporting,
the teacher checks and the conversion of a finished batch to a :class:`SynthBatch`."""
from __future__ import annotations

import logging

import torch

from ..components import SynthBatch, Teacher
from ..context import RunContext, check_finite
from ..errors import UnsupportedTeacherError
from .bn_stats import find_bn_layers


def require_batchnorm(teacher: Teacher, method: str) -> None:
    """Refuse a teacher without BatchNorm running statistics (R_BN would be empty)."""
    if not find_bn_layers(teacher.model):
        raise UnsupportedTeacherError(
            f"{method} needs a teacher with BatchNorm running statistics, and {teacher.spec or 'this teacher'} "
            "has none (BN-free or BN-fused); use --synth seeded with class statistics collected by "
            "'dfcompress stats collect'"
        )


class BestSnapshot:
    """The lowest-loss batch seen so far, kept without host synchronisation.

    Each :meth:`update` takes the batch total loss and the images it was computed on, and keeps a real
    copy (``torch.where`` allocates a new tensor) of the images and loss terms when the loss is lower
    than the best so far."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.terms: dict[str, torch.Tensor] = {}

    def update(self, loss: torch.Tensor, images: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        loss = loss.detach().float()
        images = images.detach()
        terms = {k: v.detach().float() for k, v in terms.items()}
        if self.loss is None or self.images is None:
            self.loss, self.images, self.terms = loss.clone(), images.clone(), {k: v.clone() for k, v in terms.items()}
            return
        better = loss < self.loss
        self.images = torch.where(better, images, self.images)
        self.terms = {k: torch.where(better, v, self.terms[k]) for k, v in terms.items()}
        self.loss = torch.minimum(loss, self.loss)


def report_progress(
    logger: logging.Logger, ctx: RunContext, where: str, step: int, total: int, terms: dict[str, torch.Tensor], hint: str
) -> None:
    """Every ``ctx.log_every`` steps (and at the last): check the loss terms are finite and log them.
    This is the only host synchronisation of the inner loops."""
    every = max(1, int(ctx.log_every))
    if step % every and step != total:
        return
    check_finite(terms, step=step, where=where, hint=hint)
    if logger.isEnabledFor(logging.INFO):
        text = " ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        logger.info("%s %d/%d %s", where, step, total, text)


def finish_batch(
    teacher: Teacher,
    ctx: RunContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    terms: dict[str, torch.Tensor],
    *,
    iterations: int,
    seconds: float,
) -> SynthBatch:
    """Normalised-space ``images`` to a SynthBatch: pixels in [0, 1] on the CPU, the metrics, and the
    teacher's agreement with ``labels`` measured on exactly the returned (clamped) pixels."""
    pixels = teacher.input.denormalize(images.detach().float()).clamp_(0.0, 1.0)
    with torch.no_grad(), ctx.autocast():
        logits = teacher.model(teacher.input.normalize(pixels))
    agree = (logits.argmax(dim=1) == labels).float().mean()
    metrics = {k: float(v) for k, v in terms.items()}
    metrics.update(teacher_acc=float(agree), iterations=float(iterations), seconds=float(seconds))
    return SynthBatch(images=pixels.cpu(), labels=labels.detach().long().cpu(), metrics=metrics)
