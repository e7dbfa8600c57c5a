"""Batch augmentation on the device: random crop (padding black or a given colour) and horizontal flip, in pixel space."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def random_crop_flip(pixels: torch.Tensor, *, padding: int, flip: bool, generator: torch.Generator,
                     fill: Sequence[float] | None = None) -> torch.Tensor:
    """Per image: pad by ``padding`` pixels of zeros, crop back to H x W at a random offset, and mirror
    left-right with probability 1/2; the CIFAR recipe (torchvision ``RandomCrop(32, padding=4)`` +
    ``RandomHorizontalFlip``) applied to a float N x C x H x W batch in [0, 1].

    Padding happens before normalisation, so the border is black, as in the recipe the CIFAR teachers were
    trained with (zero padding after normalisation would be the mean colour instead). Every random draw
    comes from ``generator`` (on the CPU or on the batch's CUDA device). ``fill``: one pixel value per channel
    for the border instead of black (the normalisation mean gives the mean-colour border of zero padding after
    normalisation)."""
    n, c, h, w = pixels.shape
    device = pixels.device
    out = pixels
    if padding > 0:
        if fill is None:
            padded = F.pad(pixels, (padding, padding, padding, padding))
        else:
            colour = torch.as_tensor(fill, dtype=pixels.dtype, device=device).view(1, c, 1, 1)
            padded = colour.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
            padded[:, :, padding:padding + h, padding:padding + w] = pixels
        offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=generator.device).to(device)
        rows = offsets[0].view(n, 1) + torch.arange(h, device=device).view(1, h)
        cols = offsets[1].view(n, 1) + torch.arange(w, device=device).view(1, w)
        out = padded[
            torch.arange(n, device=device).view(n, 1, 1, 1),
            torch.arange(c, device=device).view(1, c, 1, 1),
            rows.view(n, 1, h, 1),
            cols.view(n, 1, 1, w),
        ]
    if flip:
        mirror = torch.rand(n, generator=generator, device=generator.device).to(device) < 0.5
        out = torch.where(mirror.view(n, 1, 1, 1), out.flip(3), out)
    return out
