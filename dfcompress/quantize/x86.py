"""The built-in backend: static int8 for x86 CPUs, torchao's X86 Inductor quantizer lowered by ``torch.compile``.

Quantization scheme (torchao's default x86 configuration): weights int8, symmetric, per output channel
(``PerChannelMinMaxObserver``); activations uint8, affine, per tensor, ranges from a histogram of the
calibration batches (``HistogramObserver``). Convolutions, linear layers, pooling, ``cat``, ``flatten`` and
the residual ``add`` (+ReLU) after a convolution are quantized; anything else runs in float32 between a
dequantize and a quantize.

The int8 kernels come from Inductor's *freezing* passes, which torchao registers when its x86 quantizer module
is imported and which run only with ``torch._inductor.config.freezing`` on and gradients off: :meth:`compile`
sets both around every call. Without them the compiled program is correct but computes in float.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .pt2e import PT2EConfig, PT2EQuantizer, import_torchao

# Inductor's int8 lowering copy-constructs a tensor and says so on every compile; nothing a user can act on
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                        module=r"torch\._inductor\.mkldnn_lowerings")

#: Inductor's counters of int8 weight prepacking: one of them grows when a conv or linear got an int8 kernel
PREPACK_COUNTERS = ("qconv_weight_prepack_matcher_count", "qlinear_weight_prepack_matcher_count")


REDUCE_RANGE = ("auto", "true", "false")


@dataclass(frozen=True)
class X86Config(PT2EConfig):
    reduce_range: str = field(default="auto", metadata={"help": "7-bit activations (0..127): auto uses them on CPUs without VNNI instructions, whose int8 kernels otherwise saturate (measured: ResNet-20 int8 agreed with float on 89 % of images instead of 98 %)", "choices": REDUCE_RANGE})


def has_vnni() -> bool:
    """Whether this CPU has VNNI dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else True


def _x86() -> Any:
    import_torchao()
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # registers the int8 lowering passes

    return x86_inductor_quantizer


def _prepacked() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["inductor"][name] for name in PREPACK_COUNTERS)


class X86InductorPTQ(PT2EQuantizer):
    name = "x86"
    summary = "static int8 PTQ, per-channel weights (torchao PT2E, X86 Inductor quantizer, torch.compile)"
    paper = "PyTorch 2 Export Quantization with X86 Backend through Inductor (PyTorch tutorial; torchao.quantization.pt2e)"
    Config = X86Config
    backend = "x86-inductor"

    def check_environment(self) -> None:
        _x86()
        if not torch.backends.mkldnn.is_available():
            raise ConfigError("quantizer x86: this torch build has no oneDNN (mkldnn), which the int8 kernels need")
        if self.config.lower and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise ConfigError("quantizer x86: torch.compile needs a C++ compiler (g++) on the CPU; install one, or "
                              "use -q lower=false to check accuracy without int8 kernels")

    def backend_quantizer(self) -> Any:
        x86 = _x86()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=self.reduce_range()))
        for name in self.skipped():
            quantizer.set_module_name_qconfig(name, None)
        return quantizer

    def scheme(self) -> dict[str, Any]:
        return {"activation_bits": 7 if self.reduce_range() else 8, "cpu_vnni": has_vnni(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def reduce_range(self) -> bool:
        """7-bit activations: as asked, or (auto) where the CPU lacks VNNI. Without VNNI, oneDNN's u8 x s8 kernels
        add pairs of products in 16 bits, which 8-bit activations can overflow; the quantizer's own advice is to
        reduce the range there."""
        choice = self.config.reduce_range
        return (not has_vnni()) if choice == "auto" else choice == "true"

    def compile(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``torch.compile`` with Inductor's freezing (weights prepacked; int8 kernels for a quantized program),
        one graph per input shape; every call runs without gradients."""
        _x86()
        compiled = torch.compile(model, dynamic=False)

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch._inductor.config.patch(freezing=True), torch.no_grad():
                return compiled(x)

        return call

    def _warm(self, result: Any, input_spec: Any) -> None:
        self._before = _prepacked()
        super()._warm(result, input_spec)

    def lowering_notes(self) -> list[str]:
        if _prepacked() > getattr(self, "_before", 0):
            return []
        return ["no convolution or linear layer got an int8 kernel (Inductor matched no quantized pattern): the "
                "program computes in float between quantize/dequantize steps"]
