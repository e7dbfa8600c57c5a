"""The model matrix: timm and torchvision architectures across families, pruned at half their channels.

Each case builds the model as ``dfcompress run`` does (its model source, 10 classes, a small input), prunes it
with L1 at ratio 0.5, and checks: fewer parameters, the output shape kept, a finite forward in eval mode and a
forward + backward in train mode (auxiliary heads, BatchNorm batch statistics), and that saving then reloading
into a fresh instance gives identical outputs. Architectures that cannot be pruned must be refused in one line
naming the family, before tracing. A fast subset runs by default; the whole matrix is marked slow (CI runs it);
the largest models also need ``DFCOMPRESS_PRUNE_MATRIX=full``. The list is docs/pruning.md's "Tested
architectures".
"""
from __future__ import annotations

import copy
import gc
from dataclasses import dataclass

import pytest
import torch

from dfcompress.errors import ConfigError
from dfcompress.models.base import parse_spec
from dfcompress.prune import L1Pruner, load_pruned, save_pruned

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


@dataclass(frozen=True)
class Case:
    spec: str
    size: int = 32
    fast: bool = False  # in the default quick subset
    refuse: str | None = None  # regex of the one-line refusal
    #: at most this fraction of the parameters is left (catches "pruned almost nothing"); blocks pruned only
    #: inside (ShuffleNetV2) keep more
    max_kept: float = 0.6


MATRIX = [
    # -- fast: every pattern once (residual, SE, depthwise, LayerNorm, attention, aux heads, reload version) --
    Case("timm:test_resnet", fast=True),
    Case("timm:test_efficientnet", fast=True),
    Case("timm:test_convnext", fast=True),
    Case("timm:test_byobnet", fast=True),
    Case("timm:test_vit", fast=True),
    Case("torchvision:mobilenet_v3_small", fast=True),
    Case("torchvision:mnasnet0_5", fast=True),
    Case("torchvision:googlenet", fast=True),
    Case("torchvision:shufflenet_v2_x0_5", fast=True, max_kept=0.9),
    # -- slow: ResNet / ResNeXt / SE / RegNet --
    Case("timm:resnet10t"), Case("timm:resnet18d"), Case("timm:seresnet18"), Case("timm:resnext26ts"),
    Case("timm:regnetx_002"), Case("timm:regnety_002"),
    Case("torchvision:resnet18"), Case("torchvision:resnet50"), Case("torchvision:resnext50_32x4d"),
    Case("torchvision:regnet_x_400mf"), Case("torchvision:regnet_y_400mf"),
    # EfficientNet / MobileNet / MNASNet / LCNet / TinyNet / MobileOne / RepVGG
    Case("timm:test_efficientnet_gn"), Case("timm:test_efficientnet_ln"), Case("timm:mobilenetv3_small_050"),
    Case("timm:mobilenetv2_050"), Case("timm:lcnet_050"), Case("timm:mnasnet_small"), Case("timm:tinynet_e"),
    Case("timm:mobilenetv4_conv_small_050"), Case("timm:mobileone_s0"), Case("timm:repvgg_a0"),
    Case("torchvision:mobilenet_v2"), Case("torchvision:mobilenet_v3_large"), Case("torchvision:mnasnet1_0"),
    Case("torchvision:efficientnet_b0"), Case("torchvision:efficientnet_v2_s"),
    # ConvNeXt, DLA, VoVNet, HGNet, DenseNet, SqueezeNet, Inception
    Case("timm:test_convnext2"), Case("timm:convnextv2_atto"), Case("torchvision:convnext_tiny"),
    Case("timm:dla46_c"), Case("timm:ese_vovnet19b_dw"), Case("timm:hgnetv2_b0"),
    Case("torchvision:densenet121"), Case("torchvision:squeezenet1_0"), Case("torchvision:squeezenet1_1"),
    Case("timm:inception_v3", size=96), Case("torchvision:inception_v3", size=75),
    # attention: ViT / DeiT (heads), MobileViT v1 (heads) and v2 (separable attention)
    Case("timm:vit_tiny_patch16_224"), Case("timm:deit_tiny_distilled_patch16_224"),
    Case("timm:mobilevit_xxs", size=64), Case("timm:mobilevitv2_050", size=64),
    # channel shuffle: pruned inside each block only
    Case("torchvision:shufflenet_v2_x1_0", max_kept=0.9),
    # -- refused in one line, before tracing --
    Case("torchvision:swin_t", refuse=r"Swin.*window"),
    Case("timm:ghostnet_050", refuse=r"GhostNet.*out_chs"),
    Case("timm:rexnetr_100", refuse=r"(?i)ReXNet.*partial residual"),
    Case("timm:dpn48b", refuse=r"DPN.*dual-path"),
    Case("timm:efficientvit_m0", size=224, refuse=r"EfficientViT.*q/k/v"),
    Case("timm:levit_128s", size=224, refuse=r"LeViT.*attention biases"),
    Case("timm:swin_tiny_patch4_window7_224", size=224, refuse=r"Swin.*window"),
    Case("torchvision:maxvit_t", size=224, refuse=r"(?i)MaxViT.*relative position"),
    Case("timm:mixnet_s", refuse=r"MixNet.*split"),
    Case("timm:ecaresnet26t", refuse=r"ECA.*channel dimension"),
    Case("timm:test_nfnet", refuse=r"NFNet.*gain"),
    Case("timm:cs3darknet_focus_s", refuse=r"CspNet.*halves"),
    Case("timm:fasternet_t0", refuse=r"FasterNet.*partial"),
    # VGG / AlexNet (the largest: 129 and 57 M parameters), torchvision's ViT-B/16 (86 M: nn.MultiheadAttention)
    Case("torchvision:vgg11_bn"), Case("torchvision:alexnet", size=64), Case("torchvision:vit_b_16"),
]


def _marks(case: Case) -> list:
    return [] if case.fast else [pytest.mark.slow]


def _build(case: Case, seed: int):
    source, name = parse_spec(case.spec)
    torch.manual_seed(seed)
    model, spec = source.build(name, num_classes=10, image_size=(case.size, case.size))
    return model.eval(), spec


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.spec, marks=_marks(c)) for c in MATRIX])
def test_prune_matrix(case: Case, tmp_path):
    model, spec = _build(case, seed=0)
    if case.refuse:
        with pytest.raises(ConfigError, match=case.refuse) as err:
            L1Pruner().prune(model, spec, ratio=0.5)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=case.refuse):  # the check a run makes before any synthesis
            L1Pruner().check_model(model, spec, ratio=0.5)
        return
    x = torch.randn(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
    result = L1Pruner().prune(model, spec, ratio=0.5)
    assert result.params_after < case.max_kept * result.params_before, result.notes
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    trained = copy.deepcopy(model).train()
    y = trained(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 10)
    y.float().sum().backward()
    assert all(p.grad is not None for p in trained.parameters() if p.requires_grad)
    path = save_pruned(model, tmp_path / "pruned.pt", arch=case.spec, input_spec=spec)
    reloaded = load_pruned(path, _build(case, seed=123)[0]).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)
