"""Image priors (total variation, l2) and the random jitter/flip applied before each teacher forward."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Four-direction total variation of a batch (N x C x H x W), as in the DeepInversion reference::

        R_TV(x) = ||x[..., :, :-1] - x[..., :, 1:]||_2          (horizontal)
                + ||x[..., :-1, :] - x[..., 1:, :]||_2          (vertical)
                + ||x[..., 1:, :-1] - x[..., :-1, 1:]||_2       (anti-diagonal)
                + ||x[..., :-1, :-1] - x[..., 1:, 1:]||_2       (diagonal)

    where each ||.||_2 is the Frobenius norm over the whole batch tensor (not averaged per image).
    """
    x = x.float()
    d_h = x[..., :, :-1] - x[..., :, 1:]
    d_v = x[..., :-1, :] - x[..., 1:, :]
    d_a = x[..., 1:, :-1] - x[..., :-1, 1:]
    d_d = x[..., :-1, :-1] - x[..., 1:, 1:]
    norm = torch.linalg.vector_norm
    return norm(d_h) + norm(d_v) + norm(d_a) + norm(d_d)


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """R_l2(x) = ||x||_2, the Frobenius norm of the whole batch tensor."""
    return torch.linalg.vector_norm(x.float())


def cpu_generator_from(generator: torch.Generator) -> torch.Generator:
    """A CPU generator seeded by one draw from ``generator`` (one host sync per batch, none per iteration).

    Jitter offsets and flips must be Python numbers for ``torch.roll``; drawing them from a CPU
    generator keeps the inner loop free of device-to-host copies on accelerators."""
    if generator.device.type == "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)


def jitter_flip(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 2, flip: bool = True) -> torch.Tensor:
    """Roll the batch by random offsets in [-max_shift, max_shift] along H and W, then flip it horizontally
    with probability 1/2 (one decision for the whole batch, as in DeepInversion). ``generator`` must be a
    CPU generator (see :func:`cpu_generator_from`)."""
    if max_shift > 0:
        dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
        if dx or dy:
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(p/T) and softmax(q/T), averaged over the batch::

        JS(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),   M = (P + Q) / 2

    (natural log, so 0 <= JS <= ln 2 < 1)."""
    p = torch.softmax(logits_p.float() / temperature, dim=1)
    q = torch.softmax(logits_q.float() / temperature, dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12)
    kl_pm = (p * (p.clamp_min(1e-12).log() - m.log())).sum(dim=1)
    kl_qm = (q * (q.clamp_min(1e-12).log() - m.log())).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).mean()


@contextlib.contextmanager
def frozen(model: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for ``model`` (the ADI student) while images are optimised
    through it; both are restored afterwards. ``None`` is a no-op."""
    if model is None:
        yield
        return
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
