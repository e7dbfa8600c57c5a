"""NaturalInversion (Kim et al., AAAI 2022), Algorithm 1, written from the paper and its appendix.

For every batch (one-to-one): initialise a conditional generator G (Table 6), a Feature Transfer
Pyramid P (Eq. 5, Table 7) and Adaptive Channel Scaling alpha in R^{B x C x 1 x 1} ~ N(5, 1)
(Eq. 6), sample z ~ N(0, 1)^1024, then for each inversion step

    x^   = G(z|y)                                   generator output
    m_L  = P(T_features(x^))                        FTP on the teacher's pyramid of x^
    x^'  = tanh(W1_out(m_L + x^))                   Table 7 output row
    I^   = alpha * x^'                              Eq. 7
    L    = CE(T(I~), y) + lambda_BN R_BN(I~) + lambda_TV R_TV(I~) + lambda_l2 ||I~||_2   (Eq. 8)

with I~ the randomly jittered/flipped I^, and update G, P and alpha jointly with Adam (learning
rates 1e-3, 5e-4, 5e-2). The lowest-loss I^ of the batch is returned; G, P and alpha are then
discarded. With ``adi_scale > 0`` and a student, the competition term 1 - JS(T(I~), S(I~)) is added; without
a student (an online warm-up round) it is left out. The loop is :func:`~dfcompress.synth.inversion.optimise`.
See docs/synthesizers.md for the departures from the reference implementation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..components import SynthBatch, Teacher
from ..errors import ConfigError
from .bn_stats import BNStatistics
from .inversion import (
    InversionSynthesizer, competition_term, finish_batch, image_terms, optimise, term_weights, weighted_total,
)
from .natural_nets import INIT_SCHEMES, ConditionalGenerator, FeatureTransferPyramid, reset_parameters
from .priors import cpu_generator_from, jitter_flip
from .pyramid import FeatureTaps, PyramidLevel, find_pyramid


@dataclass(frozen=True)
class NaturalInversionConfig:
    iterations: int = field(default=2000, metadata={"help": "inversion steps per batch (paper: 2k for CIFAR-10, 4k for CIFAR-100)"})
    lr_generator: float = field(default=1e-3, metadata={"help": "Adam learning rate of the generator (paper appendix: 0.001)"})
    lr_ftp: float = field(default=5e-4, metadata={"help": "Adam learning rate of the Feature Transfer Pyramid (paper appendix: 0.0005)"})
    lr_alpha: float = field(default=5e-2, metadata={"help": "Adam learning rate of the Adaptive Channel Scaling alpha (paper appendix: 0.05)"})
    bn_scale: float = field(default=10.0, metadata={"help": "lambda_BN (paper: 10 for CIFAR-10, 3 for CIFAR-100)"})
    tv_scale: float = field(default=6e-3, metadata={"help": "lambda_TV, weight of the 4-direction total variation (paper: 6e-3)"})
    l2_scale: float = field(default=1.5e-5, metadata={"help": "lambda_l2, weight of ||I||_2 (paper: 1.5e-5)"})
    ce_scale: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term"})
    latent_dim: int = field(default=1024, metadata={"help": "dimension of z ~ N(0, 1) (Table 6: 1024)"})
    generator_width: int = field(default=64, metadata={"help": "channels of the generator's first blocks (Table 6: 128; default 64 for speed, see docs; the last block has half)"})
    alpha_mean: float = field(default=5.0, metadata={"help": "mean of the N(mean, std) initialisation of alpha (paper: 5)"})
    alpha_std: float = field(default=1.0, metadata={"help": "std of the initialisation of alpha (paper: 1)"})
    one_to_one: bool = field(default=True, metadata={"help": "re-initialise generator and FTP for every batch (Table 3 ablation switch)"})
    ftp: bool = field(default=True, metadata={"help": "use the Feature Transfer Pyramid (Table 3 ablation switch)"})
    acs: bool = field(default=True, metadata={"help": "use Adaptive Channel Scaling alpha (Table 3 ablation switch)"})
    jitter: int = field(default=2, metadata={"help": "random roll of up to this many pixels of I before the teacher (reference code: 2)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip of I before the teacher"})
    pre_jitter: bool = field(default=False, metadata={"help": "also jitter and flip G(z|y) before the FTP's feature pass and the residual sum (the reference code does; the paper does not say)"})
    init: str = field(default="pytorch", metadata={"help": "initialisation of the generator: pytorch (PyTorch's default) or kaiming (He normal, zero bias, on its convolutions, as the reference code); the FTP keeps PyTorch's default. Three seeds on CIFAR-10: the same student accuracy (docs/synthesizers.md)",
                                                      "choices": INIT_SCHEMES})
    adi_scale: float = field(default=0.0, metadata={"help": "Adaptive DI competition weight (1 - JS(teacher, student)), as the paper's 'A-ours' rows; needs a student"})
    adi_temperature: float = field(default=3.0, metadata={"help": "softmax temperature of the competition term"})


class _Nets(nn.Module):
    """The generator and the FTP of one batch (or of the whole run when one_to_one is off)."""

    def __init__(self, generator: ConditionalGenerator, ftp: FeatureTransferPyramid | None) -> None:
        super().__init__()
        self.generator = generator
        self.ftp = ftp


class NaturalInversion(InversionSynthesizer):
    name = "natural"
    summary = "NaturalInversion: one-to-one generator + Feature Transfer Pyramid + Adaptive Channel Scaling"
    paper = "Kim et al., NaturalInversion: Data-Free Image Synthesis Improving Real-World Consistency, AAAI 2022"
    Config = NaturalInversionConfig
    uses_student = True
    iterations_option = "iterations"
    needs_batchnorm = True

    def wants_student(self) -> bool:
        return self.config.adi_scale > 0

    def setup(self, teacher: Teacher) -> None:
        cfg = self.config
        super().setup(teacher)
        if cfg.generator_width < 2:
            raise ConfigError("natural: generator_width must be >= 2")
        if cfg.init not in INIT_SCHEMES:
            raise ConfigError(f"natural: init must be one of {', '.join(INIT_SCHEMES)}, not {cfg.init!r}")
        self.levels: list[PyramidLevel] = find_pyramid(teacher.model, teacher.input, self.ctx.device) if cfg.ftp else []
        self._nets: _Nets | None = None
        self._net_optimizer: torch.optim.Optimizer | None = None

    def _build_nets(self, init: torch.Generator) -> tuple[_Nets, torch.optim.Optimizer]:
        cfg, spec = self.config, self.teacher.input
        gen = ConditionalGenerator(cfg.latent_dim, spec.num_classes, spec.channels, spec.image_size, cfg.generator_width)
        ftp = None
        if cfg.ftp:
            ftp = FeatureTransferPyramid(
                [level.channels for level in self.levels], [level.size for level in self.levels], spec.channels, spec.image_size
            )
        nets = _Nets(gen, ftp)
        reset_parameters(gen, init, cfg.init)
        if ftp is not None:
            reset_parameters(ftp, init)
        nets = self.ctx.layout(nets.to(self.ctx.device)).train()
        groups = [{"params": list(gen.parameters()), "lr": cfg.lr_generator}]
        if ftp is not None:
            groups.append({"params": list(ftp.parameters()), "lr": cfg.lr_ftp})
        return nets, torch.optim.Adam(groups)

    def invert(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        cfg, ctx, teacher = self.config, self.ctx, self.teacher
        start = time.perf_counter()
        device = ctx.device
        batch = labels.numel()
        aux = cpu_generator_from(generator)
        if cfg.one_to_one or self._nets is None:
            self._nets, self._net_optimizer = self._build_nets(aux)
        nets, net_optimizer = self._nets, self._net_optimizer
        assert net_optimizer is not None
        z = torch.randn((batch, cfg.latent_dim), generator=generator, device=generator.device).to(device)
        alpha = torch.randn((batch, teacher.input.channels, 1, 1), generator=generator, device=generator.device)
        alpha = (alpha * cfg.alpha_std + cfg.alpha_mean).to(device).requires_grad_(cfg.acs)
        alpha_optimizer = torch.optim.Adam([alpha], lr=cfg.lr_alpha) if cfg.acs else None
        optimizers = [net_optimizer] if alpha_optimizer is None else [net_optimizer, alpha_optimizer]
        weights = term_weights(cfg, "loss_bn", cfg.bn_scale, competition=student is not None)
        bn = BNStatistics(teacher.model)
        taps = FeatureTaps(teacher.model, self.levels) if nets.ftp is not None else None

        def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
            image = self._render(nets, z, labels, alpha, bn, taps, aux if cfg.pre_jitter else None)
            image_jit = jitter_flip(image, aux, max_shift=cfg.jitter, flip=cfg.flip)
            with ctx.autocast():
                logits = teacher.model(image_jit)
            terms = image_terms(logits, labels, "loss_bn", bn.loss().to(device), image_jit)
            if student is not None:
                with ctx.autocast():
                    student_logits = student(image_jit)
                terms["loss_adi"] = competition_term(logits, student_logits, cfg.adi_temperature)
            return weighted_total(terms, weights), terms, image

        try:
            result = optimise(ctx, step, optimizers, iterations=cfg.iterations, where="natural",
                              hint="lower the learning rates or bn_scale, or use --precision 32-true",
                              initial=lambda: self._render(nets, z, labels, alpha, bn, taps))
        finally:
            bn.remove()
            if taps is not None:
                taps.remove()
        if cfg.one_to_one:
            self._nets, self._net_optimizer = None, None
        return finish_batch(teacher, ctx, result.images, labels, result.terms, iterations=result.iterations,
                            seconds=time.perf_counter() - start, student_used=student is not None,
                            feature_passes=int(taps is not None))

    def _render(
        self,
        nets: _Nets,
        z: torch.Tensor,
        labels: torch.Tensor,
        alpha: torch.Tensor,
        bn: BNStatistics,
        taps: FeatureTaps | None,
        pre_jitter: torch.Generator | None = None,
    ) -> torch.Tensor:
        """I^ = alpha * tanh(W1_out(P(T_features(G(z|y))) + G(z|y))) (Algorithm 1, lines 5-8); with
        ``pre_jitter`` (a CPU generator) G(z|y) is jittered and flipped first (option ``pre_jitter``)."""
        ctx = self.ctx
        with ctx.autocast():
            generated = nets.generator(z, labels)
        generated = generated.float()
        if pre_jitter is not None:
            generated = jitter_flip(generated, pre_jitter, max_shift=self.config.jitter, flip=self.config.flip)
        if nets.ftp is not None and taps is not None:
            bn.active = False
            taps.clear()
            taps.active = True
            try:
                with torch.no_grad(), ctx.autocast():
                    self.teacher.model(generated.detach())
                features = [f.float() for f in taps.features()]
            finally:
                bn.active = True
                taps.active = False
                taps.clear()
            with ctx.autocast():
                image = nets.ftp.combine(generated, nets.ftp(features))
        else:
            image = torch.tanh(generated)
        image = image.float()
        return alpha * image if self.config.acs else image

    def close(self) -> None:
        self._nets, self._net_optimizer = None, None
