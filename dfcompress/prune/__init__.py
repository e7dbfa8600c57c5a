"""Structural pruning on torch-pruning: the registered pruners and saving/loading pruned models."""
from .coupling import ChannelPadCoupling, find_channel_pad_coupling
from .pruners import (
    BNScalePruner,
    L1Pruner,
    L2Pruner,
    RandomPruner,
    TaylorPruner,
    TorchPruningPruner,
)
from .serialization import load_pruned, read_pruned, save_pruned

__all__ = [
    "BNScalePruner", "L1Pruner", "L2Pruner", "RandomPruner", "TaylorPruner", "TorchPruningPruner",
    "ChannelPadCoupling", "find_channel_pad_coupling", "load_pruned", "read_pruned", "save_pruned",
]
