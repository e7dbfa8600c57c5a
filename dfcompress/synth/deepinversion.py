"""DeepInversion and Adaptive DeepInversion (Yin et al., CVPR 2020), written from the equations.

Pixels x (in the teacher's normalised input space, initialised N(0, 1)) are optimised with Adam for

    L(x) = CE(T(x~), y) + lambda_BN R_BN(x~) + lambda_TV R_TV(x~) + lambda_l2 ||x~||_2
           [+ lambda_ADI (1 - JS(T(x~), S(x~)))]

where x~ is x randomly rolled by up to ``jitter`` pixels and flipped (NaturalInversion Eq. 1-4;
R_BN in :mod:`~dfcompress.synth.bn_stats`, R_TV and JS in :mod:`~dfcompress.synth.priors`). The
Adaptive DeepInversion competition term uses the current student. The images returned are the
lowest-loss iterate (a copy), not the last one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..components import SynthBatch, Synthesizer, Teacher
from ..errors import ConfigError
from .bn_stats import BNStatistics
from .inversion import BestSnapshot, finish_batch, report_progress, require_batchnorm
from .priors import cpu_generator_from, jitter_flip, js_divergence, l2_norm, total_variation

logger = logging.getLogger(__name__)


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


class DeepInversion(Synthesizer):
    name = "deepinversion"
    summary = "DeepInversion: pixels optimised for CE + BatchNorm statistics + image priors (+ADI)"
    paper = "Yin et al., Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion, CVPR 2020"
    Config = DeepInversionConfig
    uses_student = True
    iterations_option = "iterations"
    needs_batchnorm = True

    def wants_student(self) -> bool:
        return self.config.adi_scale > 0

    def setup(self, teacher: Teacher) -> None:
        require_batchnorm(teacher, "deepinversion")
        if self.config.iterations < 1:
            raise ConfigError("deepinversion: iterations must be >= 1")
        self.teacher = teacher

    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        cfg, ctx, teacher = self.config, self.ctx, self.teacher
        if cfg.adi_scale > 0 and student is None:
            raise ConfigError("deepinversion: adi_scale > 0 needs the current student; run it inside a distillation task or set adi_scale=0")
        start = time.perf_counter()
        device = ctx.device
        labels = labels.to(device)
        channels, (height, width) = teacher.input.channels, teacher.input.image_size
        aux = cpu_generator_from(generator)
        x = torch.randn((labels.numel(), channels, height, width), generator=generator, device=generator.device)
        x = x.to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        scaler = ctx.grad_scaler()
        low = teacher.input.normalize(torch.zeros(1, channels, 1, 1, device=device))
        high = teacher.input.normalize(torch.ones(1, channels, 1, 1, device=device))
        best = BestSnapshot()
        use_adi = cfg.adi_scale > 0 and student is not None
        student_was_training = bool(student.training) if student is not None else False
        if use_adi:
            student.eval()
        bn = BNStatistics(teacher.model, first_multiplier=cfg.first_bn_multiplier)
        done = 0
        try:
            for step in range(1, cfg.iterations + 1):
                if ctx.stop_requested:
                    break
                x_jit = jitter_flip(x, aux, max_shift=cfg.jitter, flip=cfg.flip)
                with ctx.autocast():
                    logits = teacher.model(x_jit)
                    student_logits = student(x_jit) if use_adi else None
                terms = {
                    "loss_ce": nn.functional.cross_entropy(logits.float(), labels),
                    "loss_bn": bn.loss().to(device),
                    "loss_tv": total_variation(x_jit),
                    "loss_l2": l2_norm(x_jit),
                }
                total = cfg.ce_scale * terms["loss_ce"] + cfg.bn_scale * terms["loss_bn"]
                total = total + cfg.tv_scale * terms["loss_tv"] + cfg.l2_scale * terms["loss_l2"]
                if student_logits is not None:
                    terms["loss_adi"] = 1.0 - js_divergence(logits, student_logits, cfg.adi_temperature).clamp(0.0, 1.0)
                    total = total + cfg.adi_scale * terms["loss_adi"]
                terms["loss"] = total
                best.update(total, x, terms)
                (grad,) = torch.autograd.grad(scaler.scale(total), [x])
                x.grad = grad
                scaler.step(optimizer)
                scaler.update()
                x.grad = None
                if cfg.clip:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, high), low))
                done = step
                report_progress(logger, ctx, "deepinversion", step, cfg.iterations, terms,
                                "lower lr or bn_scale, or use --precision 32-true")
        finally:
            bn.remove()
            if use_adi and student_was_training:
                student.train()
        if best.images is None:
            best.update(torch.zeros((), device=device), x, {})
        return finish_batch(teacher, ctx, best.images, labels, best.terms,
                            iterations=done, seconds=time.perf_counter() - start)
