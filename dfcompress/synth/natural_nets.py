"""The trainable parts of NaturalInversion: the conditional generator (appendix Table 6) and the
Feature Transfer Pyramid (Eq. 5, appendix Table 7), generalised to any input size, channel count
and teacher pyramid. Parameters are initialised from an explicit torch.Generator so a batch seed
reproduces the initialisation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def upsample_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``size``. For integer factors it is a broadcast and a reshape
    (about 6x faster forward+backward on CPU than ``F.interpolate``, same values); otherwise
    ``F.interpolate(mode="nearest")``."""
    n, c, h, w = x.shape
    out_h, out_w = size
    if (out_h, out_w) == (h, w):
        return x
    if out_h % h or out_w % w:
        return F.interpolate(x, size=size, mode="nearest")
    fh, fw = out_h // h, out_w // w
    return x[:, :, :, None, :, None].expand(n, c, h, fh, w, fw).reshape(n, c, out_h, out_w)


INIT_SCHEMES = ("pytorch", "kaiming")


def reset_parameters(module: nn.Module, generator: torch.Generator, scheme: str = "pytorch") -> None:
    """Initialise Linear/Conv layers and BatchNorm (weight 1, bias 0) from ``generator``. ``pytorch``: PyTorch's
    default (Kaiming-uniform with a = sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))) everywhere; ``kaiming``:
    He et al.'s normal initialisation for ReLU layers (std sqrt(2 / fan_in), about 2.4x PyTorch's) with zero bias
    on the convolutions, the Linear layers keeping PyTorch's default. Apply it to the generator only: that is
    the reference code's scope (its decoder keeps PyTorch's default)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; choose from {', '.join(INIT_SCHEMES)}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and scheme == "kaiming":
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConditionalGenerator(nn.Module):
    """G(z|y), appendix Table 6, for an image of ``channels`` x H x W:

    [z ; onehot(y)] (latent_dim + K) -> Linear -> width x H/4 x W/4 -> BN, LeakyReLU(0.2), Upsample x2
    -> Conv3x3 (width -> width), BN, LeakyReLU(0.2), Upsample x2 -> Conv3x3 (width -> width/2), BN,
    LeakyReLU(0.2) -> Conv3x3 (width/2 -> channels).

    The paper's CIFAR generator is width 128 at 32 x 32 (8 x 8 -> 16 x 16 -> 32 x 32). For sizes not
    divisible by 4 the base map is ceil(H/4) x ceil(W/4) and the upsamplings go to ceil(H/2) and H.
    """

    def __init__(self, latent_dim: int, num_classes: int, channels: int, image_size: tuple[int, int], width: int = 128) -> None:
        super().__init__()
        height, wide = image_size
        self.num_classes = num_classes
        self.width = width
        self.base = (math.ceil(height / 4), math.ceil(wide / 4))
        self.mid = (math.ceil(height / 2), math.ceil(wide / 2))
        self.size = (height, wide)
        self.fc = nn.Linear(latent_dim + num_classes, width * self.base[0] * self.base[1])
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width // 2, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv_out = nn.Conv2d(width // 2, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        code = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        x = self.fc(code).view(z.shape[0], self.width, *self.base)
        x = F.leaky_relu(self.bn0(x), 0.2)
        x = upsample_nearest(x, self.mid)
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = upsample_nearest(x, self.size)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
        return self.conv_out(x)


class FeatureTransferPyramid(nn.Module):
    """P(f_1..f_N), Eq. 5 and appendix Table 7, with the channel widths and sizes of the teacher's
    pyramid (``channels[i]``, ``sizes[i]`` for f_{i+1}, shallowest first):

        m_1 = W1_1(Phi(f_N))
        m_l = W1_l(Phi(W3_l(m_{l-1} + f_{N-l+1})))        l = 2..N

    Phi upsamples (nearest) to the size of the next shallower level, and the last block to the image
    size (a no-op when f_1 already has it, as in Table 7); W1_l is a 1x1 conv to the next level's
    channels and the last one to the image channels; W3_l is a 3x3 conv keeping the channels. The
    output m_N is added to G(z|y) and passed through a 1x1 conv and tanh (Table 7 "output" row), see
    :meth:`combine`. For ResNet-34 on CIFAR (512@4, 256@8, 128@16, 64@32) this is exactly Table 7.
    """

    def __init__(self, channels: list[int], sizes: list[tuple[int, int]], image_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if not channels or len(channels) != len(sizes):
            raise ValueError("FeatureTransferPyramid needs one channel count and one size per level")
        self.channels = list(channels)
        self.sizes = [tuple(s) for s in sizes]
        depth = len(channels)
        # targets of block l (l = 1..N): the next shallower level, and the image after the last level
        targets = [(self.channels[depth - 1 - l], self.sizes[depth - 1 - l]) for l in range(1, depth)]
        targets.append((image_channels, tuple(image_size)))
        self.targets = targets
        smooth = [nn.Identity()]
        smooth += [nn.Conv2d(self.channels[depth - l], self.channels[depth - l], 3, 1, 1) for l in range(2, depth + 1)]
        self.smooth = nn.ModuleList(smooth)
        self.lateral = nn.ModuleList(
            nn.Conv2d(self.channels[depth - l], targets[l - 1][0], 1) for l in range(1, depth + 1)
        )
        self.out_conv = nn.Conv2d(image_channels, image_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """m_N from the teacher's feature maps (shallowest first)."""
        depth = len(self.channels)
        m = features[depth - 1]
        for l in range(1, depth + 1):
            if l > 1:
                m = self.smooth[l - 1](m + features[depth - l])
            size = self.targets[l - 1][1]
            m = upsample_nearest(m, size)
            m = self.lateral[l - 1](m)
        return m

    def combine(self, generated: torch.Tensor, m_last: torch.Tensor) -> torch.Tensor:
        """tanh(W1_out(G(z|y) + m_N)), the Table 7 output row."""
        return torch.tanh(self.out_conv(generated + m_last))
