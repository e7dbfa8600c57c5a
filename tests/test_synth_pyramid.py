"""Feature-pyramid discovery and the Feature Transfer Pyramid on many CNN families (random weights, 32x32)."""
from __future__ import annotations

import pytest
import torch

from dfcompress.components import InputSpec
from dfcompress.errors import UnsupportedTeacherError
from dfcompress.synth.natural_nets import ConditionalGenerator, FeatureTransferPyramid, upsample_nearest
from dfcompress.synth.pyramid import FeatureTaps, find_pyramid

SPEC = InputSpec(image_size=(32, 32), num_classes=10)


def _build(name: str) -> torch.nn.Module:
    if name.startswith("cifar:"):
        from dfcompress.models.cifar_resnet import cifar_resnet

        return cifar_resnet(name.split(":")[1])
    if name.startswith("tv:"):
        import torchvision

        return getattr(torchvision.models, name.split(":")[1])(num_classes=10)
    import timm

    return timm.create_model(name.split(":")[1], pretrained=False, num_classes=10)


# expected (name of the stage output, channels, size) of the shallowest and the deepest level
CASES = {
    "cifar:resnet20": [("layer1", 16, (32, 32)), ("layer2", 32, (16, 16)), ("layer3", 64, (8, 8))],
    "cifar:resnet56": [("layer1", 16, (32, 32)), ("layer2", 32, (16, 16)), ("layer3", 64, (8, 8))],
    "tv:resnet18": [("relu", 64, (16, 16)), ("layer1", 64, (8, 8)), ("layer2", 128, (4, 4)),
                    ("layer3", 256, (2, 2)), ("layer4", 512, (1, 1))],
    "tv:vgg11_bn": [("features.2", 64, (32, 32)), ("features.6", 128, (16, 16)), ("features.13", 256, (8, 8)),
                    ("features.20", 512, (4, 4)), ("features.27", 512, (2, 2)), ("features", 512, (1, 1))],
    "tv:mobilenet_v2": [("features.1", 16, (16, 16)), ("features.3", 24, (8, 8)), ("features.6", 32, (4, 4)),
                        ("features.13", 96, (2, 2)), ("features", 1280, (1, 1))],
    "timm:test_resnet": [("act1", 32, (16, 16)), ("layer1", 32, (8, 8)), ("layer2", 48, (4, 4)),
                         ("layer3", 192, (2, 2)), ("layer4", 96, (1, 1))],
    "timm:test_efficientnet": None,
    "timm:mobilenetv3_small_050": None,
    "timm:test_convnext": None,
    "timm:regnetx_002": None,
}


@pytest.mark.parametrize("name", list(CASES))
def test_pyramid_levels_and_ftp_shape(name):
    model = _build(name).eval()
    levels = find_pyramid(model, SPEC)
    sizes = [lv.size for lv in levels]
    assert sizes == sorted(sizes, key=lambda s: -s[0] * s[1]) and len(set(sizes)) == len(sizes)
    if CASES[name] is not None:
        assert [(lv.name, lv.channels, lv.size) for lv in levels] == CASES[name]
    # the taps return exactly those maps during an ordinary forward, and the FTP maps them to an image
    taps = FeatureTaps(model, levels)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    feats = taps.features()
    taps.remove()
    assert [tuple(f.shape[1:]) for f in feats] == [(lv.channels, *lv.size) for lv in levels]
    ftp = FeatureTransferPyramid([lv.channels for lv in levels], [lv.size for lv in levels], 3, (32, 32))
    m = ftp(feats)
    assert m.shape == x.shape
    assert ftp.combine(x, m).shape == x.shape


def test_ftp_matches_table7_for_resnet34_pyramid():
    ftp = FeatureTransferPyramid([64, 128, 256, 512], [(32, 32), (16, 16), (8, 8), (4, 4)], 3, (32, 32))
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in ftp.lateral] == [
        (512, 256, (1, 1)), (256, 128, (1, 1)), (128, 64, (1, 1)), (64, 3, (1, 1))]
    assert [c.kernel_size for c in ftp.smooth[1:]] == [(3, 3)] * 3
    assert [c.in_channels for c in ftp.smooth[1:]] == [256, 128, 64]
    feats = [torch.randn(2, c, s, s) for c, s in ((64, 32), (128, 16), (256, 8), (512, 4))]
    assert ftp(feats).shape == (2, 3, 32, 32)


def test_ftp_equation5_by_hand():
    torch.manual_seed(0)
    ftp = FeatureTransferPyramid([4, 6], [(8, 8), (4, 4)], 3, (8, 8))
    f1, f2 = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    m1 = ftp.lateral[0](torch.nn.functional.interpolate(f2, size=(8, 8), mode="nearest"))
    m2 = ftp.lateral[1](ftp.smooth[1](m1 + f1))
    assert torch.allclose(ftp([f1, f2]), m2, atol=1e-6)


def test_generator_table6_shapes_and_upsample():
    gen = ConditionalGenerator(1024, 10, 3, (32, 32), 128)
    assert gen.fc.in_features == 1034 and gen.fc.out_features == 128 * 8 * 8
    assert (gen.conv1.in_channels, gen.conv1.out_channels, gen.conv2.out_channels) == (128, 128, 64)
    out = gen(torch.randn(4, 1024), torch.tensor([0, 1, 2, 9]))
    assert out.shape == (4, 3, 32, 32)
    assert ConditionalGenerator(16, 5, 1, (28, 28), 8)(torch.randn(2, 16), torch.tensor([0, 4])).shape == (2, 1, 28, 28)
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(upsample_nearest(x, (10, 14)), torch.nn.functional.interpolate(x, size=(10, 14), mode="nearest"))


def test_token_model_has_no_pyramid():
    import timm

    vit = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=32).eval()
    with pytest.raises(UnsupportedTeacherError, match="tokens"):
        find_pyramid(vit, SPEC)


def test_model_without_feature_maps_is_refused():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(UnsupportedTeacherError, match="no 4-D feature maps"):
        find_pyramid(mlp, SPEC)
