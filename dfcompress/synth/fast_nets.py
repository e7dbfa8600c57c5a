"""The generator of the ``fast`` synthesizer and the meta-updates of its start point (FOMAML, Reptile).

The generator is the DCGAN-style image generator of the data-free KD literature that Fang et al. (AAAI 2022)
build on: z -> Linear -> BatchNorm -> [Upsample x2 -> Conv3x3 -> BatchNorm -> LeakyReLU(0.2)] x k ->
Conv3x3 -> Sigmoid, in pixel space [0, 1]. The base resolution is the image size halved while the half is at
least 7 (8 x 8 for 32 px, 7 x 7 for 224 px), so one class serves 32 px (two upsampling stages) and 224 px (five).

With ``num_classes`` > 0 the generator is class-conditional (a dfcompress option, not the paper's): a learned
embedding of the label, of the latent's size, is concatenated to z before the projection, G(z, y).
"""
from __future__ import annotations

import torch
from torch import nn


def upsampling_stages(size: int, minimum: int = 7, most: int = 6) -> int:
    """How many times ``size`` halves (exactly) while the half stays >= ``minimum``: 32 -> 2, 224 -> 5, 16 -> 1."""
    stages = 0
    while size % 2 == 0 and size // 2 >= minimum and stages < most:
        size //= 2
        stages += 1
    return stages


class FastGenerator(nn.Module):
    """G(z): a batch of images in [0, 1] from latent codes z (N x latent_dim)."""

    def __init__(self, latent_dim: int, channels: int, image_size: tuple[int, int], width: int = 64,
                 num_classes: int = 0) -> None:
        super().__init__()
        height, wide = image_size
        stages = min(upsampling_stages(height), upsampling_stages(wide))
        self.base = (height >> stages, wide >> stages)
        if self.base[0] << stages != height or self.base[1] << stages != wide:
            raise ValueError(f"fast: image size {image_size} is not a base size times a power of two")
        self.latent_dim, self.hidden = latent_dim, 2 * width
        #: a learned label embedding concatenated to z (class-conditional generator), or None
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        inputs = latent_dim * (2 if self.embed is not None else 1)
        self.project = nn.Linear(inputs, self.hidden * self.base[0] * self.base[1])
        layers: list[nn.Module] = [nn.BatchNorm2d(self.hidden)]
        in_ch = self.hidden
        for stage in range(stages):
            out_ch = width if stage == stages - 1 else self.hidden
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        layers += [nn.Conv2d(in_ch, channels, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional generator needs the labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        x = self.project(z).view(z.shape[0], self.hidden, *self.base)
        return self.body(x)

    def reset_first_layer(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the projection layer (the reference schedule's late "reset l0")."""
        with torch.no_grad():
            bound = 1.0 / self.project.in_features ** 0.5
            self.project.weight.uniform_(-bound, bound, generator=generator)
            self.project.bias.uniform_(-bound, bound, generator=generator)


def accumulate_fomaml(meta: nn.Module, fast: nn.Module) -> None:
    """First-order MAML: add the inner model's current parameter gradients to the meta model's ``.grad``.

    Called after every inner step's backward, so that the meta gradient is the sum over the inner steps
    of dL_k/d(theta_k), evaluated at each inner iterate (the first-order approximation of the MAML gradient)."""
    for p_meta, p_fast in zip(meta.parameters(), fast.parameters()):
        if p_fast.grad is None:
            continue
        if p_meta.grad is None:
            p_meta.grad = p_fast.grad.detach().clone()
        else:
            p_meta.grad.add_(p_fast.grad.detach())


@torch.no_grad()
def reptile_update(meta: nn.Module, fast: nn.Module, step: float) -> None:
    """Reptile (Nichol et al. 2018): theta <- theta + step * (theta_fast - theta), for parameters and buffers
    that are floating point (BatchNorm running statistics move with the weights)."""
    for p_meta, p_fast in zip(meta.parameters(), fast.parameters()):
        p_meta.add_(p_fast.detach() - p_meta, alpha=step)
    for b_meta, b_fast in zip(meta.buffers(), fast.buffers()):
        if b_meta.is_floating_point():
            b_meta.add_(b_fast - b_meta, alpha=step)
