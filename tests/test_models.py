"""Model specs: parsing, every source kind with tiny models, teachers, and the pretrained CIFAR ResNets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.errors import ConfigError, UnknownComponentError
from dfcompress.models import RANDOM_WEIGHTS, create_model, default_eval_data, load_teacher, parse_spec

from conftest import shared_path


def test_registry_resolves_every_source():
    from dfcompress.models.sources import CifarSource, DemoSource, TimmSource, TorchvisionSource
    from dfcompress.plugins import get_registry

    registry = get_registry()
    assert registry.get("teachers", "timm") is TimmSource
    assert registry.get("teachers", "torchvision") is TorchvisionSource
    assert registry.get("teachers", "cifar") is CifarSource
    assert registry.get("teachers", "demo") is DemoSource


@pytest.mark.parametrize(
    "spec, source, name",
    [
        ("timm:resnet18", "timm", "resnet18"),
        ("timm:resnet18.a1_in1k", "timm", "resnet18.a1_in1k"),
        ("cifar:resnet56", "cifar", "resnet56"),
        ("torchvision:resnet18", "torchvision", "resnet18"),
        ("demo", "demo", "teacher"),
        ("demo:small", "demo", "small"),
    ],
)
def test_parse_spec(spec, source, name):
    parsed = parse_spec(spec)
    assert (parsed.source.name, parsed.name) == (source, name)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("timn:resnet18", "Did you mean 'timm:resnet18'?"),
        ("cifar:resnet65", "Known: resnet20, resnet32, resnet44, resnet56, resnet110"),
        ("cifar:resnt56", "Did you mean 'cifar:resnet56'"),
        ("timm:resnt18", "Did you mean 'timm:resnet18'"),
        ("resnet18", "a model spec is <source>:<name>"),
        ("demo:tiny", "Known: teacher, small"),
    ],
)
def test_unknown_specs_name_the_nearest(spec, needle):
    with pytest.raises(UnknownComponentError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("spec", ["timm", "cifar", ""])
def test_spec_without_a_name(spec):
    with pytest.raises(ConfigError, match="needs a model name|empty model spec"):
        parse_spec(spec)


def test_timm_model_and_input_spec():
    model, spec = create_model("timm:test_resnet", num_classes=10, image_size=32)
    assert spec.image_size == (32, 32) and spec.channels == 3 and spec.num_classes == 10
    assert spec.mean == (0.5, 0.5, 0.5)  # from the model's pretrained_cfg
    assert model(spec.example_input(2)).shape == (2, 10)
    _, default = create_model("timm:test_resnet")
    assert default.image_size == (160, 160) and default.num_classes == 1000


def test_torchvision_model_builds():
    model, spec = create_model("torchvision:resnet18", num_classes=7)
    assert spec.image_size == (224, 224) and spec.num_classes == 7
    assert spec.mean == (0.485, 0.456, 0.406)
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_cifar_model_builds():
    model, spec = create_model("cifar:resnet20")
    assert spec.image_size == (32, 32) and spec.num_classes == 10
    assert spec.std == (0.229, 0.224, 0.225)
    assert model(spec.example_input(2)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 269722  # He et al.: 0.27 M
    _, spec100 = create_model("cifar:resnet20", num_classes=100)
    assert spec100.num_classes == 100


@pytest.mark.parametrize("spec", ["demo", "demo:small"])
def test_demo_models_build(spec):
    model, input_spec = create_model(spec)  # random init: create_model never trains
    assert input_spec.image_size == (16, 16) and input_spec.channels == 1
    x = input_spec.example_input(3)
    assert model(x).shape == (3, 10)
    sizes = [f.shape[-1] for f in model.forward_features(x)]
    assert sizes == [16, 8, 4]  # a pyramid of three resolutions
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_demo_small_is_smaller():
    teacher, _ = create_model("demo")
    student, _ = create_model("demo:small")
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 4


def test_teacher_without_weights_is_refused():
    with pytest.raises(ConfigError, match="teacher cifar:resnet20 needs --weights PATH"):
        load_teacher("cifar:resnet20")


def test_random_teacher_is_frozen():
    teacher = load_teacher("cifar:resnet20", weights=RANDOM_WEIGHTS)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.spec == "cifar:resnet20" and teacher.input.num_classes == 10


def test_default_eval_data():
    assert default_eval_data("demo") == "digits:test"
    assert default_eval_data("demo:small") == "digits:test"
    assert default_eval_data("cifar:resnet20") is None


@torch.inference_mode()
def top1(teacher, data, batch_size: int = 250) -> float:
    """Top-1 in percent. One intra-op thread: on the shared 2-core CI machine two threads fight the other
    jobs and ran 2-5x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        correct = 0
        for start in range(0, len(data), batch_size):
            logits = teacher.model(data.normalized(teacher.input, start, start + batch_size))
            correct += int((logits.argmax(1) == data.labels[start : start + batch_size]).sum())
    finally:
        torch.set_num_threads(threads)
    return 100.0 * correct / len(data)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, file, expected",
    [("cifar:resnet20", "resnet20-12fca82f.th", 81.03), ("cifar:resnet56", "resnet56-4bfd9763.th", 83.20)],
)
def test_pretrained_cifar_resnets(spec, file, expected):
    from dfcompress.data.real import load_data

    weights = shared_path("models", file)
    archive = shared_path("data", "cifar10-jpeg.tar.gz")
    teacher = load_teacher(spec, weights=weights)
    data = load_data(f"cifar10:{archive}:test", teacher.input, teacher=spec)
    assert len(data) == 10000
    assert abs(top1(teacher, data) - expected) <= 0.2
