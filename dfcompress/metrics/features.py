"""The classifier head of any CNN and the penultimate features that feed it, found with forward hooks."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..components import InputSpec

#: layer types that can be a classifier head (timm/torchvision use a Linear; SqueezeNet a 1x1 conv)
HEAD_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def find_classifier(model: nn.Module, input_spec: InputSpec) -> nn.Module:
    """The last Linear/conv layer, in execution order, whose output has as many features as the model has
    outputs (the number of classes, read from the model's own output on a dummy batch)."""
    calls: list[tuple[nn.Module, torch.Size]] = []
    handles = [
        m.register_forward_hook(lambda mod, _inp, out: calls.append((mod, out.shape)))
        for m in model.modules()
        if isinstance(m, HEAD_TYPES)
    ]
    was_training = model.training
    model.eval()
    try:
        out = model(input_spec.example_input(2, model_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    num_classes = out.shape[1]
    for module, shape in reversed(calls):
        if len(shape) >= 2 and shape[1] == num_classes:
            return module
    raise ValueError(f"{type(model).__name__}: no Linear or conv layer produces the {num_classes} output classes")


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """N x D features: a spatial input (a conv head's) is averaged over its spatial dimensions."""
    return x.flatten(2).mean(2) if x.dim() > 2 else x


def iter_batches(images_uint8: torch.Tensor, input_spec: InputSpec, device: torch.device,
                 batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(index slice, normalised float batch on ``device``) over uint8 N x C x H x W images."""
    for start in range(0, len(images_uint8), batch_size):
        index = slice(start, start + batch_size)
        pixels = images_uint8[index].to(device, non_blocking=True).float().div_(255)
        yield index, input_spec.normalize(pixels)


@torch.no_grad()
def logits_and_features(model: nn.Module, images_uint8: torch.Tensor, input_spec: InputSpec, *,
                        device: torch.device | None = None, batch_size: int = 256,
                        features: bool = True, head: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits (N x K, float32, CPU) and, if ``features``, its penultimate features (the input of
    ``head``, by default :func:`find_classifier`'s, spatially averaged; N x D, float32, CPU). The model runs
    in eval mode; only the images pass through it once ``head`` is given (finding it costs a dummy forward)."""
    device = device or model_device(model)
    captured: list[torch.Tensor] = []
    handle = None
    if features:
        head = head if head is not None else find_classifier(model, input_spec)
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(_pooled(args[0]).float().cpu()))
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for _, x in iter_batches(images_uint8, input_spec, device, batch_size):
            outputs.append(model(x).float().cpu())
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    logits = torch.cat(outputs) if outputs else torch.empty(0, 0)
    return logits, (torch.cat(captured) if features and captured else None)


def forward_with_hooks(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """One no-grad forward of ``model`` on ``example`` for the hooks of ``handles``, which are removed after it."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
