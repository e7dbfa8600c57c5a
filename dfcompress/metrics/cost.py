"""What a model costs: parameters, MACs, bytes on disk, CPU latency."""
from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

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


def time_calls(fn: Callable[[torch.Tensor], object], x: torch.Tensor, *, repeats: int = 20,
               warmup: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` calls ``fn(x)`` after ``warmup`` untimed ones."""
    for _ in range(max(0, warmup)):
        fn(x)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def latency(model: nn.Module, input_spec: InputSpec, batch_size: int = 1, repeats: int = 20, *,
            warmup: int = 3) -> float:
    """Median seconds of one forward pass of ``batch_size`` images on the CPU (a CPU copy of the model in
    eval mode; the original is untouched). Uses the current torch thread count."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = input_spec.example_input(batch_size, "cpu").normal_(generator=torch.Generator().manual_seed(0))
    times = time_calls(cpu_model, x, repeats=repeats, warmup=warmup)
    seconds = statistics.median(times)
    logger.debug("latency batch %d: median %.4f s over %d runs", batch_size, seconds, len(times))
    return seconds


def latency_table(variants: dict[str, Callable[[torch.Tensor], object]], input_spec: InputSpec, *,
                  batch_sizes: tuple[int, ...] = (1, 64), rounds: int = 3, seconds_per_cell: float = 2.0,
                  memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
    """Median milliseconds per call of each variant (a callable on a CPU batch) at each batch size, measured in
    one process: the variants take turns for ``rounds`` rounds (drifting load from elsewhere hits them alike)
    and each round times about ``seconds_per_cell`` of calls (at least 5) after warm-up calls; the figure is the
    median of the round medians. Returns ``{"b1": {variant: ms}, ..., "threads", "load_avg"}``."""
    table: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in batch_sizes:
            x = input_spec.example_input(batch, "cpu").normal_(generator=generator)
            x = x.contiguous(memory_format=memory_format) if x.dim() == 4 else x
            repeats = {}
            for name, fn in variants.items():  # warm-up (the first call of a compiled variant compiles it)
                once = time_calls(fn, x, repeats=1, warmup=3)[0]
                repeats[name] = max(5, min(200, int(seconds_per_cell / max(once, 1e-6))))
            medians: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(max(1, rounds)):
                for name, fn in variants.items():
                    medians[name].append(statistics.median(time_calls(fn, x, repeats=repeats[name], warmup=0)))
            table[f"b{batch}"] = {name: round(1000 * statistics.median(m), 3) for name, m in medians.items()}
    table["threads"] = torch.get_num_threads()
    table["load_avg"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return table
