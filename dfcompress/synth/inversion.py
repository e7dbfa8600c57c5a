"""The optimisation loop shared by the inversion synthesizers, and the pieces around it.

:func:`optimise` runs one batch: every step calls the method's ``step`` callable, which renders the
images (DeepInversion and seeded: the pixels themselves; natural: its nets' output), jitters them, runs
the teacher (and the student) and returns ``(total, terms, images_to_keep)``; the loop keeps the
lowest-loss images (:class:`BestSnapshot`), back-propagates into the optimizers' parameters only, steps
them through the context's gradient scaler, checks ``ctx.stop_requested`` between steps and reports
progress (:func:`report_progress`). :class:`InversionSynthesizer` holds the set-up checks that follow
from a method's declared capabilities, and :func:`finish_batch` turns the result into a
:class:`SynthBatch`.

Metrics of a finished batch (``SynthBatch.metrics``):

* the loss terms of the returned images (``loss``, ``loss_ce``, ``loss_bn``, ``loss_tv``, ...);
* ``teacher_acc``: fraction of the returned (clamped) images the teacher labels as their target;
* ``iterations`` (steps run) and ``seconds`` (wall time of the batch);
* ``work_teacher``: images x iterations, the teacher forward + backward passes counted in images;
* ``work_student``: images x iterations when a student term was used, else 0;
* ``work_teacher_forward``: images x iterations x the extra no-grad teacher forward passes per step
  (natural's feature pass for its pyramid), else 0.

The work counts do not depend on the machine, so runs on different hardware compare by them.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..components import SynthBatch, Synthesizer, Teacher
from ..context import RunContext, check_finite
from ..errors import UnsupportedTeacherError
from .bn_stats import find_bn_layers
from .priors import frozen, js_divergence, l2_norm, total_variation

logger = logging.getLogger(__name__)

#: one step of a method: ``() -> (total loss, loss terms, images to keep if this step is the best)``
Step = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]]


def require_batchnorm(teacher: Teacher, method: str) -> None:
    """Refuse a teacher without BatchNorm running statistics (R_BN would be empty)."""
    if not find_bn_layers(teacher.model):
        raise UnsupportedTeacherError(
            f"{method} needs a teacher with BatchNorm running statistics, and {teacher.spec or 'this teacher'} "
            "has none (BN-free or BN-fused, e.g. --fuse-bn); use --synth imagine with a few real guide images "
            "(-s guides=FOLDER) or --synth seeded with class statistics collected by 'dfcompress stats collect'"
        )


class InversionSynthesizer(Synthesizer):
    """Base of the optimisation-based synthesizers: :meth:`setup` applies the checks that the declared
    capabilities imply (``needs_batchnorm``, an ``iterations_option`` of at least 1), and
    :meth:`synthesize_batch` hands :meth:`invert` the labels on the device and the student of the
    competition term, frozen (eval mode, no parameter gradients) for the batch, or None."""

    def setup(self, teacher: Teacher) -> None:
        if self.needs_batchnorm:
            require_batchnorm(teacher, self.name)
        self.check_options()
        self.teacher = teacher

    def competition_student(self, student: nn.Module | None) -> nn.Module | None:
        """The student of the competition term for this batch: None when this instance does not use one
        (``wants_student()``) or none was given (an online warm-up round): the term is then left out."""
        return student if self.wants_student() else None

    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        student = self.competition_student(student)
        with frozen(student):
            return self.invert(labels.to(self.ctx.device), generator, student)

    @abc.abstractmethod
    def invert(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        """One batch for ``labels`` (on the device); ``student`` is None when there is no competition term."""


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


def noise_pixels(teacher: Teacher, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` images x ~ N(0, 1) in the teacher's normalised input space, drawn from ``generator`` (on
    its own device) and moved to ``device``: DeepInversion's starting point and the noise baseline."""
    spec = teacher.input
    x = torch.randn((count, spec.channels, *spec.image_size), generator=generator, device=generator.device)
    return x.to(device)


def image_terms(
    logits: torch.Tensor, labels: torch.Tensor, stat_name: str, stat: torch.Tensor, images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The terms every inversion method has: CE of the teacher's ``logits``, the method's statistics
    term (``stat_name``: R_BN or R_CC), and the priors R_TV and ||.||_2 of the jittered ``images``."""
    return {
        "loss_ce": nn.functional.cross_entropy(logits.float(), labels),
        stat_name: stat,
        "loss_tv": total_variation(images),
        "loss_l2": l2_norm(images),
    }


def term_weights(config: Any, stat_name: str, stat_scale: float, *, competition: bool = False) -> list[tuple[str, float]]:
    """The weights of :func:`image_terms` for :func:`weighted_total`, in its order, from a config with
    ``ce_scale``, ``tv_scale``, ``l2_scale`` (and ``adi_scale``, appended for ``loss_adi`` with ``competition``)."""
    weights = [("loss_ce", config.ce_scale), (stat_name, stat_scale), ("loss_tv", config.tv_scale), ("loss_l2", config.l2_scale)]
    if competition:
        weights.append(("loss_adi", config.adi_scale))
    return weights


def competition_term(logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Adaptive DeepInversion's competition term 1 - JS(softmax(T/t), softmax(S/t)), in [0, 1]."""
    return 1.0 - js_divergence(logits, student_logits, temperature).clamp(0.0, 1.0)


def weighted_total(terms: dict[str, torch.Tensor], weights: Sequence[tuple[str, float]]) -> torch.Tensor:
    """sum_i w_i terms[name_i], added in the order of ``weights``."""
    total: torch.Tensor | None = None
    for name, weight in weights:
        part = weight * terms[name]
        total = part if total is None else total + part
    assert total is not None, "no loss terms"
    return total


@dataclass
class InversionResult:
    """What :func:`optimise` found: the lowest-loss images, their loss terms, and the steps run."""

    images: torch.Tensor
    terms: dict[str, torch.Tensor]
    iterations: int


def optimise(
    ctx: RunContext,
    step: Step,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    iterations: int,
    where: str,
    hint: str,
    initial: Callable[[], torch.Tensor],
    after_step: Callable[[], None] | None = None,
) -> InversionResult:
    """Run up to ``iterations`` steps of ``step`` (see :data:`Step`), updating the parameters of
    ``optimizers`` (and nothing else: no gradient reaches the teacher's or the student's parameters; the
    gradients are dropped after each update).

    ``after_step`` runs after each optimizer update (e.g. clipping the pixels). When ``ctx.stop_requested``
    is set before the first step, the images are ``initial()`` (run without gradients) and no terms.
    Hooks the step relies on must stay in place until this returns."""
    params = [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]
    scaler = ctx.grad_scaler()
    best = BestSnapshot()
    done = 0
    for index in range(1, iterations + 1):
        if ctx.stop_requested:
            break
        total, terms, images = step()
        terms["loss"] = total
        best.update(total, images, terms)
        scaler.scale(total).backward(inputs=params)
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        for p in params:
            p.grad = None
        if after_step is not None:
            after_step()
        done = index
        report_progress(logger, ctx, where, index, iterations, terms, hint)
    if best.images is None:
        with torch.no_grad():
            best.update(torch.zeros((), device=ctx.device), initial(), {})
    assert best.images is not None
    return InversionResult(best.images, best.terms, done)


def report_progress(
    logger: logging.Logger, ctx: RunContext, where: str, step: int, total: int, terms: dict[str, torch.Tensor], hint: str
) -> None:
    """Every ``ctx.log_every`` steps (and at the last): check the loss terms are finite and log them.
    This is the only host synchronisation of the inner loops. Every step is passed on to
    ``ctx.on_step`` (when set), with the loss values on those steps only."""
    every = max(1, int(ctx.log_every))
    values: dict[str, float] | None = None
    if step % every == 0 or step == total:
        check_finite(terms, step=step, where=where, hint=hint)
        if ctx.on_step is not None or logger.isEnabledFor(logging.INFO):
            values = {k: float(v.detach()) for k, v in terms.items()}
            logger.info("%s %d/%d %s", where, step, total, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if ctx.on_step is not None:
        ctx.on_step(step, total, values)


def finish_batch(
    teacher: Teacher,
    ctx: RunContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    terms: dict[str, torch.Tensor],
    *,
    iterations: int,
    seconds: float,
    student_used: bool = False,
    feature_passes: int = 0,
) -> SynthBatch:
    """Normalised-space ``images`` to a SynthBatch: pixels in [0, 1] on the CPU, the metrics (see the
    module docstring; ``feature_passes`` is the number of extra no-grad teacher forwards per step), and
    the teacher's agreement with ``labels`` measured on exactly the returned (clamped) pixels."""
    pixels = teacher.input.denormalize(images.detach().float()).clamp_(0.0, 1.0)
    with torch.no_grad(), ctx.autocast():
        logits = teacher.model(teacher.input.normalize(pixels))
    agree = (logits.argmax(dim=1) == labels).float().mean()
    metrics = {k: float(v) for k, v in terms.items()}
    work = float(labels.numel() * iterations)
    metrics.update(teacher_acc=float(agree), iterations=float(iterations), seconds=float(seconds),
                   work_teacher=work, work_student=work if student_used else 0.0,
                   work_teacher_forward=work * feature_passes)
    return SynthBatch(images=pixels.cpu(), labels=labels.detach().long().cpu(), metrics=metrics)
