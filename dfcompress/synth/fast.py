"""Fast (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI 2022), written from the paper.

One persistent generator G_theta (:class:`~dfcompress.synth.fast_nets.FastGenerator`) is shared across
batches; its parameters theta are a meta-learned *start point*. For every batch:

1. clone theta into a fast generator theta' and draw fresh latent codes z ~ N(0, 1) (optimised too);
2. take ``g_steps`` Adam steps on theta' and z (Fast-2/5/10) for

       L = bn_scale * R_BN^mmt(x~) + ce_scale * CE(T(x~), y) + adv_scale * L_adv(x~),   x = G_theta'(z)

   with x~ a random crop (padding 4) and flip of x, R_BN^mmt the BatchNorm-statistics distance of
   :class:`MomentumBNStatistics` (this batch's statistics mixed with a running average over the previous
   batches, momentum ``bn_momentum``), and the adversarial term

       L_adv = - mean_i [ argmax T(x~_i) == argmax S(x~_i) ] * KL(softmax T(x~_i) || softmax S(x~_i))

   which pushes the generator towards images where the current student S still agrees with the teacher but
   is about to diverge; it is on only when the schedule passes a student (online rounds after the warm-up);
3. meta-update theta: FOMAML (default: the sum of the inner steps' gradients, applied by a meta Adam at
   learning rate ``lr_generator * g_steps``) or Reptile (theta += reptile_step * (theta' - theta));
4. return the lowest-loss batch of the inner steps; the schedule adds it to the pool the student trains on.

The meta generator, its optimizer and the BatchNorm running averages are the synthesizer's state
(:meth:`FastSynthesizer.state_dict`), saved with every online round. See docs/synthesizers.md for the
defaults and the departures from the paper and its reference code.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..components import SynthBatch, Synthesizer, Teacher
from ..context import check_finite
from ..distill.augment import random_crop_flip
from ..errors import ConfigError
from .bn_stats import BNStatistics
from .fast_nets import FastGenerator, accumulate_fomaml, reptile_update
from .inversion import BestSnapshot, require_batchnorm
from .priors import cpu_generator_from, frozen

logger = logging.getLogger(__name__)

#: the reference scripts' learning rates (generator, latent codes) for Fast-2, Fast-5 and Fast-10
PAPER_LEARNING_RATES = {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}
META_METHODS = ("fomaml", "reptile")


def paper_learning_rates(g_steps: int) -> tuple[float, float]:
    """(lr_generator, lr_z) of the Fast-k setting nearest to ``g_steps``."""
    nearest = min(PAPER_LEARNING_RATES, key=lambda k: (abs(k - g_steps), k))
    return PAPER_LEARNING_RATES[nearest]


def _finite_grads(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (float16 steps whose scaled loss overflowed are skipped)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def masked_adversarial_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """L_adv = -mean_i m_i KL(p_T(x_i) || p_S(x_i)), m_i = 1 where teacher and student predict the same class.

    The mean is over the whole batch (masked samples count as zeros), in float32."""
    t, s = teacher_logits.float(), student_logits.float()
    log_t, log_s = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    mask = (t.argmax(dim=1) == s.argmax(dim=1)).float()
    return -(kl * mask).mean()


class MomentumBNStatistics(BNStatistics):
    """R_BN against statistics mixed with a running average over previous batches (Fast, Eq. of "BN momentum").

    For every BatchNorm layer l, with (mu_l, var_l) this forward pass's statistics and (mu~_l, var~_l) the
    running average of the previous batches, R_BN uses (1 - m) * mu_l + m * mu~_l (and the same for var_l);
    on the first batch there is no average and the plain statistics are used. :meth:`remember` folds the last
    forward pass's statistics into the average: mu~ <- m * mu~ + (1 - m) * mu (or mu~ <- mu the first time)."""

    def __init__(self, model: nn.Module, momentum: float, history: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        super().__init__(model)
        self.momentum = float(momentum)
        self.index = {id(module): i for i, (_, module) in enumerate(self.layers)}
        self.history = list(history) if history else [None] * len(self.layers)
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _add(self, module: nn.Module, weight: float, mean: torch.Tensor, var: torch.Tensor) -> None:
        i = self.index[id(module)]
        self.last[i] = (mean.detach(), var.detach())
        previous = self.history[i]
        if previous is not None:
            m = self.momentum
            mean = mean * (1.0 - m) + previous[0] * m
            var = var * (1.0 - m) + previous[1] * m
        super()._add(module, weight, mean, var)

    def remember(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Fold the last pass's statistics into the running average and return the new history."""
        m = self.momentum
        for i, (mean, var) in self.last.items():
            previous = self.history[i]
            self.history[i] = (mean, var) if previous is None else (previous[0] * m + mean * (1 - m),
                                                                    previous[1] * m + var * (1 - m))
        return self.history


@dataclass(frozen=True)
class FastConfig:
    g_steps: int = field(default=2, metadata={"help": "generator steps per batch: 2, 5 or 10 are the paper's Fast-2/5/10"})
    lr_generator: float = field(default=0.0, metadata={"help": "Adam learning rate of the cloned generator; 0: the paper's for g_steps (5e-3, 3e-3, 2e-3 for Fast-2/5/10)"})
    lr_z: float = field(default=0.0, metadata={"help": "Adam learning rate of the latent codes; 0: the paper's for g_steps (0.015, 0.01, 0.01)"})
    meta: str = field(default="fomaml", metadata={"help": "meta-update of the generator's start point: fomaml (paper default) or reptile", "choices": META_METHODS})
    reptile_step: float = field(default=0.5, metadata={"help": "Reptile interpolation step epsilon: theta += epsilon (theta' - theta) (chosen; the paper gives none)"})
    bn_scale: float = field(default=10.0, metadata={"help": "weight of the BatchNorm-statistics term (reference CIFAR scripts: 10)"})
    ce_scale: float = field(default=0.4, metadata={"help": "weight of the cross-entropy to the sampled labels (reference CIFAR scripts: 0.4-0.5)"})
    adv_scale: float = field(default=1.1, metadata={"help": "weight of the masked adversarial KL term, on when the schedule gives a student (reference CIFAR ResNets: 1.1)"})
    bn_momentum: float = field(default=0.9, metadata={"help": "momentum of the running average of BatchNorm statistics across batches (paper: 0.9)"})
    latent_dim: int = field(default=256, metadata={"help": "dimension of z (reference: 256)"})
    generator_width: int = field(default=64, metadata={"help": "channels of the generator's last block (the others have twice as many; reference: 64)"})
    crop_padding: int = field(default=4, metadata={"help": "padding of the random crop applied before the teacher (reference: 4)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip before the teacher"})
    conditional: bool = field(default=False, metadata={"help": "class-conditional generator: a learned label embedding concatenated to z (not the paper's; its generator is unconditional)"})
    reset_first_layer_at: int = field(default=0, metadata={"help": "re-initialise the generator's first layer at this batch (0: never; the reference does at epoch 120 + warm-up of 220)"})


class FastSynthesizer(Synthesizer):
    name = "fast"
    summary = "Fast: a meta-learned generator that synthesizes while the student trains (online)"
    paper = "Fang et al., Up to 100x Faster Data-free Knowledge Distillation, AAAI 2022"
    Config = FastConfig
    uses_student = True
    #: g_steps (2/5/10 from a meta-learned start) is not the per-batch optimisation budget --iterations sets
    iterations_option = None
    stateful = True
    needs_batchnorm = True
    default_schedule = "online"
    #: the rounds measured best on the CPU time-budget leaderboard (docs/synthesizers.md, "Batches of 32"): a
    #: meta-update every 32 images, 5 KD steps a round, 80 synthesis-only rounds first, a pool of up to 50,000
    run_defaults = {"batch_size": 32, "round_steps": 5, "warmup_rounds": 80, "num_images": 50000}

    def setup(self, teacher: Teacher) -> None:
        cfg = self.config
        require_batchnorm(teacher, "fast")
        problems = [
            (cfg.g_steps >= 1, "g_steps must be >= 1"),
            (cfg.meta in META_METHODS, f"meta must be one of {', '.join(META_METHODS)}"),
            (0.0 <= cfg.bn_momentum < 1.0, "bn_momentum must be in [0, 1)"),
            (cfg.latent_dim >= 1 and cfg.generator_width >= 1, "latent_dim and generator_width must be >= 1"),
            (cfg.lr_generator >= 0 and cfg.lr_z >= 0, "learning rates must be >= 0 (0: the paper's)"),
            (cfg.crop_padding >= 0, "crop_padding must be >= 0"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"fast: {message}")
        self.teacher = teacher
        spec = teacher.input
        paper_g, paper_z = paper_learning_rates(cfg.g_steps)
        self.lr_generator = cfg.lr_generator or paper_g
        self.lr_z = cfg.lr_z or paper_z
        with torch.random.fork_rng(devices=[]):  # the generator's initialisation depends on the run seed only
            torch.manual_seed(self.ctx.seed)
            try:
                self.generator = FastGenerator(cfg.latent_dim, spec.channels, spec.image_size, cfg.generator_width,
                                               num_classes=spec.num_classes if cfg.conditional else 0)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.ctx.layout(self.generator.to(self.ctx.device)).train()
        self.meta_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.lr_generator * cfg.g_steps,
                                               betas=(0.5, 0.999))
        self.bn_history: list[Any] = []
        self.batches = 0
        #: one gradient scaler for the whole run (float16 only): with 2-10 inner steps a batch, a scaler per batch
        #: would spend every step finding its scale
        self.scaler = self.ctx.grad_scaler()

    # -- state across batches -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        history = [[] if h is None else [h[0].cpu(), h[1].cpu()] for h in self.bn_history]
        return {"generator": self.generator.state_dict(), "meta_optimizer": self.meta_optimizer.state_dict(),
                "bn_history": history, "batches": self.batches, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.ctx.device
        self.generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.bn_history = [None if not h else (h[0].to(device), h[1].to(device)) for h in state["bn_history"]]
        self.batches = int(state["batches"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # -- one batch ----------------------------------------------------------------------------------
    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        with frozen(student):
            return self._synthesize(labels.to(self.ctx.device), generator, student)

    def _synthesize(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        cfg, ctx, teacher = self.config, self.ctx, self.teacher
        start = time.perf_counter()
        spec, device, n = teacher.input, ctx.device, labels.numel()
        aux = cpu_generator_from(generator)
        if cfg.reset_first_layer_at and self.batches == cfg.reset_first_layer_at:
            self.generator.reset_first_layer(aux)
            logger.info("fast: re-initialised the generator's first layer at batch %d", self.batches)
        fast = copy.deepcopy(self.generator).train()
        z = torch.randn((n, cfg.latent_dim), generator=generator, device=generator.device).to(device)
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": self.lr_z}],
                                     lr=self.lr_generator, betas=(0.5, 0.999))
        use_adv = student is not None and cfg.adv_scale > 0
        bn = MomentumBNStatistics(teacher.model, cfg.bn_momentum, self.bn_history)
        best = BestSnapshot()
        scaler = self.scaler
        if cfg.meta == "fomaml":
            self.meta_optimizer.zero_grad(set_to_none=True)
        try:
            for step in range(1, cfg.g_steps + 1):
                with ctx.autocast():
                    pixels = fast(z, labels if cfg.conditional else None)
                pixels = pixels.float()
                augmented = random_crop_flip(pixels, padding=cfg.crop_padding, flip=cfg.flip, generator=aux)
                x = spec.normalize(augmented)
                with ctx.autocast():
                    logits = teacher.model(x)
                terms = {"loss_bn": bn.loss().to(device), "loss_ce": F.cross_entropy(logits.float(), labels)}
                total = cfg.bn_scale * terms["loss_bn"] + cfg.ce_scale * terms["loss_ce"]
                if use_adv:
                    with ctx.autocast():
                        student_logits = student(x)
                    terms["loss_adv"] = masked_adversarial_kl(logits, student_logits)
                    total = total + cfg.adv_scale * terms["loss_adv"]
                terms["loss"] = total
                terms["teacher_acc"] = (logits.detach().argmax(dim=1) == labels).float().mean()
                best.update(total, pixels, terms)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)  # float16: true gradients for the meta step; otherwise a no-op
                if cfg.meta == "fomaml" and (not scaler.is_enabled() or _finite_grads(fast)):
                    accumulate_fomaml(self.generator, fast)
                scaler.step(optimizer)  # float16: skipped when a gradient overflowed
                scaler.update()
                if step % max(1, ctx.log_every) == 0 or step == cfg.g_steps:
                    check_finite(terms, step=step, where="fast", hint="lower lr_generator or bn_scale, or use --precision 32-true")
            self.bn_history = bn.remember()
        finally:
            bn.remove()
        if cfg.meta == "fomaml":
            self.meta_optimizer.step()
            self.meta_optimizer.zero_grad(set_to_none=True)
        else:
            reptile_update(self.generator, fast, cfg.reptile_step)
        self.batches += 1
        metrics = {k: float(v) for k, v in best.terms.items()}
        work = n * cfg.g_steps
        metrics.update(iterations=float(cfg.g_steps), seconds=time.perf_counter() - start,
                       work_teacher=float(work), work_generator=float(work),
                       work_student=float(work if use_adv else 0))
        assert best.images is not None
        return SynthBatch(images=best.images.clamp(0.0, 1.0).cpu(), labels=labels.detach().long().cpu(),
                          metrics=metrics)
