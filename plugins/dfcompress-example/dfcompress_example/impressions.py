"""Class-conditional data impressions, after Nayak et al., *Zero-Shot Knowledge Distillation in Deep
Networks* (ICML 2019, arXiv:1905.08114).

For every requested label ``k`` a soft target ``y ~ Dir(alpha_k)`` is drawn, whose mean puts
``label_mass`` on ``k`` and spreads the rest over the other classes in proportion to how similar the
teacher thinks they are (cosine similarity of the rows of its final linear layer, min-max normalised as
in ZSKD's class-similarity matrix). ``dirichlet_beta`` is the Dirichlet's total concentration: large
values give targets close to that mean, small ones more varied targets; ``0`` replaces the soft target
with plain cross-entropy to the label.

Pixels start as Gaussian noise in the teacher's input space and are optimised with Adam so that the
teacher's softmax at temperature ``T`` matches the target (cross-entropy), plus total-variation and l2
image priors, with a random jitter (roll) every step. After each step the image is projected back into
the valid pixel range [0, 1]. Nothing depends on BatchNorm statistics, so any classifier can be
inverted, BatchNorm-free or BN-fused ones included.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dfcompress.components import SynthBatch, Synthesizer, Teacher
from dfcompress.context import check_finite
from dfcompress.errors import ConfigError, DFCompressError, Interrupted

logger = logging.getLogger(__name__)

#: Concentrations are floored here: a Dirichlet needs every alpha > 0.
_MIN_ALPHA = 1e-3


def sample_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) samples with every random number drawn from ``generator``.

    Marsaglia & Tsang's method (ACM TOMS 2000) with the ``alpha < 1`` boost
    ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``. ``torch.distributions`` cannot take a generator, which
    would make a batch depend on the global RNG. Runs on the generator's device in float64."""
    device = generator.device
    shape = alpha.shape
    a = alpha.detach().to(device=device, dtype=torch.float64).reshape(-1)
    if (a <= 0).any() or not torch.isfinite(a).all():
        raise ValueError("Gamma concentrations must be positive and finite")
    boosted = a < 1
    a_eff = torch.where(boosted, a + 1, a)
    d = a_eff - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.arange(a.numel(), device=device)
    while todo.numel():  # each round accepts > 95 % of the remaining draws
        dd, cc = d[todo], c[todo]
        x = torch.randn(todo.shape, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(todo.shape, generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + cc * x) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
        accept = positive & (torch.log(u) < 0.5 * x * x + dd - dd * v + dd * log_v)
        out[todo[accept]] = (dd * v)[accept]
        todo = todo[~accept]
    u = torch.rand(a.shape, generator=generator, device=device, dtype=torch.float64)
    out = torch.where(boosted, out * u.pow(1.0 / a), out)
    return out.reshape(shape)


def sample_dirichlet(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Dirichlet sample per row of ``alpha`` (rows sum to 1), drawn from ``generator``."""
    g = sample_gamma(alpha, generator)
    total = g.sum(dim=-1, keepdim=True)
    # With tiny concentrations every gamma of a row can underflow; such a row falls back to its mean.
    mean = alpha.to(g) / alpha.to(g).sum(dim=-1, keepdim=True)
    return torch.where(total > 0, g / total.clamp_min(torch.finfo(g.dtype).tiny), mean)


def find_classifier(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The teacher's final linear layer (``num_classes`` outputs), or None if there is none."""
    get_classifier = getattr(model, "get_classifier", None)  # timm models
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Linear) and head.out_features == num_classes:
            return head
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = module
    return found


def off_label_weights(head: nn.Linear | None, num_classes: int) -> torch.Tensor:
    """A K x K matrix whose row k spreads the non-label mass of class k over the other classes.

    With a classifier head: ZSKD's class similarity (cosine of the weight rows), min-max normalised
    over the other classes; otherwise uniform. Rows sum to 1 and the diagonal is 0."""
    k = num_classes
    eye = torch.eye(k, dtype=torch.bool)
    if k == 1:
        return torch.zeros(1, 1)
    weights = torch.ones(k, k)
    if head is not None:
        w = F.normalize(head.weight.detach().float().cpu(), dim=1)
        sim = w @ w.T
        lo = sim.masked_fill(eye, float("inf")).min(dim=1, keepdim=True).values
        hi = sim.masked_fill(eye, float("-inf")).max(dim=1, keepdim=True).values
        span = hi - lo
        scaled = (sim - lo) / span.clamp_min(1e-12)
        # a row whose other classes are all equally similar gets uniform weights
        weights = torch.where(span > 1e-12, scaled, torch.ones_like(scaled))
        weights = weights + 1e-2  # keep every class reachable
    weights = weights.masked_fill(eye, 0.0)
    return weights / weights.sum(dim=1, keepdim=True)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (anisotropic, l2)."""
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


class ClassImpressions(Synthesizer):
    """ZSKD data impressions: Dirichlet soft labels, temperature-scaled cross-entropy, TV and l2 priors."""

    name = "impressions"
    summary = (
        "ZSKD data impressions: pixels fit to Dirichlet soft labels at temperature T "
        "(no BatchNorm statistics, any teacher)"
    )
    paper = "arXiv:1905.08114"
    iterations_option = "iterations"

    @dataclass(frozen=True)
    class Config:
        iterations: int = field(
            default=1500, metadata={"help": "Adam steps per batch (the paper uses 1500)"}
        )
        lr: float = field(
            default=0.05, metadata={"help": "Adam learning rate on the pixels, in the teacher's input space"}
        )
        temperature: float = field(
            default=20.0,
            metadata={"help": "softmax temperature T of the teacher's logits (the paper uses 20)"},
        )
        dirichlet_beta: float = field(
            default=20.0,
            metadata={
                "help": "total concentration of the Dirichlet the soft targets are drawn from; larger is "
                "closer to the mean target, 0 means plain cross-entropy to the label"
            },
        )
        label_mass: float = field(
            default=0.8,
            metadata={"help": "probability the mean soft target puts on the requested label (0, 1]"},
        )
        class_similarity: bool = field(
            default=True,
            metadata={
                "help": "spread the remaining mass by the teacher's class similarity (cosine of its "
                "final-layer weights, as in ZSKD) instead of uniformly"
            },
        )
        tv: float = field(default=1e-2, metadata={"help": "weight of the total-variation prior"})
        l2: float = field(
            default=1e-4, metadata={"help": "weight of the l2 prior on the (normalised) input"}
        )
        jitter: float = field(
            default=0.0625,
            metadata={
                "help": "largest random roll per step, as a fraction of the image side (0.0625: 2 pixels "
                "at 32x32, 1 at 8x8); 0 turns jitter off"
            },
        )

        def __post_init__(self) -> None:
            problems = []
            if self.iterations < 0:
                problems.append("iterations must be >= 0")
            if self.lr <= 0:
                problems.append("lr must be > 0")
            if self.temperature <= 0:
                problems.append("temperature must be > 0")
            if self.dirichlet_beta < 0:
                problems.append("dirichlet_beta must be >= 0 (0: cross-entropy to the label)")
            if not 0 < self.label_mass <= 1:
                problems.append("label_mass must be in (0, 1]")
            if self.tv < 0 or self.l2 < 0:
                problems.append("tv and l2 must be >= 0")
            if not 0 <= self.jitter < 0.5:
                problems.append("jitter must be in [0, 0.5)")
            if problems:
                raise ConfigError(f"impressions options: {'; '.join(problems)}")

    def setup(self, teacher: Teacher) -> None:
        super().setup(teacher)
        model = teacher.model
        if model.training:
            logger.warning("impressions: the teacher was in train mode; switching it to eval mode")
            model.eval()
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else self.ctx.device
        k = teacher.input.num_classes
        head = find_classifier(model, k) if self.config.class_similarity else None
        if self.config.class_similarity and head is None:
            logger.info(
                "impressions: no final nn.Linear with %d outputs in %s; spreading soft targets uniformly",
                k, teacher.spec or type(model).__name__,
            )
        self.off_label = off_label_weights(head, k)
        lo = teacher.input.normalize(torch.zeros(1, teacher.input.channels, 1, 1))
        hi = teacher.input.normalize(torch.ones(1, teacher.input.channels, 1, 1))
        self.bounds = (torch.minimum(lo, hi).to(self.device), torch.maximum(lo, hi).to(self.device))

    def soft_targets(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Dirichlet soft targets (N x K, on the teacher's device) around the one-hot labels."""
        cfg = self.config
        k = self.teacher.input.num_classes
        labels_cpu = labels.detach().cpu()
        one_hot = F.one_hot(labels_cpu, k).double()
        mean = cfg.label_mass * one_hot + (1.0 - cfg.label_mass) * self.off_label.double()[labels_cpu]
        alpha = (cfg.dirichlet_beta * mean).clamp_min(_MIN_ALPHA)
        return sample_dirichlet(alpha, generator).float().to(self.device)

    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        if not hasattr(self, "teacher"):
            raise DFCompressError("impressions: call setup(teacher) before synthesize_batch")
        cfg, spec, model = self.config, self.teacher.input, self.teacher.model
        labels = labels.detach().to(self.device, torch.long).reshape(-1)
        k = spec.num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= k):
            raise DFCompressError(f"impressions: labels must be in [0, {k}), got {labels.tolist()}")
        n = labels.numel()
        start = time.perf_counter()
        gen_device = generator.device

        # every random draw of the batch comes from `generator`, in a fixed order
        x = torch.randn((n, spec.channels, *spec.image_size), generator=generator, device=gen_device)
        x = torch.max(torch.min(x.to(self.device), self.bounds[1]), self.bounds[0]).requires_grad_(True)
        targets = self.soft_targets(labels, generator) if cfg.dirichlet_beta > 0 else None
        jitter = math.floor(cfg.jitter * min(spec.image_size) + 0.5)
        shifts = (  # drawn up front: no host synchronisation inside the loop
            torch.randint(-jitter, jitter + 1, (cfg.iterations, 2), generator=generator,
                          device=gen_device).tolist()
            if jitter
            else [[0, 0]] * cfg.iterations
        )

        optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=(0.9, 0.999))
        scaler = self.ctx.grad_scaler()
        log_every = max(1, int(self.ctx.log_every))
        terms: dict[str, torch.Tensor] = {}
        for step in range(cfg.iterations):
            if self.ctx.stop_requested:
                raise Interrupted(f"impressions: stopped at step {step} of {cfg.iterations} of a batch")
            dy, dx = shifts[step]
            x_in = torch.roll(x, shifts=(dy, dx), dims=(2, 3)) if (dy or dx) else x
            with self.ctx.autocast():
                logits = model(x_in)
            log_probs = F.log_softmax(logits.float() / cfg.temperature, dim=1)
            if targets is None:
                fit = F.nll_loss(log_probs, labels)
            else:
                fit = -(targets * log_probs).sum(dim=1).mean()
            terms = {"fit": fit, "tv": total_variation(x), "l2": x.pow(2).mean()}
            loss = fit + cfg.tv * terms["tv"] + cfg.l2 * terms["l2"]
            optimizer.zero_grad(set_to_none=True)
            # grad w.r.t. the pixels only: the teacher's parameters are never touched
            (x.grad,) = torch.autograd.grad(scaler.scale(loss), [x])
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                x.copy_(torch.max(torch.min(x, self.bounds[1]), self.bounds[0]))
            if (step + 1) % log_every == 0 or step + 1 == cfg.iterations:
                check_finite(terms, step=step, where="impressions", hint="lower --synth-opt lr or temperature")
                logger.debug(
                    "impressions step %d/%d: %s", step + 1, cfg.iterations,
                    " ".join(f"{name}={value.item():.4g}" for name, value in terms.items()),
                )

        with torch.no_grad(), self.ctx.autocast():
            final_logits = model(x.detach())
        agreement = (final_logits.argmax(dim=1) == labels).float().mean().item() if n else 0.0
        images = spec.denormalize(x.detach().float()).clamp(0, 1).cpu()
        metrics = {name: float(value.item()) for name, value in terms.items()}
        metrics.update(
            iterations=float(cfg.iterations),
            agreement=float(agreement),
            seconds=time.perf_counter() - start,
        )
        logger.info(
            "impressions: %d images, %d steps, teacher agrees with %.0f%% of labels, %.1fs",
            n, cfg.iterations, 100 * agreement, metrics["seconds"],
        )
        return SynthBatch(images=images, labels=labels.cpu(), metrics=metrics)

    def close(self) -> None:
        """Drop the per-teacher buffers (class-similarity weights, pixel bounds)."""
        for attr in ("off_label", "bounds"):
            self.__dict__.pop(attr, None)

