"""Static post-training quantization on PyTorch 2 export (torchao's PT2E flow), the base of the backends.

The flow (torchao ``quantize_pt2e``): ``torch.export`` the float model in eval mode with a dynamic batch,
``prepare_pt2e`` with the backend's quantizer (which folds every BatchNorm that directly follows a conv or
linear layer into it, then inserts observers where the backend quantizes), run the calibration batches,
``convert_pt2e`` (weights become int8 constants, activations get quantize/dequantize pairs), and export the
result once more, which is the program that is saved. A backend subclass supplies the torchao quantizer
(:meth:`PT2EQuantizer.backend_quantizer`) and its lowering (:meth:`PT2EQuantizer.compile`).
"""
from __future__ import annotations

import abc
import copy
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..components import InputSpec, QuantizeResult, Quantizer
from ..errors import ConfigError
from .export import export_classifier
from .program import QuantizedClassifier, save_program

logger = logging.getLogger(__name__)


def import_torchao() -> Any:
    """torchao's PT2E module; a ConfigError with the install command when torchao is missing."""
    # the PT2E flow is pure Python; torchao's compiled kernels are CUDA ones that quantization here never calls
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    try:
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as exc:
        raise ConfigError(f"quantization needs torchao ({exc}); install it with pip install 'torchao==0.18.0'") from None
    return quantize_pt2e


@dataclass(frozen=True)
class PT2EConfig:
    calib_images: int = field(default=512, metadata={"help": "calibration images, drawn at random from the run's synthetic data set (all of them if it has fewer)"})
    calib_batch_size: int = field(default=64, metadata={"help": "images per calibration batch"})
    skip: str = field(default="", metadata={"help": "comma list of module names kept in float32 (e.g. fc,conv1)"})
    max_batch: int = field(default=1024, metadata={"help": "largest batch the exported program accepts"})
    chunk: int = field(default=64, metadata={"help": "the saved classifier runs batches of 1 or of this size (larger ones are split, shorter ones padded), so that a compiled program needs two shapes"})
    lower: bool = field(default=True, metadata={"help": "lower the program with torch.compile (Inductor, int8 kernels); false: run the reference quantize/dequantize graph in float, for checks only (slow)"})
    latency: bool = field(default=True, metadata={"help": "measure the latency table: float eager, float compiled and quantized, at batch 1 and 64 (compiles the float model too)"})


def count_targets(graph_module: torch.fx.GraphModule) -> Counter:
    """How often each ATen operator occurs in a graph (``aten.conv2d.default`` -> 20 ...)."""
    return Counter(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")


class PT2EQuantizer(Quantizer, abc.ABC):
    """Static PTQ through torchao's PT2E flow; subclasses choose the backend quantizer and its lowering."""

    Config = PT2EConfig
    #: the backend's name in reports (e.g. ``x86-inductor``)
    backend: ClassVar[str] = ""

    def check_options(self) -> None:
        cfg = self.config
        for name in ("calib_images", "calib_batch_size", "chunk"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"quantizer {self.name}: {name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.max_batch < max(2, cfg.chunk):
            raise ConfigError(f"quantizer {self.name}: max_batch must be >= 2 and >= chunk, got {cfg.max_batch}")

    def check_environment(self) -> None:
        import_torchao()

    def check_model(self, model: nn.Module, input_spec: InputSpec, *, label: str = "") -> None:
        export_classifier(_float_copy(model), input_spec.example_input(2), max_batch=self.config.max_batch, label=label)

    def scheme(self) -> dict[str, Any]:
        """Facts of the quantization scheme for the report (e.g. the activation range); the default has none."""
        return {}

    @abc.abstractmethod
    def backend_quantizer(self) -> Any:
        """The configured ``torchao.quantization.pt2e.quantizer.Quantizer`` of this backend."""

    def skipped(self) -> list[str]:
        return [name.strip() for name in self.config.skip.split(",") if name.strip()]

    def quantize(self, model: nn.Module, input_spec: InputSpec, *, batches: list[torch.Tensor],
                 label: str = "") -> QuantizeResult:
        pt2e = import_torchao()
        cfg = self.config
        fp32 = _float_copy(model)
        names = {name for name, _ in fp32.named_modules()}
        unknown = [name for name in self.skipped() if name not in names]
        if unknown:
            raise ConfigError(f"quantizer {self.name}: skip names modules the model does not have: {', '.join(unknown)}")
        example = input_spec.example_input(2)
        graph = export_classifier(fp32, example, max_batch=cfg.max_batch, label=label).module()
        batch_norms = count_targets(graph)
        prepared = pt2e.prepare_pt2e(graph, self.backend_quantizer())
        seen = 0
        with torch.no_grad():
            for batch in batches:
                prepared(batch.to("cpu", torch.float32).contiguous())
                seen += batch.shape[0]
        if seen == 0:
            raise ConfigError(f"quantizer {self.name}: no calibration images")
        converted = drop_unused_tensors(pt2e.convert_pt2e(prepared))
        program = export_classifier(converted, example, max_batch=cfg.max_batch, label=label)
        ops = count_targets(program.graph_module)
        stats = {
            **self.scheme(),
            "quantized_ops": sum(n for op, n in ops.items() if op.startswith("quantized_decomposed.quantize_per_tensor")),
            "float_batchnorms": sum(n for op, n in ops.items() if "batch_norm" in op),
            "batchnorms_before": sum(n for op, n in batch_norms.items() if "batch_norm" in op),
            "kept_float": self.skipped(),
        }
        notes = []
        if stats["float_batchnorms"]:
            notes.append(f"{stats['float_batchnorms']} of {stats['batchnorms_before']} BatchNorm layers do not directly "
                         "follow a conv or linear layer, so they were not folded and run in float32")
        result = QuantizeResult(QuantizedClassifier(program.module(), self.compile if cfg.lower else None,
                                                    chunk=cfg.chunk),
                                program, backend=self.backend if cfg.lower else f"{self.backend} (not lowered)",
                                calib_images=seen, notes=notes, stats=stats)
        if cfg.lower:
            self._warm(result, input_spec)
        return result

    def _warm(self, result: QuantizeResult, input_spec: InputSpec) -> None:
        """Compile the program for its two batch shapes now (timed), and check that the backend lowered it."""
        start = time.perf_counter()
        result.model(input_spec.example_input(1))
        result.model(input_spec.example_input(min(2, self.config.chunk)))
        result.stats["compile_s"] = round(time.perf_counter() - start, 2)
        result.notes.extend(self.lowering_notes())

    def lowering_notes(self) -> list[str]:
        """Warnings about the last lowering (e.g. no int8 kernel matched); the default has none."""
        return []

    def save(self, result: QuantizeResult, path: Path, *, meta: dict[str, Any]) -> Path:
        return save_program(result.program, path, {"quantizer": self.name, "backend": self.backend,
                                                   "chunk": self.config.chunk, **meta})


def drop_unused_tensors(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the parameters and buffers that no node reads: after ``convert_pt2e`` the float weights stay
    attributes beside their int8 copies, and an export would save both."""
    used = {str(node.target) for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            module = graph_module.get_submodule(owner) if owner else graph_module
            module._parameters.pop(leaf, None)
            module._buffers.pop(leaf, None)
    graph_module.delete_all_unused_submodules()
    return graph_module


def _float_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode, contiguous, without gradients (the original is untouched)."""
    fp32 = copy.deepcopy(model).cpu().float().eval()
    for p in fp32.parameters():
        p.requires_grad_(False)
    return fp32.to(memory_format=torch.contiguous_format)
