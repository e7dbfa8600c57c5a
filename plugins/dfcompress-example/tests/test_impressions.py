"""Tests of the dfcompress-example plugin: registration through its entry point and the synthesizer.

Run from the repository root with ``.venv/bin/pytest plugins/dfcompress-example/tests``.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from dfcompress.components import InputSpec, Synthesizer, Teacher
from dfcompress.context import RunContext
from dfcompress.errors import ConfigError, Interrupted
from dfcompress_example.impressions import (
    ClassImpressions,
    find_classifier,
    off_label_weights,
    sample_dirichlet,
)

DIGITS = InputSpec(image_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,), num_classes=10)


@pytest.fixture(autouse=True)
def _few_threads():
    """The machines running this suite are small and shared: one intra-op thread is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_teacher() -> Teacher:
    """A BatchNorm-free CNN trained for a few seconds on scikit-learn's 8x8 digits (about 95 % accurate)."""
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x, y = DIGITS.normalize(pixels), torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:1400], order[1400:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        for batch in train[torch.randperm(len(train), generator=g)].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    torch.set_num_threads(threads)
    assert accuracy > 0.85, f"the digits teacher trained badly ({accuracy:.2f}); the tests below would mean nothing"
    return Teacher(model, DIGITS, "test:digits-cnn")


def make(teacher: Teacher, ctx: RunContext | None = None, **options) -> ClassImpressions:
    synth = ClassImpressions(ClassImpressions.Config(**options), ctx or RunContext())
    synth.setup(teacher)
    return synth


def run(synth: ClassImpressions, labels: torch.Tensor, seed: int):
    return synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(seed))


def test_registered_through_the_entry_point(monkeypatch):
    from dfcompress.plugins import build_registry, get_plugin_manager

    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", "example")
    registry = build_registry(get_plugin_manager())
    entry = registry.entry("synthesizers", "impressions")
    assert (entry.plugin, entry.package, entry.version) == ("example", "dfcompress-example", "0.1.0")
    assert registry.entry("synthesizers", "zskd") is entry
    assert registry.get("synthesizers", "example:impressions") is ClassImpressions
    assert issubclass(ClassImpressions, Synthesizer)


def test_entry_module_does_not_import_torch():
    code = "import sys, dfcompress_example; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "False"


def test_config_has_the_paper_s_options():
    """(Defaults, help and the rest of the contract: test_contract.py, with dfcompress.testing.)"""
    names = {f.name for f in dataclasses.fields(ClassImpressions.Config)}
    assert {"iterations", "lr", "temperature", "dirichlet_beta", "tv", "l2"} <= names


@pytest.mark.parametrize(
    "options",
    [{"iterations": -1}, {"lr": 0}, {"temperature": 0}, {"dirichlet_beta": -1}, {"label_mass": 0},
     {"label_mass": 1.5}, {"tv": -1}, {"jitter": -0.1}, {"jitter": 0.5}],
)
def test_invalid_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="impressions options"):
        ClassImpressions.Config(**options)


def test_batch_shape_range_and_labels(digits_teacher):
    labels = torch.tensor([3, 1, 4, 1, 5])
    batch = run(make(digits_teacher, iterations=3), labels, seed=0)
    assert batch.images.shape == (5, 1, 8, 8)
    assert batch.images.dtype == torch.float32 and batch.images.device.type == "cpu"
    assert 0.0 <= batch.images.min().item() and batch.images.max().item() <= 1.0
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == labels.tolist()
    assert {"fit", "tv", "l2", "agreement", "iterations", "seconds"} <= set(batch.metrics)


def test_same_seed_same_images_other_seed_other_images(digits_teacher):
    labels = torch.arange(10)
    torch.manual_seed(123)  # the global RNG must not matter, only the generator
    a = run(make(digits_teacher, iterations=5), labels, seed=7)
    torch.manual_seed(456)
    b = run(make(digits_teacher, iterations=5), labels, seed=7)
    c = run(make(digits_teacher, iterations=5), labels, seed=8)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("beta", [20.0, 0.0], ids=["dirichlet", "cross-entropy"])
def test_teacher_agreement_rises_well_above_chance(digits_teacher, beta):
    labels = torch.arange(10).repeat(2)
    before = run(make(digits_teacher, iterations=0, dirichlet_beta=beta), labels, seed=0)
    after = run(make(digits_teacher, iterations=40, lr=0.1, dirichlet_beta=beta), labels, seed=0)
    with torch.no_grad():  # judged on the returned pixels, as a student would see them
        predicted = digits_teacher.model(DIGITS.normalize(after.images)).argmax(1)
    agreement = (predicted == labels).float().mean().item()
    assert agreement == pytest.approx(after.metrics["agreement"])
    assert before.metrics["agreement"] < 0.35  # noise: about chance (0.1)
    assert agreement >= 0.7, f"only {agreement:.2f} of the impressions are classified as their label"


def test_works_on_a_batchnorm_teacher():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    teacher = Teacher(model, InputSpec(image_size=(32, 32), num_classes=10), "timm:test_resnet")
    synth = make(teacher, iterations=2)
    assert synth.off_label.shape == (10, 10)  # found timm's classifier head for the class similarity
    batch = run(synth, torch.tensor([0, 9]), seed=0)
    assert batch.images.shape == (2, 3, 32, 32)
    assert not any(p.grad is not None for p in model.parameters())


def test_stop_request_interrupts(digits_teacher):
    ctx = RunContext()
    ctx.stop_requested = True
    with pytest.raises(Interrupted, match="stopped at step 0"):
        run(make(digits_teacher, ctx, iterations=10), torch.tensor([1]), seed=0)


def test_teacher_parameters_are_left_alone(digits_teacher):
    before = [p.clone() for p in digits_teacher.model.parameters()]
    run(make(digits_teacher, iterations=3), torch.tensor([2, 7]), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, digits_teacher.model.parameters()))
    assert all(p.grad is None for p in digits_teacher.model.parameters())


def test_dirichlet_sampler_is_deterministic_and_has_the_right_mean():
    alpha = torch.tensor([[16.0, 2.0, 2.0], [0.5, 0.3, 0.2]]).repeat(2000, 1)
    a = sample_dirichlet(alpha, torch.Generator().manual_seed(0))
    b = sample_dirichlet(alpha, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(1), torch.ones(len(a), dtype=a.dtype))
    expected = (alpha / alpha.sum(1, keepdim=True))[:2].to(a.dtype)
    assert torch.allclose(a[0::2].mean(0), expected[0], atol=0.02)
    assert torch.allclose(a[1::2].mean(0), expected[1], atol=0.03)


def test_soft_targets_centre_on_the_label(digits_teacher):
    synth = make(digits_teacher, label_mass=0.8, dirichlet_beta=50.0)
    labels = torch.arange(10).repeat(50)
    targets = synth.soft_targets(labels, torch.Generator().manual_seed(0))
    assert targets.shape == (500, 10)
    assert (targets.argmax(1) == labels).float().mean().item() > 0.95
    assert targets[torch.arange(500), labels].mean().item() == pytest.approx(0.8, abs=0.03)


def test_class_similarity_follows_the_classifier_weights():
    head = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1.0, 0]]))
    weights = off_label_weights(head, 3)
    assert torch.allclose(weights.sum(1), torch.ones(3))
    assert torch.equal(weights.diagonal(), torch.zeros(3))
    assert weights[0, 1] > weights[0, 2]  # class 1 resembles class 0, class 2 does not
    assert find_classifier(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), head), 3) is head
    assert find_classifier(nn.Sequential(nn.Conv2d(1, 3, 1)), 3) is None
    assert torch.allclose(off_label_weights(None, 3), torch.tensor([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]))
