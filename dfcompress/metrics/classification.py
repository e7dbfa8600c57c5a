"""Accuracy on labelled images and top-1 agreement between two models."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..components import InputSpec
from ..errors import DataError
from .features import logits_and_features


def _check(images_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if images_uint8.dim() != 4 or len(images_uint8) == 0:
        raise DataError(f"expected a non-empty N x C x H x W image tensor, got shape {tuple(images_uint8.shape)}")
    if labels is not None and len(labels) != len(images_uint8):
        raise DataError(f"{len(images_uint8)} images but {len(labels)} labels")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` as fractions in [0, 1]; a k not below the number of classes is skipped."""
    labels = labels.to(logits.device).long()
    result: dict[str, float] = {}
    num_classes = logits.shape[1]
    kmax = max((k for k in topk if k < num_classes or k == 1), default=1)
    ranked = logits.topk(kmax, dim=1).indices
    hits = ranked.eq(labels.view(-1, 1))
    for k in topk:
        if k == 1 or k < num_classes:
            result[f"top{k}"] = hits[:, :k].any(dim=1).float().mean().item()
    return result


def accuracy(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, input_spec: InputSpec, *,
             device: torch.device | str | None = None, batch_size: int = 256,
             topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fractions) of ``model`` on uint8 images, in eval mode without gradients.

    Top-5 (any k > 1) is reported only when the model has more than 10 classes."""
    _check(images_uint8, labels)
    logits, _ = logits_and_features(model, images_uint8, input_spec,
                                    device=torch.device(device) if device is not None else None,
                                    batch_size=batch_size, features=False)
    ks = [k for k in topk if k == 1 or logits.shape[1] > 10]
    return topk_accuracy(logits, labels, ks)


def agreement(model_a: nn.Module, model_b: nn.Module, images_uint8: torch.Tensor, input_spec: InputSpec, *,
              device: torch.device | str | None = None, batch_size: int = 256) -> float:
    """The fraction of images on which both models predict the same top-1 class."""
    _check(images_uint8)
    dev = torch.device(device) if device is not None else None
    a, _ = logits_and_features(model_a, images_uint8, input_spec, device=dev, batch_size=batch_size, features=False)
    b, _ = logits_and_features(model_b, images_uint8, input_spec, device=dev, batch_size=batch_size, features=False)
    return a.argmax(1).eq(b.argmax(1)).float().mean().item()
