"""DeepInversion and Adaptive DeepInversion (Yin et al., CVPR 2020), written from the equations.

Pixels x (in the teacher's normalised input space, initialised N(0, 1)) are optimised with Adam for

    L(x) = CE(T(x~), y) + lambda_BN R_BN(x~) + lambda_TV R_TV(x~) + lambda_l2 ||x~||_2
           [+ lambda_ADI (1 - JS(T(x~), S(x~)))]

where x~ is x randomly rolled by up to ``jitter`` pixels and flipped (NaturalInversion Eq. 1-4;
R_BN in :mod:`~dfcompress.synth.bn_stats`, R_TV and JS in :mod:`~dfcompress.synth.priors`). The
Adaptive DeepInversion competition term uses the current student, and is left out when none is given
(an online warm-up round). The images returned are the lowest-loss iterate (a copy), not the last one;
the loop itself is :func:`~dfcompress.synth.inversion.optimise`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..components import SynthBatch
from .bn_stats import BNStatistics
from .inversion import (
    InversionSynthesizer, competition_term, finish_batch, image_terms, noise_pixels, optimise, term_weights, weighted_total,
)
from .priors import cpu_generator_from, jitter_flip


@dataclass(frozen=True)
class DeepInversionConfig:
    iterations: int = field(default=2000, metadata={"help": "Adam steps per batch (CIFAR-10 paper command: 2000)"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate on the pixels (DI CIFAR code default 0.1; paper command 0.05)"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas (DI CIFAR code: PyTorch defaults)"})
    bn_scale: float = field(default=10.0, metadata={"help": "lambda_BN, weight of the BatchNorm-statistics term R_BN"})
    first_bn_multiplier: float = field(default=1.0, metadata={"help": "extra weight of the first BN layer in R_BN (ImageNet DI code: 10)"})
    tv_scale: float = field(default=1e-3, metadata={"help": "lambda_TV, weight of the 4-direction total variation (DI CIFAR README: 1e-3 'better', paper command 2.5e-5)"})
    l2_scale: float = field(default=0.0, metadata={"help": "lambda_l2, weight of ||x||_2 (DI CIFAR: 0)"})
    ce_scale: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term"})
    adi_scale: float = field(default=0.0, metadata={"help": "Adaptive DI competition weight (1 - JS(teacher, student)); needs a student; ImageNet paper 0.2"})
    adi_temperature: float = field(default=3.0, metadata={"help": "softmax temperature of the ADI Jensen-Shannon term"})
    jitter: int = field(default=2, metadata={"help": "random roll of up to this many pixels per iteration"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip per iteration"})
    clip: bool = field(default=False, metadata={"help": "clip the pixels to the valid [0, 1] range after each step (ImageNet DI code)"})


class DeepInversion(InversionSynthesizer):
    name = "deepinversion"
    summary = "DeepInversion: pixels optimised for CE + BatchNorm statistics + image priors (+ADI)"
    paper = "Yin et al., Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion, CVPR 2020"
    Config = DeepInversionConfig
    uses_student = True
    iterations_option = "iterations"
    needs_batchnorm = True

    def wants_student(self) -> bool:
        return self.config.adi_scale > 0

    def invert(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        cfg, ctx, teacher = self.config, self.ctx, self.teacher
        start = time.perf_counter()
        device = ctx.device
        aux = cpu_generator_from(generator)
        x = noise_pixels(teacher, labels.numel(), generator, device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        weights = term_weights(cfg, "loss_bn", cfg.bn_scale, competition=student is not None)
        with BNStatistics(teacher.model, first_multiplier=cfg.first_bn_multiplier) as bn:

            def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
                x_jit = jitter_flip(x, aux, max_shift=cfg.jitter, flip=cfg.flip)
                with ctx.autocast():
                    logits = teacher.model(x_jit)
                    student_logits = student(x_jit) if student is not None else None
                terms = image_terms(logits, labels, "loss_bn", bn.loss().to(device), x_jit)
                if student_logits is not None:
                    terms["loss_adi"] = competition_term(logits, student_logits, cfg.adi_temperature)
                return weighted_total(terms, weights), terms, x

            result = optimise(ctx, step, [optimizer], iterations=cfg.iterations, where="deepinversion",
                              hint="lower lr or bn_scale, or use --precision 32-true", initial=lambda: x,
                              after_step=self._clipper(x) if cfg.clip else None)
        return finish_batch(teacher, ctx, result.images, labels, result.terms, iterations=result.iterations,
                            seconds=time.perf_counter() - start, student_used=student is not None)

    def _clipper(self, x: torch.Tensor) -> Callable[[], None]:
        """Clip ``x`` in place to the normalised image of [0, 1] (option ``clip``), after each step."""
        spec, device = self.teacher.input, self.ctx.device
        low = spec.normalize(torch.zeros(1, spec.channels, 1, 1, device=device))
        high = spec.normalize(torch.ones(1, spec.channels, 1, 1, device=device))

        def clip() -> None:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))

        return clip
