"""The feature pyramid of a CNN teacher: the last feature map at each spatial resolution.

NaturalInversion's Feature Transfer Pyramid reads the teacher's feature maps "at the downsampling
point" (the stage outputs: residual-stage outputs of a ResNet, pooling outputs of a VGG). For an
arbitrary CNN they are found without touching its ``forward``: a probe forward pass with forward hooks
on every sub-module records each 4-D output in the order the hooks fire (children before their
parent), and for each spatial size the LAST output of that size is kept -- that is the stage output
(the stage container fires after its blocks). Recording stops at the global pooling layer of the
head. Outputs that cannot be feature maps of the main path are skipped:

* the input image itself (same C x H x W as the input, e.g. a normalisation layer);
* maps larger than the input, or with an aspect ratio inconsistent with the input (channels-last
  tensors such as the ``Linear`` outputs inside ConvNeXt blocks);
* small maps followed later by larger ones (squeeze-excitation branches produce C x 1 x 1 maps in
  the middle of a stage; the main path never returns to a larger resolution after a level ends);
* maps inside a block that downsamples from that resolution (the expansion conv of an inverted
  residual, the 1x1 reduction of a bottleneck, the norm before a ConvNeXt downsampling conv): the
  level is then the output of the previous block, i.e. the block/stage output at that resolution.

A teacher with no 4-D feature map, or one that turns its maps into tokens (ViT-like: 3-D outputs
after the patch embedding), has no spatial pyramid and is refused with UnsupportedTeacherError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..components import InputSpec
from ..errors import UnsupportedTeacherError


@dataclass(frozen=True)
class PyramidLevel:
    """One level: the output of module ``name`` at its ``call``-th call during a forward pass."""

    name: str
    call: int
    channels: int
    size: tuple[int, int]


def _is_global_pool(module: nn.Module) -> bool:
    cls = type(module).__name__.lower()
    return ("adaptive" in cls and "pool" in cls) or "globalpool" in cls or "global_pool" in cls


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def find_pyramid(model: nn.Module, spec: InputSpec, device: torch.device | str = "cpu") -> list[PyramidLevel]:
    """The pyramid levels of ``model`` from the shallowest (largest) to the deepest (smallest) map.

    Raises UnsupportedTeacherError when the model has no spatial pyramid."""
    height, width = spec.image_size
    records: list[tuple[str, int, tuple[int, ...]]] = []
    downsampling: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}  # name -> (input size, output size)
    calls: dict[str, int] = {}
    state = {"stopped": False, "tokens": False}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            if state["stopped"]:
                return
            if _is_global_pool(module):
                state["stopped"] = True
                return
            out = _first_tensor(output)
            if out is None:
                return
            if out.dim() == 4:
                records.append((name, call, tuple(out.shape[1:])))
                source = _first_tensor(inputs)
                if source is not None and source.dim() == 4 and source.shape[2] * source.shape[3] > out.shape[2] * out.shape[3]:
                    downsampling[name] = ((int(source.shape[2]), int(source.shape[3])), (int(out.shape[2]), int(out.shape[3])))
            elif out.dim() == 3 and records and out.shape[1] > 1:
                state["tokens"] = True

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(spec.example_input(2, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if state["tokens"]:
        raise UnsupportedTeacherError(
            "the teacher turns its feature maps into tokens (ViT-like); NaturalInversion needs a CNN with a "
            "spatial feature pyramid -- use --synth seeded or deepinversion"
        )
    blocks = _single_step_blocks(records, downsampling)
    valid = [
        (i, r)
        for i, r in enumerate(records)
        if _plausible(r[2], spec.channels, height, width) and not _inside_block(r, blocks)
    ]
    last: dict[tuple[int, int], tuple[int, tuple[str, int, tuple[int, ...]]]] = {}
    for index, record in valid:
        last[(record[2][1], record[2][2])] = (index, record)
    levels = []
    for size, (index, (name, call, shape)) in last.items():
        area = size[0] * size[1]
        if any(r[2][1] * r[2][2] > area for _, r in valid if _ > index):
            continue
        levels.append((index, PyramidLevel(name, call, int(shape[0]), (int(size[0]), int(size[1])))))
    if not levels:
        raise UnsupportedTeacherError(
            "the teacher produces no 4-D feature maps, so it has no feature pyramid for NaturalInversion; "
            "use --synth seeded or deepinversion"
        )
    levels.sort(key=lambda item: (-(item[1].size[0] * item[1].size[1]), item[0]))
    return [level for _, level in levels]


def _single_step_blocks(
    records: list[tuple[str, int, tuple[int, ...]]], downsampling: dict[str, tuple[tuple[int, int], tuple[int, int]]]
) -> dict[str, tuple[int, int]]:
    """Blocks that go down by one resolution step: every map inside them has the input or the output
    size, or are smaller than the output (squeeze-excitation maps): an inverted residual, a bottleneck,
    a stage. A container spanning several resolutions (a
    VGG ``features`` Sequential) is not a block. Returns name -> input size."""
    blocks = {}
    for block, (in_size, out_size) in downsampling.items():
        inner = {(r[2][1], r[2][2]) for r in records if r[0].startswith(block + ".")}
        out_area = out_size[0] * out_size[1]
        if inner and all(size == in_size or size[0] * size[1] <= out_area for size in inner):
            blocks[block] = in_size
    return blocks


def _inside_block(record: tuple[str, int, tuple[int, ...]], blocks: dict[str, tuple[int, int]]) -> bool:
    name, _, shape = record
    size = (shape[1], shape[2])
    return any(name.startswith(block + ".") and in_size == size for block, in_size in blocks.items())


def _plausible(shape: tuple[int, ...], channels: int, height: int, width: int) -> bool:
    c, h, w = shape
    if (c, h, w) == (channels, height, width):
        return False
    if h > height or w > width or h < 1 or w < 1:
        return False
    ratio = (h / height) / (w / width)
    return 0.5 <= ratio <= 2.0


class FeatureTaps:
    """Forward hooks that capture the pyramid levels' outputs during a forward pass.

    Call :meth:`clear` before a forward pass and :meth:`features` after it (shallowest first). While
    ``active`` is False nothing is captured."""

    def __init__(self, model: nn.Module, levels: list[PyramidLevel]) -> None:
        self.levels = levels
        self.active = True
        self._outputs: dict[str, list[torch.Tensor]] = {}
        modules = dict(model.named_modules())
        self._handles = []
        for name in {level.name for level in levels}:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = _first_tensor(output)
            if out is not None and self.active:
                self._outputs.setdefault(name, []).append(out)

        return hook

    def clear(self) -> None:
        self._outputs = {}

    def features(self) -> list[torch.Tensor]:
        return [self._outputs[level.name][level.call] for level in self.levels]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
