"""Evaluation metrics against hand counts and closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dfcompress import evaluation as ev
from dfcompress.components import InputSpec, Teacher
from dfcompress.metrics import class_balance, mean_pairwise_cosine_distance, topk_accuracy
from dfcompress.metrics.frechet import gaussian, trace_sqrt_product

SPEC = InputSpec(image_size=(32, 32), num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- cost ---------------------------------------------------------------------------------------------

def test_params_of_a_linear_layer():
    assert ev.count_params(nn.Linear(10, 4)) == 10 * 4 + 4
    assert ev.count_params(nn.Conv2d(3, 8, 3, bias=False)) == 3 * 8 * 9


def test_macs_of_a_conv_and_a_linear_layer():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert ev.count_macs(conv, SPEC) == 3 * 8 * 9 * 32 * 32
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    assert ev.count_macs(model, SPEC) == 3 * 4 * 9 * 32 * 32 + 4 * 32 * 32 * 10 + 10


def test_count_macs_leaves_batchnorm_statistics_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    ev.count_macs(model, SPEC)
    assert int(model[1].num_batches_tracked) == 0 and model.training


def test_disk_size_of_a_file_and_a_directory(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 123)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 77)
    assert ev.disk_size(tmp_path / "a.bin") == 123
    assert ev.disk_size(tmp_path) == 200


def test_latency_is_a_positive_median_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    seconds = ev.latency(model, SPEC, batch_size=2, repeats=3, warmup=1)
    assert 0 < seconds < 5
    assert model.training and int(model[1].num_batches_tracked) == 0


# -- accuracy and agreement -----------------------------------------------------------------------------

class PixelCode(nn.Module):
    """Reads the class from the first pixel (value = 20 * class) of the de-normalised image: a model whose
    predictions are known exactly. ``offset`` shifts its predictions by that many classes."""

    def __init__(self, spec: InputSpec, num_classes: int = 10, offset: int = 0) -> None:
        super().__init__()
        self.spec, self.num_classes, self.offset = spec, num_classes, offset
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = torch.round(self.spec.denormalize(x)[:, 0, 0, 0] * 255 / 20).long()
        pred = (code + self.offset) % self.num_classes
        classes = torch.arange(self.num_classes)
        return -(classes.view(1, -1) - pred.view(-1, 1)).abs().float() * self.scale


def _coded_images(labels: torch.Tensor) -> torch.Tensor:
    images = torch.full((len(labels), 3, 32, 32), 128, dtype=torch.uint8)
    images[:, 0, 0, 0] = (labels * 20).to(torch.uint8)
    return images


def test_accuracy_counts_correct_predictions():
    labels = torch.arange(10).repeat(3)
    images = _coded_images(labels)
    wrong = labels.clone()
    wrong[:6] = (wrong[:6] + 3) % 10
    assert ev.accuracy(PixelCode(SPEC), images, labels, SPEC, device="cpu", batch_size=7) == {"top1": 1.0}
    assert ev.accuracy(PixelCode(SPEC), images, wrong, SPEC, batch_size=7)["top1"] == pytest.approx(24 / 30)


def test_top5_only_for_more_than_ten_classes():
    spec = InputSpec(num_classes=12)
    labels = torch.arange(11)  # the offset prediction label + 1 never wraps around
    images = _coded_images(labels)
    result = ev.accuracy(PixelCode(spec, 12, offset=1), images, labels, spec)
    assert result["top1"] == 0.0 and result["top5"] == 1.0  # off by one: never top-1, always in the top 5
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    assert topk_accuracy(logits, torch.tensor([1]), (1, 5)) == {"top1": 0.0, "top5": 1.0}
    assert topk_accuracy(logits, torch.tensor([0]), (1, 5)) == {"top1": 0.0, "top5": 0.0}


def test_agreement_of_two_models():
    labels = torch.arange(10).repeat(2)
    images = _coded_images(labels)
    assert ev.agreement(PixelCode(SPEC), PixelCode(SPEC), images, SPEC) == 1.0
    assert ev.agreement(PixelCode(SPEC), PixelCode(SPEC, offset=1), images, SPEC) == 0.0


def test_classifier_is_found_in_any_cnn():
    import timm
    import torchvision

    from dfcompress.models.cifar_resnet import cifar_resnet

    resnet = timm.create_model("test_resnet", num_classes=10)
    squeeze = torchvision.models.squeezenet1_1(num_classes=10)
    cifar = cifar_resnet("resnet20")
    assert ev.find_classifier(resnet, SPEC) is resnet.fc
    assert ev.find_classifier(squeeze, SPEC) is squeeze.classifier[1]  # a 1x1 conv head
    assert ev.find_classifier(cifar, SPEC) is cifar.linear


# -- synthetic-data quality ---------------------------------------------------------------------------

def test_class_balance_and_diversity_closed_forms():
    assert class_balance(torch.arange(10).repeat(5), 10) == (pytest.approx(1.0), [5] * 10)
    assert class_balance(torch.zeros(7, dtype=torch.long), 10)[0] == 0.0
    assert class_balance(torch.tensor([0, 1]), 4)[0] == pytest.approx(0.5)  # log 2 / log 4
    same = torch.ones(5, 3)
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine_distance(torch.eye(4)) == pytest.approx(1.0)
    features = torch.randn(9, 6, generator=torch.Generator().manual_seed(0))
    unit = nn.functional.normalize(features, dim=1)
    brute = [1 - float(unit[i] @ unit[j]) for i in range(9) for j in range(9) if i != j]
    assert mean_pairwise_cosine_distance(features) == pytest.approx(sum(brute) / len(brute), rel=1e-6)


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_bn_statistics_distance_is_zero_when_running_stats_match():
    torch.manual_seed(0)
    net = _BNNet().eval()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(20, dtype=torch.long)
    with torch.no_grad():
        act = net.conv(SPEC.normalize(images.float() / 255)).transpose(0, 1).flatten(1).double()
        net.bn.running_mean.copy_(act.mean(1))
        net.bn.running_var.copy_(act.var(1, unbiased=False))
    teacher = Teacher(net, SPEC)
    assert ev.synthetic_quality(teacher, images, labels, batch_size=6)["bn_stat_distance"] == pytest.approx(0, abs=1e-5)
    with torch.no_grad():
        net.bn.running_mean[0] += 1.0
    assert ev.synthetic_quality(teacher, images, labels)["bn_stat_distance"] == pytest.approx(1.0, abs=1e-4)


class _AuxNet(_BNNet):
    """A BatchNorm that runs only in train mode (GoogLeNet's auxiliary heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux_bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if self.training:
            h = h + self.aux_bn(h)
        return self.fc(h.mean((2, 3)))


def test_bn_statistics_distance_counts_only_the_batchnorms_that_ran():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(8, dtype=torch.long)
    plain, aux = _BNNet().eval(), _AuxNet().eval()
    aux.load_state_dict(plain.state_dict(), strict=False)
    expected = ev.synthetic_quality(Teacher(plain, SPEC), images, labels)["bn_stat_distance"]
    assert ev.synthetic_quality(Teacher(aux, SPEC), images, labels)["bn_stat_distance"] == pytest.approx(expected)


def test_synthetic_quality_of_a_set(tiny_teacher):
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = tiny_teacher.model(SPEC.normalize(images.float() / 255)).argmax(1)
    quality = ev.synthetic_quality(tiny_teacher, images, predicted)
    assert quality["teacher_accuracy"] == 1.0  # labels = the teacher's own predictions
    assert 0.1 <= quality["teacher_confidence"] <= 1.0
    assert sum(quality["class_histogram"]) == 30 and 0.0 <= quality["class_balance"] <= 1.0
    assert 0.0 <= quality["diversity"] <= 2.0 and quality["bn_stat_distance"] > 0
    no_bn = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval(), SPEC)
    assert ev.synthetic_quality(no_bn, images, predicted)["bn_stat_distance"] is None


# -- Frechet distance ----------------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    assert ev.frechet_distance(np.zeros(3), np.eye(3), np.array([1.0, 2.0, 2.0]), np.eye(3)) == pytest.approx(9.0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s1, s2
    assert ev.frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[9.0]])) == pytest.approx(2.0)


def test_trace_sqrt_product_matches_scipy():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) * 2 + 1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(linalg.sqrtm(s1 @ s2).real), rel=1e-8)
    few = np.cov(rng.normal(size=(3, 6)), rowvar=False)  # singular: fewer samples than dimensions
    assert math.isfinite(trace_sqrt_product(few, s2))


def test_feature_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift(tiny_teacher):
    g = torch.Generator().manual_seed(0)
    base = torch.randint(40, 180, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    assert ev.feature_frechet_distance(tiny_teacher, base, base) == pytest.approx(0.0, abs=1e-6)
    small = ev.feature_frechet_distance(tiny_teacher, base, base + 20)
    large = ev.feature_frechet_distance(tiny_teacher, base, base + 70)
    assert 0 < small < large
    mu, sigma = gaussian(torch.randn(50, 4, generator=g))
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    # a bare module with its input spec gives the same number
    assert ev.feature_frechet_distance(tiny_teacher.model, base, base + 20, tiny_teacher.input) == pytest.approx(small)
