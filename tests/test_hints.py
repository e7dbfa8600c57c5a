"""Feature hints (kd's feature_weight): the term against a hand computation, the automatic choice of layers,
the errors, and that training with it pulls a pruned-style student's features toward the teacher's."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from dfcompress.components import InputSpec, Teacher
from dfcompress.context import RunContext
from dfcompress.distill import FeatureHints, KnowledgeDistillation, hint_loss
from dfcompress.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hint_loss_matches_a_hand_computation():
    s1, t1 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])  # mse (1 + 4) / 2 = 2.5; energy 16 / 2 = 8
    s2, t2 = torch.tensor([[3.0]]), torch.tensor([[1.0]])  # mse 4; energy 1
    assert hint_loss([s1, s2], [t1, t2]).item() == pytest.approx((2.5 / 8 + 4.0) / 2)
    assert hint_loss([t1], [t1]).item() == 0.0
    with pytest.raises(ValueError):
        hint_loss([s1], [])


class Block(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(channels, hidden, 3, padding=1), nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


def _net(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                         nn.Sequential(Block(4, hidden), Block(4, hidden)),  # a stage: its output is block 1's
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_auto_takes_the_blocks_with_equal_outputs_once_each():
    teacher, student = _net(8, 0), _net(2, 1)  # "pruned": inner width 2, the residual stream keeps 4 channels
    hints = FeatureHints(teacher, student, "auto")
    with hints.capture():
        with torch.no_grad():
            teacher(torch.randn(2, 3, 8, 8))
        student(torch.randn(2, 3, 8, 8))
        value = hints.loss()
    assert hints.selected == ["1.0", "1.1"]  # "1" (the stage) gives block 1's tensor: counted once
    assert hints.hooked == ["1.0", "1.1"]  # the unpicked modules' hooks are removed after the choice
    assert value.requires_grad and value.item() > 0
    with torch.no_grad():  # outside capture() nothing is recorded
        teacher(torch.randn(2, 3, 8, 8))
    assert hints._outputs == {"t": {}, "s": {}}
    hints.remove()


def test_named_layers_must_exist_and_match():
    teacher, student = _net(8, 0), _net(2, 1)
    with pytest.raises(ConfigError, match="do not both have"):
        FeatureHints(teacher, student, "1.0, nope")
    hints = FeatureHints(teacher, student, "1.0.conv1")  # 8 channels in the teacher, 2 in the student
    with hints.capture():
        with torch.no_grad():
            teacher(torch.randn(1, 3, 8, 8))
        student(torch.randn(1, 3, 8, 8))
        with pytest.raises(ConfigError, match="equal shapes"):
            hints.loss()
    with pytest.raises(ConfigError, match="no composite module"):
        FeatureHints(nn.Linear(2, 2), nn.Linear(2, 2), "auto")


def _teacher(model: nn.Module) -> Teacher:
    spec = InputSpec(image_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=10)
    return Teacher(model=model.eval().requires_grad_(False), input=spec)


def test_training_with_hints_pulls_the_features_toward_the_teacher():
    teacher = _teacher(_net(8, 0))
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(32) % 10
    start = _net(2, 1)

    def hint_after(weight: float) -> float:
        student = copy.deepcopy(start)
        config = dataclasses.replace(KnowledgeDistillation.Config(), epochs=6, batch_size=8, lr=0.05,
                                     augment=False, feature_weight=weight)
        KnowledgeDistillation(config, RunContext(seed=0)).fit(student, teacher, images, labels)
        probe = FeatureHints(teacher.model, student, "auto")
        x = teacher.input.normalize(images.float() / 255)
        with probe.capture(), torch.no_grad():
            teacher.model(x)
            student(x)
            value = probe.loss().item()
        probe.remove()
        return value

    assert hint_after(1.0) < 0.5 * hint_after(0.0)


def test_feature_weight_must_not_be_negative():
    config = dataclasses.replace(KnowledgeDistillation.Config(), feature_weight=-1.0)
    with pytest.raises(ConfigError, match="feature_weight"):
        KnowledgeDistillation(config, RunContext(seed=0)).check_options()
