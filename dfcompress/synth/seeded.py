"""Seed-conditional inversion, "You Get What You Sow" (Zhu et al., IJCAI 2021), written from the paper.

Pixels x (normalised input space, initialised N(0, 1)) are optimised with Adam for (Eq. 5-7)

    L(x|y) = CE(T(x~), y) + alpha_CC R_CC(x~|y) + alpha_TV R_TV(x~) + alpha_l2 ||x~||_2
    R_CC   = sum_l mean_y ( ||Mean(x_l|y) - mu_{l,y}||_2 + ||Var(x_l|y) - sigma^2_{l,y}||_2 )

where x_l are the outputs of ordinary layers (convolutions by default) and the class-conditional
targets mu_{l,y}, sigma^2_{l,y} come from a statistics file made by ``dfcompress stats collect``
(scenario A: training set, B: seed folder, C: one augmented seed image). No BatchNorm is needed, so
BN-fused and BN-free teachers work. The loop is :func:`~dfcompress.synth.inversion.optimise`.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..components import SynthBatch, Teacher
from ..errors import ConfigError
from .inversion import InversionSynthesizer, finish_batch, image_terms, noise_pixels, optimise, term_weights, weighted_total
from .priors import cpu_generator_from, jitter_flip
from .seeded_stats import ClassStats, OutputCapture, class_conditional_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeededInversionConfig:
    stats: str = field(default="", metadata={"help": "path of the class-statistics file from 'dfcompress stats collect' (required)"})
    iterations: int = field(default=2000, metadata={"help": "Adam steps per batch (paper, CIFAR-10 KD: 2000)"})
    lr: float = field(default=0.05, metadata={"help": "Adam learning rate on the pixels (paper: 0.05 CIFAR, 0.25 ImageNet)"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    cc_scale: float = field(default=1.0, metadata={"help": "alpha_CC, weight of the class-conditional statistics term (paper CIFAR: 1.0, ImageNet: 0.01)"})
    tv_scale: float = field(default=2.5e-5, metadata={"help": "alpha_TV, weight of the 4-direction total variation (paper CIFAR: 2.5e-5)"})
    l2_scale: float = field(default=0.0, metadata={"help": "alpha_l2, weight of ||x||_2 (paper ImageNet: 1e-5; CIFAR not given, DI's 0)"})
    ce_scale: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term"})
    layers: str = field(default="", metadata={"help": "regular expression restricting the file's layers that are used (empty: all)"})
    jitter: int = field(default=2, metadata={"help": "random roll of up to this many pixels per iteration"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip per iteration"})


class SeededInversion(InversionSynthesizer):
    name = "seeded"
    summary = "Seed-conditional inversion: class-conditional feature statistics from seed images"
    paper = "Zhu et al., You Get What You Sow: High Fidelity Image Synthesis with a Single Pretrained Network, IJCAI 2021"
    Config = SeededInversionConfig
    iterations_option = "iterations"
    needs_guides = True

    def setup(self, teacher: Teacher) -> None:
        cfg = self.config
        if not cfg.stats:
            raise ConfigError(
                "seeded needs class statistics: --synth-opt stats=PATH, made with "
                "'dfcompress stats collect --teacher SPEC --data DIR --out stats.safetensors'"
            )
        super().setup(teacher)
        stats = ClassStats.load(cfg.stats)
        if stats.num_classes != teacher.input.num_classes:
            raise ConfigError(
                f"{cfg.stats} has statistics for {stats.num_classes} classes, the teacher has {teacher.input.num_classes}"
            )
        if cfg.layers:
            pattern = re.compile(cfg.layers)
            stats.layers = [n for n in stats.layers if pattern.search(n)]
            if not stats.layers:
                raise ConfigError(f"seeded: no layer of {cfg.stats} matches layers={cfg.layers!r}")
        self.stats = stats
        self._check_shapes()
        self._warned: set[int] = set()

    def _check_shapes(self) -> None:
        capture = OutputCapture(self.teacher.model, self.stats.layers)
        try:
            with torch.no_grad():
                self.teacher.model(self.teacher.input.example_input(2, device=self.ctx.device))
            for name in self.stats.layers:
                got = capture.outputs[name].shape[1] if name in capture.outputs else None
                want = self.stats.mean[name].shape[1]
                if got != want:
                    raise ConfigError(
                        f"layer {name} has {got} channels in the teacher but {want} in {self.config.stats}; "
                        "the statistics were collected on another model"
                    )
        finally:
            capture.remove()

    def invert(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        cfg, ctx, teacher, stats = self.config, self.ctx, self.teacher, self.stats
        start = time.perf_counter()
        device = ctx.device
        present = torch.unique(labels).cpu()
        covered = present[stats.counts.index_select(0, present) > 0]
        missing = sorted(set(present.tolist()) - set(covered.tolist()) - self._warned)
        if missing:
            self._warned.update(missing)
            logger.warning("seeded: no statistics for class(es) %s in %s; they get CE and priors only", missing, cfg.stats)
        classes = covered.to(device)
        aux = cpu_generator_from(generator)
        x = noise_pixels(teacher, labels.numel(), generator, device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        weights = term_weights(cfg, "loss_cc", cfg.cc_scale)
        capture = OutputCapture(teacher.model, stats.layers)

        def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
            x_jit = jitter_flip(x, aux, max_shift=cfg.jitter, flip=cfg.flip)
            with ctx.autocast():
                logits = teacher.model(x_jit)
            loss_cc = (
                class_conditional_loss(capture.outputs, stats, labels, classes)
                if classes.numel()
                else torch.zeros((), device=device)
            )
            capture.outputs = {}
            terms = image_terms(logits, labels, "loss_cc", loss_cc, x_jit)
            return weighted_total(terms, weights), terms, x

        try:
            found = optimise(ctx, step, [optimizer], iterations=cfg.iterations, where="seeded",
                             hint="lower lr or cc_scale, or use --precision 32-true", initial=lambda: x)
        finally:
            capture.remove()
        result = finish_batch(teacher, ctx, found.images, labels, found.terms, iterations=found.iterations,
                              seconds=time.perf_counter() - start)
        # the driver reports loss_bn for every synthesizer; here the statistics term is the class-conditional one
        if "loss_cc" in result.metrics:
            result.metrics["loss_bn"] = result.metrics["loss_cc"]
        return result
