"""Knowledge distillation: the loss formula, resumable training, interruption, augmentation."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from dfcompress.components import Distiller, InputSpec, Teacher
from dfcompress.context import RunContext
from dfcompress.distill import KnowledgeDistillation, kd_loss, random_crop_flip
from dfcompress.errors import ConfigError, Interrupted, NonFiniteLossError

STUDENT_LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
TEACHER_LOGITS = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_kd(student, teacher, temperature):
    """The formula in plain Python: T^2 * mean over rows of sum_k p_t,k (log p_t,k - log p_s,k)."""
    def softmax(row):
        e = [math.exp(v / temperature) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = softmax(s_row), softmax(t_row)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(p_s, p_t))
    return temperature ** 2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_matches_the_formula(temperature):
    value = kd_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), temperature)
    assert value.item() == pytest.approx(_reference_kd(STUDENT_LOGITS, TEACHER_LOGITS, temperature), rel=1e-6)


def test_kd_loss_golden_value():
    # pinned: batchmean KL at T=2 times T^2 (a "mean" reduction would give a third of this)
    assert kd_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), 2.0).item() == pytest.approx(
        1.3151210800358164, rel=1e-6)


def test_kd_loss_is_zero_for_equal_distributions_and_has_gradients():
    logits = torch.tensor(STUDENT_LOGITS, requires_grad=True)
    assert kd_loss(logits, logits.detach() + 5.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    kd_loss(logits, torch.tensor(TEACHER_LOGITS), 4.0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# -- training -------------------------------------------------------------------------------------------

def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 10))


def _data(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _kd(ctx: RunContext | None = None, **options) -> KnowledgeDistillation:
    config = dataclasses.replace(KnowledgeDistillation.Config(), **{"epochs": 3, "batch_size": 8, **options})
    return KnowledgeDistillation(config, ctx or RunContext(seed=5))


class _StopAfter:
    """A forward hook that sets ``ctx.stop_requested`` after ``steps`` training forwards (a Ctrl-C)."""

    def __init__(self, ctx: RunContext, steps: int) -> None:
        self.ctx, self.steps, self.calls = ctx, steps, 0

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        if self.calls >= self.steps:
            self.ctx.stop_requested = True


@pytest.mark.parametrize("stop_after,where", [(6, "epoch 3 of 3 (step 0 of 3)"), (4, "epoch 2 of 3 (step 1 of 3)")],
                         ids=["after-epoch-2", "mid-epoch-2"])
def test_interrupted_and_resumed_training_gives_identical_weights(tiny_teacher, tmp_path, stop_after, where):
    images, labels = _data()  # 3 steps per epoch
    reference = _student()
    metrics = _kd().fit(reference, tiny_teacher, images, labels, checkpoint=tmp_path / "straight.pt")
    assert metrics["epochs"] == 3 and math.isfinite(metrics["loss"]) and metrics["images_per_s"] > 0

    ctx = RunContext(seed=5)
    student = _student()
    handle = student.register_forward_hook(_StopAfter(ctx, stop_after))
    path = tmp_path / "resumed.pt"
    with pytest.raises(Interrupted) as info:
        _kd(ctx).fit(student, tiny_teacher, images, labels, checkpoint=path)
    handle.remove()
    assert str(info.value) == f"distillation interrupted at {where}"
    assert path.exists() and str(path) in info.value.resume_hint

    resumed = _student(seed=99)  # different initial weights: everything must come from the checkpoint
    torch.manual_seed(1234)  # and so must the global RNG state (dropout)
    _kd(RunContext(seed=5)).fit(resumed, tiny_teacher, images, labels, checkpoint=path)
    expected, got = reference.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_training_changes_the_student_and_lowers_the_loss(tiny_teacher):
    images, labels = _data(32)
    student = _student()
    before = [p.detach().clone() for p in student.parameters()]
    metrics = _kd(epochs=4, lr=0.1).fit(student, tiny_teacher, images, labels)
    assert metrics["loss"] < metrics["first_epoch_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert metrics["lr_final"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero over the epochs


def test_seed_controls_the_run(tiny_teacher):
    images, labels = _data()

    def run(seed: int) -> torch.Tensor:
        student = _student()
        torch.manual_seed(0)
        _kd(RunContext(seed=seed), epochs=1).fit(student, tiny_teacher, images, labels)
        return student[-1].weight.detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_hard_weight_one_ignores_the_teacher(tiny_teacher):
    images, labels = _data()
    other = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval(), tiny_teacher.input)

    def run(teacher: Teacher, hard_weight: float) -> torch.Tensor:
        student = _student()
        torch.manual_seed(0)
        _kd(epochs=1, hard_weight=hard_weight).fit(student, teacher, images, labels)
        return student[-1].weight.detach().clone()

    assert torch.equal(run(tiny_teacher, 1.0), run(other, 1.0))
    assert not torch.equal(run(tiny_teacher, 0.0), run(other, 0.0))


def test_interruption_without_checkpoint_says_progress_is_lost(tiny_teacher):
    ctx = RunContext(stop_requested=True)
    with pytest.raises(Interrupted) as info:
        _kd(ctx).fit(_student(), tiny_teacher, *_data())
    assert "no checkpoint" in info.value.resume_hint


def test_checkpoint_of_another_run_is_refused(tiny_teacher, tmp_path):
    images, labels = _data()
    path = tmp_path / "ck.pt"
    _kd(epochs=1).fit(_student(), tiny_teacher, images, labels, checkpoint=path)
    with pytest.raises(ConfigError, match="options"):
        _kd(epochs=1, lr=0.01).fit(_student(), tiny_teacher, images, labels, checkpoint=path)
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_non_finite_loss_is_reported_with_a_hint(tiny_teacher):
    class NaNTeacher(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"))

    ctx = RunContext(log_every=1)
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        _kd(ctx).fit(_student(), Teacher(NaNTeacher(), tiny_teacher.input), *_data())


@pytest.mark.parametrize("options", [{"temperature": 0.0}, {"hard_weight": 1.5}, {"epochs": 0}, {"batch_size": 1}])
def test_invalid_options_are_config_errors(tiny_teacher, options):
    with pytest.raises(ConfigError):
        _kd(**options).fit(_student(), tiny_teacher, *_data())


# -- augmentation ----------------------------------------------------------------------------------------

def test_random_crop_pads_black_in_pixel_space_and_is_seeded():
    pixels = torch.rand(16, 3, 8, 8) * 0.5 + 0.5  # no black pixel in the input
    out = random_crop_flip(pixels, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    again = random_crop_flip(pixels, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape and torch.equal(out, again)
    assert (out == 0).any()  # some crops reach into the zero border
    for crop, image in zip(out, pixels):  # every crop is a shifted window of its image
        rows = (crop != 0).any(0).any(1).nonzero().flatten()
        cols = (crop != 0).any(0).any(0).nonzero().flatten()
        window = crop[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        h, w = window.shape[1:]
        shifted = [image[:, i:i + h, j:j + w] for i in (0, 8 - h) for j in (0, 8 - w)]
        assert any(torch.equal(window, s) for s in shifted)


def test_random_crop_mean_fill_is_zero_after_normalisation():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    pixels = torch.rand(16, 3, 8, 8)
    out = random_crop_flip(pixels, padding=3, flip=False, generator=torch.Generator().manual_seed(0), fill=mean)
    black = random_crop_flip(pixels, padding=3, flip=False, generator=torch.Generator().manual_seed(0))
    border = black == 0  # the same offsets: where the black version shows padding
    assert border.any()
    normalised = (out - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalised[border], torch.zeros(()), atol=1e-6)
    assert torch.equal(out[~border], black[~border])


def test_flip_mirrors_about_half_the_images():
    pixels = torch.rand(200, 1, 4, 4)
    out = random_crop_flip(pixels, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, p.flip(2)) for o, p in zip(out, pixels)])
    same = torch.tensor([torch.equal(o, p) for o, p in zip(out, pixels)])
    assert bool((flipped | same).all()) and 60 < int(flipped.sum()) < 140


def test_registered_distiller_follows_the_contract():
    from dfcompress.plugins import get_registry

    cls = get_registry().get("distillers", "kd")
    assert cls is KnowledgeDistillation and issubclass(cls, Distiller) and cls.summary
    config = cls.Config()
    assert config.__dataclass_params__.frozen
    assert (config.temperature, config.hard_weight, config.epochs, config.batch_size, config.lr) == (4.0, 0.0, 60, 128, 0.05)
    assert all(f.metadata.get("help") for f in dataclasses.fields(config))
    assert InputSpec().num_classes == 10
