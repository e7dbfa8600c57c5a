"""Quality of a synthetic set judged by the teacher alone: confidence, class balance, diversity, BN statistics."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..components import Teacher
from ..errors import DataError
from .features import find_classifier, logits_and_features, model_device


def class_balance(predicted: torch.Tensor, num_classes: int) -> tuple[float, list[int]]:
    """Entropy of the histogram of predicted classes divided by log(num_classes): 1 = uniform, 0 = one class."""
    histogram = torch.bincount(predicted.long(), minlength=num_classes)
    p = histogram.double() / max(1, int(histogram.sum()))
    nonzero = p[p > 0]
    entropy = max(0.0, float(-(nonzero * nonzero.log()).sum()))
    return (entropy / math.log(num_classes) if num_classes > 1 else 1.0), histogram.tolist()


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    """Mean of 1 - cos(f_i, f_j) over all pairs i != j, in O(N D): for unit vectors u_i,
    sum_{i != j} u_i . u_j = ||sum_i u_i||^2 - N."""
    n = len(features)
    if n < 2:
        return 0.0
    unit = nn.functional.normalize(features.double(), dim=1)
    total = unit.sum(0)
    mean_cos = (total.dot(total) - unit.pow(2).sum()) / (n * (n - 1))
    return float(1.0 - mean_cos)


class _BatchNormInputStats:
    """Accumulates the per-channel mean and (biased) variance of every BatchNorm layer's input over a data set."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                       and m.running_mean is not None]
        self.sums: dict[nn.Module, list[torch.Tensor | int]] = {}
        self.handles = [m.register_forward_pre_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().transpose(0, 1).flatten(1)  # C x (N * spatial)
        entry = self.sums.setdefault(module, [torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0]), 0])
        entry[0] += x.sum(1)
        entry[1] += x.pow(2).sum(1)
        entry[2] += x.shape[1]

    def distance(self) -> float | None:
        """Mean over the BN layers that ran of ||mu - running_mean||_2 + ||var - running_var||_2 (layers that run
        only in train mode, e.g. the BatchNorms of GoogLeNet's auxiliary heads, do not count); None if none ran."""
        ran = [m for m in self.layers if m in self.sums]
        if not ran:
            return None
        total = 0.0
        for module in ran:
            s, s2, count = self.sums[module]
            mean = s / count
            var = (s2 / count - mean.pow(2)).clamp_min(0)
            total += float(torch.linalg.vector_norm(mean - module.running_mean.double()))
            total += float(torch.linalg.vector_norm(var - module.running_var.double()))
        return total / len(ran)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def synthetic_quality(teacher: Teacher, images_uint8: torch.Tensor, labels: torch.Tensor, *,
                      device: torch.device | str | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Teacher-side quality of a synthetic set, without real data.

    - ``teacher_confidence``: mean max-softmax probability; ``teacher_accuracy``: argmax == target label
    - ``class_balance``: normalised entropy of the teacher's argmax histogram (``class_histogram``)
    - ``diversity``: mean pairwise cosine distance of the teacher's penultimate features
    - ``bn_stat_distance``: mean over BN layers of ||mu - running_mean|| + ||var - running_var|| of the set's
      activations (None when the teacher has no BatchNorm)"""
    if len(images_uint8) == 0 or len(images_uint8) != len(labels):
        raise DataError(f"synthetic_quality: {len(images_uint8)} images and {len(labels)} labels")
    model = teacher.model
    dev = torch.device(device) if device is not None else model_device(model)
    head = find_classifier(model, teacher.input)  # before the BN hooks: its dummy forward must not count
    stats = _BatchNormInputStats(model)
    try:
        logits, features = logits_and_features(model, images_uint8, teacher.input, device=dev, batch_size=batch_size,
                                               head=head)
        bn_distance = stats.distance()
    finally:
        stats.remove()
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    balance, histogram = class_balance(predicted, logits.shape[1])
    return {
        "teacher_confidence": round(float(confidence.mean()), 6),
        "teacher_accuracy": round(float(predicted.eq(labels.cpu().long()).float().mean()), 6),
        "class_balance": round(balance, 6),
        "class_histogram": histogram,
        "diversity": round(mean_pairwise_cosine_distance(features), 6) if features is not None else None,
        "bn_stat_distance": round(bn_distance, 6) if bn_distance is not None else None,
    }
