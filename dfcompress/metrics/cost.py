"""What a model costs: parameters, MACs, bytes on disk, CPU latency."""
from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..components import InputSpec
from .features import model_device

logger = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """The number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_spec: InputSpec) -> int:
    """Multiply-accumulates of one forward pass on one image, counted by torch-pruning's op counter.

    The counter (ptflops-style) counts conv and linear MACs (plus bias additions) and one op per element for
    BatchNorm (two if affine), ReLU and pooling layers; functional ops such as ``F.relu`` are not counted.
    The model is deep-copied and run in eval mode, so running statistics are untouched."""
    import torch_pruning as tp

    example = input_spec.example_input(1, model_device(model))
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def disk_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@torch.inference_mode()
def latency(model: nn.Module, input_spec: InputSpec, batch_size: int = 1, repeats: int = 20, *,
            warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``batch_size`` images on the CPU (a CPU copy of the model in
    eval mode; the original is untouched). Uses the current torch thread count."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = input_spec.example_input(batch_size, "cpu").normal_(generator=torch.Generator().manual_seed(0))
    for _ in range(max(0, warmup)):
        cpu_model(x)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        cpu_model(x)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    logger.debug("latency batch %d: median %.4f s over %d runs", batch_size, seconds, len(times))
    return seconds
