"""The contract of a synthesizer's batch: what :meth:`Synthesizer.synthesize_batch` must return. The synthesis
driver checks every batch with it before anything is written, and :func:`dfcompress.testing.check_synthesizer`
checks a plugin against it in its tests."""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ..components import InputSpec, SynthBatch


def metric_problems(metrics: Any, what: str) -> list[str]:
    if not isinstance(metrics, dict):
        return [f"{what} must be a dict of floats, got {type(metrics).__name__}"]
    bad = {k: v for k, v in metrics.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, numbers.Real)
           or not math.isfinite(float(v))}
    return [f"{what} must map names to finite floats; bad entries: {bad!r}"] if bad else []


def batch_problems(batch: Any, labels: torch.Tensor, spec: InputSpec, what: str) -> list[str]:
    if not isinstance(batch, SynthBatch):
        return [f"{what} must return a dfcompress.components.SynthBatch, got {type(batch).__name__}"]
    images, problems = batch.images, []
    want = (labels.numel(), spec.channels, *spec.image_size)
    if not isinstance(images, torch.Tensor):
        return [f"{what}: images must be a tensor, got {type(images).__name__}"]
    if tuple(images.shape) != want:
        problems.append(f"{what}: images have shape {tuple(images.shape)}, expected N x C x H x W = {want}")
    if not images.is_floating_point():
        problems.append(f"{what}: images must be float pixels in [0, 1], got dtype {images.dtype}")
    elif images.numel() and not (torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        problems.append(f"{what}: images must lie in [0, 1] (pixel space; use teacher.input.denormalize(x)"
                        f".clamp(0, 1)), got [{float(images.min()):.4g}, {float(images.max()):.4g}]")
    if images.device.type != "cpu":
        problems.append(f"{what}: images must be on the CPU, got {images.device}")
    got = batch.labels
    if not isinstance(got, torch.Tensor) or got.dtype != torch.long or got.device.type != "cpu":
        problems.append(f"{what}: labels must be a CPU long tensor, got {got!r:.80}")
    elif got.tolist() != labels.tolist():
        problems.append(f"{what}: labels {got.tolist()} differ from the requested {labels.tolist()}")
    return problems + metric_problems(batch.metrics, f"{what}: metrics")
