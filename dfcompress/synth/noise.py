"""Gaussian-noise images: the baseline every synthesizer must beat."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..components import NoOptions, SynthBatch, Synthesizer
from .inversion import finish_batch, noise_pixels


class NoiseSynthesizer(Synthesizer):
    """x ~ N(0, 1) in the teacher's normalised input space (DeepInversion's starting point), then
    de-normalised to pixels and clamped to [0, 1]. The labels are the requested ones."""

    name = "noise"
    summary = "Gaussian-noise images with balanced labels (baseline)"
    paper = None
    Config = NoOptions

    def synthesize_batch(
        self, labels: torch.Tensor, *, generator: torch.Generator, student: nn.Module | None = None
    ) -> SynthBatch:
        start = time.perf_counter()
        x = noise_pixels(self.teacher, labels.numel(), generator, self.ctx.device)
        return finish_batch(self.teacher, self.ctx, x, labels.to(self.ctx.device), {},
                            iterations=0, seconds=time.perf_counter() - start)
