"""IMAGINE: image-guided model inversion (Wang, Li, Singh, Lu, Vasconcelos, CVPR 2021), written from the paper.

Each output image x (pixels in the teacher's normalised input space, initialised N(0, 1)) has a target
(guide) image x0 and is optimised with Adam for (Eq. 9)

    L(x) = CE(f(x~), y*) + R_prior(x~) + lambda R_fm(x~; x0~) + gamma R_pc(x~)

    R_prior = alpha_TV R_TV(x~) + alpha_l2 ||x~||_2                     (image priors, as DeepInversion)
    R_fm    = sum_l ( ||mu_l(x~) - mu_l(x0~)||_2 + ||s2_l(x~) - s2_l(x0~)||_2 )   (Eq. 5, the "H" term)
    R_pc    = BCE(D(x~), 1)                                            (patch consistency, the "D" term)

with x~ the output randomly rolled and flipped (DeepInversion's jitter), x0~ the target randomly cropped and
flipped at every iteration (supplement, "Data pre-processing"), mu_l / s2_l the per-channel mean and variance
over the spatial positions of layer l's output for that one image (every convolution by default: "all levels"
of the classifier), averaged over the outputs of the batch, and y* the class the teacher predicts for the
target (default), the guide's own class, or a class given by the user (supplement Fig. 6). D is the patch
discriminator of supplement Table 1 (:class:`PatchDiscriminator`), trained at every iteration to tell the
targets' patches (real) from the outputs' (fake) with the standard GAN loss (updated before the outputs' step
at each iteration), and discarded after the batch.

The ablations of supplement Table 3 are two switches: ``feature_matching`` (H) and ``discriminator`` (D):
baseline = both off, baseline+D, baseline+H, full = both on (default). No BatchNorm statistics are used, so
BN-free and BN-fused teachers work.

Where the paper is silent (choices, see docs/synthesizers.md): lambda, gamma and the learning rates; the
discriminator's padding (none, as SinGAN's) and its loss (binary cross-entropy on the patch logits); one
discriminator per batch shared by the batch's targets (the paper optimises one target at a time, up to 16
outputs; ``dfcompress imagine`` does the same), which sees 16 random outputs of the batch per iteration
(``d_batch``: its cost stays that of the paper's batch however large the batch), crops of side 75-100 % of the
target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..components import SynthBatch, Teacher
from ..errors import ConfigError
from .inversion import InversionSynthesizer, finish_batch, noise_pixels, optimise, weighted_total
from .priors import cpu_generator_from, jitter_flip, l2_norm, total_variation
from .seeded_stats import OutputCapture, select_layers

TARGETS = ("predicted", "guide")


@dataclass(frozen=True)
class ImagineConfig:
    guides: str = field(default="", metadata={
        "help": "the guide (target) images: an image folder with one sub-folder per class, or any data spec "
                "(cifar10:PATH:train); required"})
    guides_per_class: int = field(default=0, metadata={"help": "use this many guides of each class (0: all)"})
    guides_seed: int = field(default=0, metadata={"help": "seed of the draw of guides_per_class"})
    iterations: int = field(default=2000, metadata={"help": "Adam steps per batch"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate on the pixels"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas of the pixels"})
    target: str = field(default="predicted", metadata={
        "help": "class y* of the cross-entropy term: predicted (the teacher's class for the guide, the paper's "
                "default), guide (the guide's own class) or a class index (supplement Fig. 6)"})
    ce_scale: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term"})
    feature_matching: bool = field(default=True, metadata={"help": "the H term: match the guide's per-channel "
                                                                    "feature statistics at every level (Table 3)"})
    fm_scale: float = field(default=1.0, metadata={"help": "lambda, weight of the feature-distribution term"})
    discriminator: bool = field(default=True, metadata={"help": "the D term: a patch discriminator against the "
                                                                 "guide's patches (Table 3)"})
    d_scale: float = field(default=0.1, metadata={"help": "gamma, weight of the patch-consistency (adversarial) term"})
    d_lr: float = field(default=2e-4, metadata={"help": "Adam learning rate of the discriminator (betas 0.5, 0.999)"})
    d_width: int = field(default=128, metadata={"help": "channels of the discriminator (supplement Table 1: 128)"})
    d_batch: int = field(default=16, metadata={
        "help": "outputs (and as many target views) the discriminator sees per iteration, drawn at random; the "
                "paper's batch is 16 outputs of one target (0: the whole batch)"})
    tv_scale: float = field(default=1e-3, metadata={"help": "alpha_TV, weight of the 4-direction total variation"})
    l2_scale: float = field(default=0.0, metadata={"help": "alpha_l2, weight of ||x||_2"})
    layers: str = field(default="Conv2d", metadata={
        "help": "layers whose outputs are matched: class names (Conv2d,Linear) or re:PATTERN on module names"})
    crop_min: float = field(default=0.75, metadata={"help": "random crops of the guide keep a side of this fraction to 1"})
    jitter: int = field(default=2, metadata={"help": "random roll of the outputs of up to this many pixels per iteration"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip of the outputs per iteration"})


class PatchDiscriminator(nn.Module):
    """Supplement Table 1: head conv 3x3 C->w, BN, LeakyReLU(0.2); three blocks conv 3x3 w->w, BN, LeakyReLU(0.2);
    tail conv 1x1 w->1. Stride 1, no padding: one logit per 9x9 patch."""

    def __init__(self, channels: int = 3, width: int = 128, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(1 + blocks):
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, stride=1, padding=0),
                       nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x))


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and biased variance over the spatial positions: two N x C tensors
    (a 2-D N x C output is its own mean, with variance 0)."""
    x = x.float()
    if x.dim() == 2:
        return x, torch.zeros_like(x)
    flat = x.flatten(2)
    return flat.mean(dim=2), flat.var(dim=2, unbiased=False)


def feature_matching_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """R_fm (Eq. 5) = sum_l mean_i ( ||mu_l(x_i) - mu_l(t_i)||_2 + ||s2_l(x_i) - s2_l(t_i)||_2 ), over the layers
    both dicts hold; ``targets`` are the (detached) activations of each output's target."""
    total: torch.Tensor | None = None
    for name, out in outputs.items():
        mean, var = channel_statistics(out)
        t_mean, t_var = channel_statistics(targets[name])
        distance = (torch.linalg.vector_norm(mean - t_mean, dim=1) + torch.linalg.vector_norm(var - t_var, dim=1)).mean()
        total = distance if total is None else total + distance
    if total is None:
        raise ConfigError("imagine: none of the matched layers ran")
    return total


def random_crops(images: torch.Tensor, generator: torch.Generator, min_side: float, flip: bool = True) -> torch.Tensor:
    """One random square-ratio crop per image (side a uniform fraction in [min_side, 1] of the image, anywhere
    inside it), resized back bilinearly, and flipped horizontally with probability 1/2: vectorised with
    ``affine_grid`` (the image stays in its space, normalised or not). ``generator`` is a CPU generator."""
    n = images.shape[0]
    side = torch.empty(n).uniform_(min_side, 1.0, generator=generator)
    shift_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - side)
    shift_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - side)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = side * sign, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = side, shift_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def discriminator_step(discriminator: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor) -> torch.Tensor:
    """One update of the discriminator: BCE(D(real), 1) + BCE(D(fake), 0) on detached ``fake``; returns that loss."""
    bce = F.binary_cross_entropy_with_logits
    d_real, d_fake = discriminator(real.detach()).float(), discriminator(fake.detach()).float()
    loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(discriminator.parameters()))
    optimizer.step()
    return loss.detach()


def patch_consistency(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """R_pc = BCE(D(fake), 1): the outputs' patches should pass for the target's (non-saturating GAN loss)."""
    logits = discriminator(fake).float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


class Guides:
    """The guide images of a run, grouped by class, with the teacher's predicted class for each."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor) -> None:
        self.pixels, self.labels, self.predicted = pixels, labels.long(), predicted.long()
        self.by_class = {int(c): torch.nonzero(self.labels == c).flatten() for c in torch.unique(self.labels)}

    def pick(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """For each requested label, the index of one of its class's guides, uniformly at random."""
        picks = torch.empty(labels.numel(), dtype=torch.long)
        for i, label in enumerate(labels.tolist()):
            pool = self.by_class[label]
            picks[i] = pool[int(torch.randint(0, pool.numel(), (), generator=generator))]
        return picks


class Imagine(InversionSynthesizer):
    name = "imagine"
    summary = "IMAGINE: image-guided inversion, matching a guide image's features at every level + a patch GAN"
    paper = "Wang et al., IMAGINE: Image Synthesis by Image-Guided Model Inversion, CVPR 2021"
    Config = ImagineConfig
    iterations_option = "iterations"
    needs_guides = True

    def check_options(self) -> None:
        super().check_options()
        cfg = self.config
        if cfg.target not in TARGETS and not cfg.target.isdigit():
            raise ConfigError(f"imagine: target must be predicted, guide or a class index, got {cfg.target!r}")
        if not 0.0 < cfg.crop_min <= 1.0:
            raise ConfigError(f"imagine: crop_min must be in (0, 1], got {cfg.crop_min}")
        if cfg.guides_per_class < 0 or cfg.d_width < 1 or cfg.d_batch < 0:
            raise ConfigError("imagine: guides_per_class and d_batch must be >= 0, d_width >= 1")

    def setup(self, teacher: Teacher) -> None:
        cfg = self.config
        if not cfg.guides:
            raise ConfigError("imagine needs guide images: -s guides=FOLDER (one sub-folder of a few images per "
                              "class) or a data spec such as cifar10:PATH:train with -s guides_per_class=10")
        super().setup(teacher)
        from ..data.real import load_data

        data = load_data(cfg.guides, teacher.input, teacher=teacher.spec or None)
        if cfg.guides_per_class:
            data = data.subset_per_class(cfg.guides_per_class, cfg.guides_seed)
        if cfg.target.isdigit() and int(cfg.target) >= teacher.input.num_classes:
            raise ConfigError(f"imagine: target class {cfg.target} is not below the teacher's "
                              f"{teacher.input.num_classes} classes")
        self.use_guides(data.images, data.labels)

    def use_guides(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Guides:
        """Take ``images`` (uint8 or [0, 1] pixels at the teacher's input size) as the guides; ``labels`` default
        to the teacher's predicted classes (photos without a class: ``dfcompress imagine``)."""
        teacher = self.teacher
        pixels = images.float().div(255.0) if not images.is_floating_point() else images.float()
        with torch.no_grad(), self.ctx.autocast():
            predicted = torch.cat([teacher.model(teacher.input.normalize(pixels[i:i + 256].to(self.ctx.device)))
                                   .argmax(1).cpu() for i in range(0, len(pixels), 256)])
        self.guides = Guides(pixels, predicted if labels is None else labels, predicted)
        self.layers = select_layers(teacher.model, self.config.layers)
        return self.guides

    def check_labels(self, labels: torch.Tensor) -> None:
        missing = sorted(set(labels.tolist()) - set(self.guides.by_class))
        if missing:
            raise ConfigError(f"imagine: no guide image of class(es) {missing[:10]} in {self.config.guides}")

    def cross_entropy_targets(self, picks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.target == "predicted":
            return self.guides.predicted[picks].to(labels.device)
        if cfg.target == "guide":
            return labels
        return torch.full_like(labels, int(cfg.target))

    def term_weights(self) -> list[tuple[str, float]]:
        cfg = self.config
        weights = [("loss_ce", cfg.ce_scale), ("loss_tv", cfg.tv_scale), ("loss_l2", cfg.l2_scale)]
        if cfg.feature_matching:
            weights.append(("loss_fm", cfg.fm_scale))
        if cfg.discriminator:
            weights.append(("loss_adv", cfg.d_scale))
        return weights

    def invert(self, labels: torch.Tensor, generator: torch.Generator, student: nn.Module | None) -> SynthBatch:
        self.check_labels(labels.cpu())
        aux = cpu_generator_from(generator)
        return self.imagine(self.guides.pick(labels.cpu(), aux), labels, generator, aux)

    def imagine(self, picks: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                aux: torch.Generator | None = None) -> SynthBatch:
        """Outputs for the guides ``picks`` (indices into :attr:`guides`, one per output), labelled ``labels``."""
        cfg, ctx, teacher = self.config, self.ctx, self.teacher
        start = time.perf_counter()
        device = ctx.device
        labels = labels.to(device)
        aux = aux if aux is not None else cpu_generator_from(generator)
        targets = teacher.input.normalize(self.guides.pixels[picks].to(device))
        y_star = self.cross_entropy_targets(picks, labels)
        x = noise_pixels(teacher, labels.numel(), generator, device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        discriminator = d_optimizer = None
        if cfg.discriminator:
            with torch.random.fork_rng(devices=[]):  # the discriminator's init, from this batch's seed
                torch.manual_seed(int(torch.randint(0, 2**62, (), generator=aux)))
                discriminator = PatchDiscriminator(teacher.input.channels, cfg.d_width).to(device)
            d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
        weights = self.term_weights()
        capture = OutputCapture(teacher.model, self.layers) if cfg.feature_matching else None

        def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
            x_jit = jitter_flip(x, aux, max_shift=cfg.jitter, flip=cfg.flip)
            target_views = random_crops(targets, aux, cfg.crop_min)
            terms: dict[str, torch.Tensor] = {}
            if capture is not None:
                capture.outputs = {}
                with torch.no_grad(), ctx.autocast():
                    teacher.model(target_views)
                target_features = {k: v.detach() for k, v in capture.outputs.items()}
                capture.outputs = {}
            with ctx.autocast():
                logits = teacher.model(x_jit)
            terms["loss_ce"] = F.cross_entropy(logits.float(), y_star)
            terms["loss_tv"] = total_variation(x_jit)
            terms["loss_l2"] = l2_norm(x_jit)
            if capture is not None:
                terms["loss_fm"] = feature_matching_loss(capture.outputs, target_features)
                capture.outputs = {}
            if discriminator is not None and d_optimizer is not None:
                real, fake = target_views, x_jit
                if 0 < cfg.d_batch < x_jit.shape[0]:
                    chosen = torch.randperm(x_jit.shape[0], generator=aux)[:cfg.d_batch].to(device)
                    real, fake = target_views.index_select(0, chosen), x_jit.index_select(0, chosen)
                terms["loss_d"] = discriminator_step(discriminator, d_optimizer, real, fake)
                terms["loss_adv"] = patch_consistency(discriminator, fake)
            return weighted_total(terms, weights), terms, x

        try:
            found = optimise(ctx, step, [optimizer], iterations=cfg.iterations, where="imagine",
                             hint="lower lr, fm_scale or d_scale, or use --precision 32-true", initial=lambda: x)
        finally:
            if capture is not None:
                capture.remove()
        result = finish_batch(teacher, ctx, found.images, labels, found.terms, iterations=found.iterations,
                              seconds=time.perf_counter() - start, feature_passes=1 if cfg.feature_matching else 0)
        if "loss_fm" in result.metrics:  # the driver's statistics column: here the feature-matching term
            result.metrics["loss_bn"] = result.metrics["loss_fm"]
        return result
