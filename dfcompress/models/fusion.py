"""BatchNorm folded into the convolutions before it: the teacher as it is often deployed (``--fuse-bn``).

Each BatchNorm whose input is exactly the output of a convolution (found by one forward pass with hooks, so any
model source works without tracing its code) is folded into that convolution
(``torch.nn.utils.fusion.fuse_conv_bn_eval``: in eval mode, ``W' = W * gamma / sqrt(var + eps)``,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``) and replaced by ``nn.Identity``. The folded model must give
the same logits as the original (checked on a random batch); a convolution whose output is also used elsewhere
would break that, and is refused with the module's name rather than folded wrongly. BatchNorms that follow no
convolution stay (and are named in the log), so a teacher can keep some running statistics.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.features import forward_with_hooks

logger = logging.getLogger(__name__)


def conv_batchnorm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for each BatchNorm whose input tensor is a convolution's output."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors stay referenced, so no id is reused
    pairs: list[tuple[str, str]] = []
    handles = []

    def after_conv(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)
        return hook

    def before_bn(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            entry = produced.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
            if entry is not None and entry[1] is inputs[0] and (entry[0], name) not in pairs:
                pairs.append((entry[0], name))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv(name)))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    forward_with_hooks(model, example, handles)
    return pairs


def fuse_batchnorm(model: nn.Module, example: torch.Tensor, *, atol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every conv -> BatchNorm pair folded; returns it and the number folded.
    Raises ConfigError when there is nothing to fold or the folded model's logits differ from the original's."""
    model = copy.deepcopy(model).eval()
    pairs = conv_batchnorm_pairs(model, example)
    if not pairs:
        raise ConfigError(f"--fuse-bn: {type(model).__name__} has no BatchNorm right after a convolution to fold")
    with torch.no_grad():
        before = model(example).float()
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        _replace(model, conv_name, fused)
        _replace(model, bn_name, nn.Identity())
    with torch.no_grad():
        after = model(example).float()
    error = float((after - before).abs().max())
    scale = float(before.abs().max().clamp_min(1.0))
    if error > atol * scale:
        raise ConfigError(f"--fuse-bn: folding the BatchNorms of {type(model).__name__} changes its logits by up to "
                          f"{error:.3g} (a convolution's output is also used past its BatchNorm?); not folded")
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        logger.warning("--fuse-bn: %d BatchNorm layer(s) follow no convolution and stay: %s", len(left),
                       ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""))
    logger.info("--fuse-bn: folded %d BatchNorm layers into their convolutions (logits within %.2g)", len(pairs), error)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, len(pairs)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def fused_teacher(teacher: Any) -> Any:
    """``teacher`` (a :class:`~dfcompress.components.Teacher`) with its BatchNorms folded (``--fuse-bn``),
    checked on a random batch of two at its input size."""
    from dataclasses import replace

    device = next((p.device for p in teacher.model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((2, teacher.input.channels, *teacher.input.image_size), generator=generator).to(device)
    return replace(teacher, model=fuse_batchnorm(teacher.model, example)[0])
