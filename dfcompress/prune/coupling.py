"""Channel couplings that torch-pruning does not trace: zero-padding along the channel dimension.

The CIFAR ResNets' "option A" shortcut (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``) maps input channel
``i`` to output channel ``i + p`` without any layer. torch-pruning 1.6 records ``ConstantPadNdBackward`` as an
element-wise op (index ``i`` to index ``i``), so it would remove mismatched channels on both sides of the
pad, and the pruned model crashes or computes something else. We find every such pad in the traced graph and
report the layers whose output channels are tied through it, so the pruner can leave them whole.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: for an N x C x H x W tensor, F.pad's spec lists (W, W, H, H, C, C, N, N); entries from here on pad C or N
_FIRST_NON_SPATIAL = 4


@dataclass
class ChannelPadCoupling:
    """The channel pads found and the layers tied through them (whose output channels must stay whole)."""

    pads: list[tuple[int, ...]] = field(default_factory=list)
    tied_layers: dict[str, nn.Module] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pads)

    def note(self) -> str:
        names = list(self.tied_layers)
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} layers)" if len(names) > 4 else "")
        return (
            f"{len(self.pads)} zero-padding op(s) on the channel dimension (option-A shortcut) tie the residual "
            f"stream's channels without a layer, which torch-pruning 1.6 does not trace; the layers producing "
            f"those channels keep all their output channels ({shown}) and only the other channels (e.g. each "
            f"block's internal conv1 channels) are pruned"
        )


@contextlib.contextmanager
def torch_pruning_warnings_logged() -> Iterator[None]:
    """Turn torch-pruning's tracing warnings (e.g. timm ConvNeXt's layer-scale ``gamma`` parameters, which it
    prunes along their channel dimension, correctly) into INFO log records instead of console noise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.info("torch-pruning: %s", " ".join(str(warning.message).split()))


def _pads_channels(pad: tuple[int, ...]) -> bool:
    return any(int(v) != 0 for v in pad[_FIRST_NON_SPATIAL:])


def find_channel_pad_coupling(model: nn.Module, example_input: torch.Tensor,
                              ignored_layers: list[nn.Module] | None = None) -> ChannelPadCoupling:
    """Trace ``model`` with torch-pruning and collect the prunable layers in any pruning group that passes
    through a channel zero-pad. Assumes N x C x H x W image tensors (the pad spec of a 4-D tensor)."""
    import torch_pruning as tp

    with torch_pruning_warnings_logged():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    pad_modules = set()
    coupling = ChannelPadCoupling()
    for module, node in graph.module2node.items():
        grad_fn = node.grad_fn
        pad = getattr(grad_fn, "_saved_pad", None) if grad_fn is not None else None
        if pad is not None and grad_fn.name().startswith("ConstantPadNd") and _pads_channels(tuple(pad)):
            pad_modules.add(module)
            coupling.pads.append(tuple(int(v) for v in pad))
    if not pad_modules:
        return coupling
    names = {module: name for name, module in model.named_modules()}
    root_types = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR]
    for group in graph.get_all_groups(ignored_layers=list(ignored_layers or []), root_module_types=root_types):
        targets = [(dep.target.module, dep.handler) for dep, _ in group]
        if not any(module in pad_modules for module, _ in targets):
            continue
        for module, handler in targets:
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and graph.is_out_channel_pruning_fn(handler):
                coupling.tied_layers[names.get(module, type(module).__name__)] = module
    return coupling
