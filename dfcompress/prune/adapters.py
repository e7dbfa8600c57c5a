"""What torch-pruning 1.6 needs to be told about particular architectures, and the ones it cannot prune.

torch-pruning traces a model's graph and removes coupled channels, but some architectures keep widths in
Python attributes it does not know about (attention heads, split sizes), run modules only in train mode
(auxiliary classifier heads, which the eval-mode trace never sees), or permute channels in ways it cannot trace
(channel shuffle: those blocks are pruned inside, on their own). An :class:`Adapter` names the module classes it handles by import path (so nothing imports
timm or torchvision to check), adds to the :class:`PrunePlan` of a pruning run before tracing (layers left
whole, attention heads, channel rounding) and mends the attributes after every pruning step
(:meth:`Adapter.finalize`). :data:`UNSUPPORTED` lists the blocks that cannot be pruned, with the reason, so that
a run refuses them in one line before any work (:func:`check_supported`).

To support a new architecture, add an adapter to :data:`ADAPTERS` and its models to ``tests/test_prune_matrix.py``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

from torch import nn

from ..errors import ConfigError


def class_path(module: nn.Module) -> str:
    """``torchvision.models.googlenet.GoogLeNet``: what adapters and :data:`UNSUPPORTED` match."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


@dataclass
class PrunePlan:
    """Everything the pruning of one model passes to ``tp.pruner.BasePruner`` beyond the criterion and ratio."""

    ignored: list[nn.Module] = field(default_factory=list)
    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    out_channel_groups: dict[nn.Module, int] = field(default_factory=dict)
    round_to: int | None = None
    prune_num_heads: bool = False
    notes: list[str] = field(default_factory=list)
    #: context managers entered while torch-pruning traces the model (e.g. the unfused attention path)
    tracing: list[Callable[[], contextlib.AbstractContextManager]] = field(default_factory=list)
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    #: (block, its layers whose outputs stay whole): pruned one by one on their own, when torch-pruning cannot
    #: trace the model around them; then nothing outside these blocks is pruned
    isolated: list[tuple[nn.Module, list[nn.Module]]] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @contextlib.contextmanager
    def traced(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for enter in self.tracing:
                stack.enter_context(enter())
            yield

    def finalize(self) -> None:
        """Re-derive the attributes pruning made stale (called after every pruning step)."""
        for fix in self.finalizers:
            fix()


class Adapter:
    """Teaches the pruner one family of modules: ``classes`` are import paths (:func:`class_path`)."""

    classes: ClassVar[tuple[str, ...]] = ()

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        """Before tracing: add to ``plan`` for ``module`` (one of ``classes``) of ``model``; may edit ``model``."""


class AuxiliaryHeads(Adapter):
    """GoogLeNet / Inception-v3 auxiliary classifiers run only in train mode: the eval-mode trace never sees
    them, so they would keep their input widths while the trunk shrinks, and in train mode the model returns a
    tuple that distillation cannot use. They exist only to help training from labels; they are removed (as
    torch-pruning's own examples build these models with ``aux_logits=False``)."""

    classes = ("torchvision.models.googlenet.GoogLeNet", "torchvision.models.inception.Inception3")
    heads: ClassVar[tuple[str, ...]] = ("aux1", "aux2", "AuxLogits")

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        removed = [name for name in self.heads if module._modules.get(name) is not None]
        module.aux_logits = False
        for name in removed:
            module._modules[name] = None
        if removed:
            plan.note(f"auxiliary classifier heads removed ({', '.join(removed)}): they run only in train mode, "
                      "and distillation does not use them")


class ChannelShuffle(Adapter):
    """ShuffleNetV2's blocks concatenate two branches and shuffle the channels (view-transpose-view), which
    torch-pruning 1.6 cannot trace (VainF/Torch-Pruning#14; the maintainer's advice: prune inside the block).
    Each block's ``branch2`` is pruned on its own: its internal width (1x1 conv -> depthwise conv -> 1x1 conv)
    loses the run's ratio of channels, while every width the shuffle sees (the main stream) stays whole."""

    classes = ("torchvision.models.shufflenetv2.InvertedResidual",)

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        branch = module.branch2
        plan.isolated.append((branch, [branch[len(branch) - 3]]))  # the last 1x1 conv writes the shuffled width
        plan.note("channel shuffle (ShuffleNetV2): only the inner width of each block's second branch is pruned; "
                  "the shuffled main-stream channels, the stem and the last 1x1 conv stay whole")


class TimmAttention(Adapter):
    """timm's multi-head self-attention (ViT, DeiT, MobileViT-v1 ...) splits ``qkv`` into heads with its stored
    ``num_heads`` / ``head_dim`` / ``attn_dim``: whole heads are removed (torch-pruning's head pruning, at the
    run's ratio), each head keeps its dimension, and the attributes are re-derived after each step. The trace runs
    on the unfused attention path (the fused kernel hides the head split from torch-pruning)."""

    classes = ("timm.layers.attention.Attention",)

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        if getattr(module, "gate", None) is not None:
            raise ConfigError(f"cannot prune {type(model).__name__}: gated attention (timm Attention with gate) is not "
                              "supported by torch-pruning 1.6's head pruning")
        plan.num_heads[module.qkv] = module.num_heads
        plan.prune_num_heads = True
        plan.note("attention: whole heads removed at the run's ratio, each head keeps its dimension")

        @contextlib.contextmanager
        def unfused() -> Iterator[None]:
            fused = module.fused_attn
            module.fused_attn = False
            try:
                yield
            finally:
                module.fused_attn = fused

        def fix() -> None:
            module.num_heads = module.qkv.out_features // (3 * module.head_dim)
            module.attn_dim = module.num_heads * module.head_dim

        plan.tracing.append(unfused)
        plan.finalizers.append(fix)


class TorchvisionViT(Adapter):
    """torchvision's VisionTransformer runs ``nn.MultiheadAttention`` (pruned by torch-pruning's own MHA
    pruner, which needs the embedding width to stay a multiple of the head count: every width is rounded to it)
    and keeps its width in ``hidden_dim``."""

    classes = ("torchvision.models.vision_transformer.VisionTransformer",)

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        heads = {m.num_heads for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
        if len(heads) == 1:
            plan.round_to = max(plan.round_to or 1, heads.pop())
            plan.note(f"vision transformer: widths rounded to a multiple of its {plan.round_to} attention heads")

        def fix() -> None:
            module.hidden_dim = module.conv_proj.out_channels

        plan.finalizers.append(fix)


class LinearSelfAttention(Adapter):
    """MobileViT-v2's separable attention splits ``qkv_proj``'s ``1 + 2d`` outputs by its stored ``embed_dim``,
    and torch-pruning traces the one-channel query's broadcast as element-wise: ``qkv_proj`` keeps its outputs
    (so q, k, v, the split and ``out_proj``'s input stay consistent); the residual width around it is pruned."""

    classes = ("timm.models.mobilevit.LinearSelfAttention",)

    def prepare(self, model: nn.Module, module: nn.Module, plan: PrunePlan, *, ratio: float) -> None:
        plan.ignored.append(module.qkv_proj)
        plan.note("separable self-attention (MobileViT-v2): the q/k/v projections keep their widths")


ADAPTERS: tuple[Adapter, ...] = (AuxiliaryHeads(), ChannelShuffle(), TimmAttention(),
                                 TorchvisionViT(), LinearSelfAttention())

_WINDOWS = "shifted-window attention with relative position tables, which torch-pruning 1.6 does not support"
_HALVES = "cross-stage blocks split their expanded width in two stored halves (x.split(expand_chs // 2))"
_ECA = ("efficient channel attention convolves across the channel dimension (a 1-d conv over the channels), "
        "which torch-pruning 1.6's index mapping does not finish tracing")
_STD_CONV = ("weight-standardized convolutions carry a per-channel gain that torch-pruning 1.6 neither slices nor "
             "ranks (as a customized layer its channels get no importance)")
#: blocks that cannot be pruned today: {class path: (family, reason)}
UNSUPPORTED: dict[str, tuple[str, str]] = {
    "torchvision.models.swin_transformer.SwinTransformerBlock": ("Swin", _WINDOWS),
    "torchvision.models.swin_transformer.SwinTransformerBlockV2": ("Swin-v2", _WINDOWS),
    "timm.models.swin_transformer.SwinTransformerBlock": ("Swin", _WINDOWS),
    "torchvision.models.maxvit.MaxVitBlock": (
        "MaxViT", "block and grid attention with fixed-size relative position biases"),
    "timm.models.levit.Attention": ("LeViT", "attention biases tied to a fixed resolution and key dimension"),
    "timm.models.levit.AttentionDownsample": ("LeViT", "attention biases tied to a fixed resolution"),
    "timm.models.ghostnet.GhostModule": (
        "GhostNet", "ghost modules slice their concatenated output to a stored width (out[:, :out_chs])"),
    "timm.models.ghostnet.GhostModuleV2": (
        "GhostNet", "ghost modules slice their concatenated output to a stored width (out[:, :out_chs])"),
    "timm.models.rexnet.LinearBottleneck": (
        "ReXNet", "the partial residual adds the shortcut to a slice of the channels (x[:, :in_chs])"),
    "timm.models.dpn.DualPathBlock": (
        "DPN", "dual-path blocks slice the residual and dense paths at a stored channel count"),
    "timm.models.cspnet.CrossStage": ("CSPNet", _HALVES),
    "timm.models.cspnet.CrossStage3": ("CSPNet", _HALVES),
    "timm.models.fasternet.Partial_conv3": (
        "FasterNet", "partial convolutions split the channels at a stored width (dim_conv3)"),
    "timm.layers.mixed_conv2d.MixedConv2d": (
        "MixNet", ("mixed convolutions split their input at stored widths, one conv per split, which torch-pruning "
                   "1.6 mis-traces")),
    "timm.layers.eca.EcaModule": ("ECA", _ECA),
    "timm.layers.eca.CecaModule": ("ECA", _ECA),
    "timm.layers.std_conv.ScaledStdConv2d": ("NFNet", _STD_CONV),
    "timm.layers.std_conv.ScaledStdConv2dSame": ("NFNet", _STD_CONV),
    "timm.models.res2net.Bottle2neck": ("Res2Net", "blocks split their width into stored-size scales"),
    "timm.models.efficientvit_msra.CascadedGroupAttention": (
        "EfficientViT (MSRA)", "attention splits q/k/v at stored key and value widths"),
}


def check_supported(model: nn.Module) -> None:
    """Raise a one-line ConfigError when ``model`` holds a block listed in :data:`UNSUPPORTED`."""
    for name, module in model.named_modules():
        entry = UNSUPPORTED.get(class_path(module))
        if entry is not None:
            family, reason = entry
            label = type(model).__name__ if family.lower() == type(model).__name__.lower() else \
                f"{type(model).__name__} ({family})"
            raise ConfigError(f"cannot prune {label}: {reason}; e.g. module "
                              f"'{name}' ({type(module).__name__}). Prune another architecture or distill into one "
                              f"(--task distill --student ...)")


def plan_pruning(model: nn.Module, *, ratio: float) -> PrunePlan:
    """The :class:`PrunePlan` of ``model`` from every adapter that matches one of its modules (after
    :func:`check_supported`). May edit ``model`` (e.g. remove auxiliary heads)."""
    check_supported(model)
    by_class = {path: adapter for adapter in ADAPTERS for path in adapter.classes}
    plan = PrunePlan()
    for module in list(model.modules()):
        adapter = by_class.get(class_path(module))
        if adapter is not None:
            adapter.prepare(model, module, plan, ratio=ratio)
    return plan
