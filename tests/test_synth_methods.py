"""The synthesizers: the registry contract, DeepInversion's best-image bookkeeping, NaturalInversion's
one-to-one generator and ACS, the seeded statistics file and loss, and the teacher checks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from dfcompress.components import InputSpec, Teacher
from dfcompress.context import RunContext
from dfcompress.errors import ConfigError, UnsupportedTeacherError
from dfcompress.synth.labels import make_labels
from dfcompress.synth.seeded_stats import ClassStats, class_conditional_loss, collect_stats


class NoBNNet(nn.Module):
    """A BN-free CNN (e.g. a BN-fused deployment model)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _frozen(model: nn.Module, spec: str) -> Teacher:
    torch.manual_seed(0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, InputSpec(image_size=(32, 32), num_classes=10), spec)


@pytest.fixture
def bn_free_teacher() -> Teacher:
    torch.manual_seed(0)
    return _frozen(NoBNNet(), "test:nobn")


@pytest.fixture
def stats_file(tiny_teacher, tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(20, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = make_labels(20, 10)
    stats = collect_stats(tiny_teacher, images, labels, layers="Conv2d")
    # the same images as an image folder: the guides of needs_guides methods that take images (imagine)
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = tmp_path / "guides" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return stats.save(tmp_path / "stats.safetensors")


def _make(entry_cls, ctx, stats_path, **extra):
    names = {f.name for f in dataclasses.fields(entry_cls.Config)}
    guides = str(Path(stats_path).parent / "guides")
    opts = {k: v for k, v in {"iterations": 2, "stats": str(stats_path), "guides": guides, "d_width": 8,
                              **extra}.items() if k in names}
    return entry_cls(entry_cls.Config(**opts), ctx)


def test_every_registered_synthesizer_honours_the_contract(tiny_teacher, stats_file):
    from dfcompress.plugins import get_registry

    entries = get_registry().list("synthesizers")
    assert {"noise", "deepinversion", "natural", "seeded"} <= {e.name for e in entries}
    ctx = RunContext()
    labels = torch.tensor([0, 3, 3, 9])
    for entry in entries:
        cls = entry.load()
        assert cls.name and cls.summary and dataclasses.is_dataclass(cls.Config)
        for f in dataclasses.fields(cls.Config):
            assert f.metadata.get("help"), f"{cls.name}.{f.name} has no help"
            assert f.default is not dataclasses.MISSING
        # small generator for natural (the paper's 128-wide one is exercised in test_synth_pyramid)
        synth = _make(cls, ctx, stats_file, generator_width=16, latent_dim=64)
        synth.setup(tiny_teacher)
        try:
            a = synth.synthesize_batch(labels, generator=ctx.generator(1))
            if cls.stateful:  # its state moves on with every batch: a seed reproduces a batch from the same state
                synth.close()
                synth = _make(cls, ctx, stats_file, generator_width=16, latent_dim=64)
                synth.setup(tiny_teacher)
            b = synth.synthesize_batch(labels, generator=ctx.generator(1))
            c = synth.synthesize_batch(labels, generator=ctx.generator(2))
        finally:
            synth.close()
        assert a.images.shape == (4, 3, 32, 32) and a.images.dtype == torch.float32, cls.name
        assert a.images.device.type == "cpu" and a.labels.tolist() == [0, 3, 3, 9]
        assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
        assert torch.equal(a.images, b.images), f"{cls.name} is not reproducible for a seed"
        assert not torch.equal(a.images, c.images), f"{cls.name} ignores the seed"
        assert 0.0 <= a.metrics["teacher_acc"] <= 1.0 and "seconds" in a.metrics
        if cls.name in ("deepinversion", "natural", "seeded"):
            assert a.metrics["iterations"] == 2 and {"loss", "loss_ce", "loss_bn"} <= set(a.metrics)
            assert a.metrics["work_teacher"] == 4 * 2 and a.metrics["work_student"] == 0
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_teacher.model.modules()), cls.name
        assert all(not p.requires_grad for p in tiny_teacher.model.parameters()) and not tiny_teacher.model.training


@pytest.mark.parametrize("name", ["deepinversion", "natural"])
def test_bn_methods_refuse_bn_free_teacher_and_point_to_seeded(name, bn_free_teacher):
    from dfcompress.plugins import get_registry

    synth = get_registry().get("synthesizers", name)()
    with pytest.raises(UnsupportedTeacherError, match="--synth seeded"):
        synth.setup(bn_free_teacher)


def test_seeded_accepts_bn_free_teacher(bn_free_teacher, tmp_path):
    from dfcompress.synth.seeded import SeededInversion

    images = torch.rand(10, 3, 32, 32)
    path = collect_stats(bn_free_teacher, images, make_labels(10, 10)).save(tmp_path / "s.safetensors")
    synth = SeededInversion(SeededInversion.Config(stats=str(path), iterations=3), RunContext())
    synth.setup(bn_free_teacher)
    batch = synth.synthesize_batch(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    assert batch.images.shape == (2, 3, 32, 32) and batch.metrics["loss_cc"] > 0


def test_seeded_requires_a_stats_file(tiny_teacher, tmp_path):
    from dfcompress.synth.seeded import SeededInversion

    with pytest.raises(ConfigError, match="stats collect"):
        SeededInversion().setup(tiny_teacher)
    with pytest.raises(ConfigError, match="does not exist"):
        SeededInversion(SeededInversion.Config(stats=str(tmp_path / "none.safetensors"))).setup(tiny_teacher)


def test_deepinversion_keeps_the_lowest_loss_images_as_a_copy(tiny_teacher, monkeypatch):
    """Record every iterate and its loss; the returned images must be the argmin iterate, not the last."""
    from dfcompress.synth import deepinversion as di
    from dfcompress.synth.inversion import BestSnapshot

    seen: list[tuple[float, torch.Tensor]] = []
    original = BestSnapshot.update

    def spy(self, loss, images, terms):
        seen.append((float(loss.detach()), images.detach().clone()))
        original(self, loss, images, terms)
        assert self.images is not images  # a copy, never the optimised tensor itself

    monkeypatch.setattr(BestSnapshot, "update", spy)
    # a large lr makes the loss jump around, so the best iterate is usually not the last
    synth = di.DeepInversion(di.DeepInversion.Config(iterations=8, lr=2.0), RunContext())
    synth.setup(tiny_teacher)
    batch = synth.synthesize_batch(torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(4))
    losses = [loss for loss, _ in seen]
    best = min(range(len(losses)), key=losses.__getitem__)
    want = tiny_teacher.input.denormalize(seen[best][1]).clamp(0, 1)
    assert torch.allclose(batch.images, want)
    assert abs(batch.metrics["loss"] - losses[best]) < 1e-3 * max(1.0, abs(losses[best]))
    assert best != len(losses) - 1 or not torch.allclose(seen[-1][1], seen[best][1])


def test_deepinversion_adi_uses_the_student_and_leaves_the_term_out_without_one(tiny_teacher):
    from dfcompress.synth.deepinversion import DeepInversion

    synth = DeepInversion(DeepInversion.Config(iterations=2, adi_scale=0.2), RunContext())
    synth.setup(tiny_teacher)
    # an online warm-up round passes no student: the competition term is left out
    alone = synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert "loss_adi" not in alone.metrics and alone.metrics["work_student"] == 0
    student = NoBNNet().train()
    batch = synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), student=student)
    assert 0.0 <= batch.metrics["loss_adi"] <= 1.0
    assert batch.metrics["work_teacher"] == batch.metrics["work_student"] == 2 * 2
    assert student.training and all(p.grad is None and p.requires_grad for p in student.parameters())


def test_natural_alpha_shape_and_one_to_one_reinitialisation(tiny_teacher, monkeypatch):
    from dfcompress.synth import natural

    alphas: list[torch.Tensor] = []
    nets: list[int] = []
    original = natural.NaturalInversion._render

    def spy(self, nets_, z, labels, alpha, bn, taps, *rest):
        alphas.append(alpha.detach().clone())
        nets.append(id(nets_))
        return original(self, nets_, z, labels, alpha, bn, taps, *rest)

    monkeypatch.setattr(natural.NaturalInversion, "_render", spy)
    synth = natural.NaturalInversion(natural.NaturalInversion.Config(iterations=2, generator_width=16, latent_dim=32), RunContext())
    synth.setup(tiny_teacher)
    labels = torch.tensor([0, 1, 2, 3, 4])
    synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(0))
    w0 = [p.detach().clone() for p in synth._build_nets(torch.Generator().manual_seed(0))[0].parameters()]
    synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(1))
    assert alphas[0].shape == (5, 3, 1, 1)
    assert abs(float(alphas[0].mean()) - 5.0) < 1.5  # N(5, 1) initialisation
    assert nets[0] != nets[2]  # a new generator/FTP for the second batch
    assert synth._nets is None  # discarded after the batch
    assert w0 and all(p.requires_grad for p in synth._build_nets(torch.Generator().manual_seed(0))[0].parameters())


def test_natural_without_one_to_one_keeps_the_generator(tiny_teacher):
    from dfcompress.synth.natural import NaturalInversion

    cfg = NaturalInversion.Config(iterations=2, generator_width=16, latent_dim=32, one_to_one=False, ftp=False, acs=False)
    synth = NaturalInversion(cfg, RunContext())
    synth.setup(tiny_teacher)
    synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    first = synth._nets
    weights = [p.detach().clone() for p in first.parameters()]
    synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(1))
    assert synth._nets is first
    assert any(not torch.equal(a, b) for a, b in zip(weights, first.parameters()))  # still training
    synth.close()


def test_stats_file_round_trip_and_zero_loss_at_target(tiny_teacher, tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 5, 5, 5, 5, 5])
    stats = collect_stats(tiny_teacher, images, labels, layers="re:^layer[1-4]$", batch_size=5)
    assert stats.layers == ["layer1", "layer2", "layer3", "layer4"]
    assert stats.counts.tolist() == [3, 4, 0, 0, 0, 5, 0, 0, 0, 0]
    path = stats.save(tmp_path / "s.safetensors")
    loaded = ClassStats.load(path)
    assert loaded.layers == stats.layers and torch.equal(loaded.counts, stats.counts)
    assert loaded.metadata["teacher"] == "timm:test_resnet" and loaded.metadata["counts_per_class"][5] == 5
    for name in stats.layers:
        assert torch.equal(loaded.mean[name], stats.mean[name]) and torch.equal(loaded.var[name], stats.var[name])
    # hand check of one layer: pooled per-class mean/variance over images and positions
    feats = {}
    handle = tiny_teacher.model.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("x", o))
    with torch.no_grad():
        tiny_teacher.model(tiny_teacher.input.normalize(images))
    handle.remove()
    cls1 = feats["x"][3:7].double()
    assert torch.allclose(loaded.mean["layer2"][1].double(), cls1.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(loaded.var["layer2"][1].double(), cls1.var((0, 2, 3), unbiased=False), atol=1e-4)
    # the loss is zero when the batch IS the data the statistics were collected on, and positive otherwise
    outputs = {}
    hooks = [getattr(tiny_teacher.model, n).register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in stats.layers]
    classes = torch.tensor([0, 1, 5])
    with torch.no_grad():
        tiny_teacher.model(tiny_teacher.input.normalize(images))
        zero = class_conditional_loss(outputs, loaded, labels, classes)
        tiny_teacher.model(tiny_teacher.input.normalize(images.flip(0)))
        other = class_conditional_loss(outputs, loaded, labels, classes)
    for h in hooks:
        h.remove()
    assert float(zero) < 1e-3 and float(other) > 0.1


def test_collect_stats_augmented_single_seed(tiny_teacher):
    image = torch.rand(1, 3, 32, 32)
    stats = collect_stats(tiny_teacher, image, torch.tensor([7]), layers="re:^layer1$", augment=4)
    assert stats.counts[7] == 5 and stats.metadata["augment"] == 4
    plain = collect_stats(tiny_teacher, image, torch.tensor([7]), layers="re:^layer1$")
    assert not torch.allclose(stats.var["layer1"][7], plain.var["layer1"][7])


def test_stats_command_does_not_import_torch_at_import_time():
    import subprocess
    import sys

    code = "import sys, dfcompress.commands.stats as m; assert 'torch' not in sys.modules; print(m.stats.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "stats"


def test_natural_competition_term_uses_the_student_without_touching_it(tiny_teacher):
    import copy

    import torch

    from dfcompress.context import RunContext
    from dfcompress.synth.natural import NaturalInversion, NaturalInversionConfig

    student = copy.deepcopy(tiny_teacher.model).train()
    for p in student.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    synth = NaturalInversion(NaturalInversionConfig(iterations=2, adi_scale=0.2), RunContext())
    synth.setup(tiny_teacher)
    labels = torch.arange(4)
    alone = synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(0))  # warm-up: no term
    assert "loss_adi" not in alone.metrics and alone.metrics["work_student"] == 0
    batch = synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(0), student=student)
    synth.close()
    assert "loss_adi" in batch.metrics and 0.0 <= batch.metrics["loss_adi"] <= 1.0
    # 4 images x 2 steps: teacher forward + backward, student forward + backward, the FTP's feature pass
    assert batch.metrics["work_teacher"] == batch.metrics["work_student"] == batch.metrics["work_teacher_forward"] == 8
    assert student.training and all(p.requires_grad and p.grad is None for p in student.parameters())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_natural_init_schemes_and_pre_jitter(tiny_teacher):
    from dfcompress.errors import ConfigError
    from dfcompress.synth import natural
    from dfcompress.synth.natural_nets import ConditionalGenerator, reset_parameters

    gen = ConditionalGenerator(32, 10, 3, (16, 16), 16)
    stds = {}
    for scheme in ("pytorch", "kaiming"):
        reset_parameters(gen, torch.Generator().manual_seed(0), scheme)
        stds[scheme] = gen.conv_out.weight.std().item()
        assert (gen.conv_out.bias == 0).all().item() is (scheme == "kaiming")
        # the reference code re-initialises the convolutions only: the Linear layer keeps PyTorch's default
        assert abs(gen.fc.weight.std().item() / (1 / (3 * gen.fc.in_features)) ** 0.5 - 1) < 0.05
        assert not (gen.fc.bias == 0).all()
    # He normal for ReLU: std sqrt(2 / fan_in); PyTorch's default: U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    fan_in = gen.conv_out.weight[0].numel()
    assert abs(stds["kaiming"] / (2 / fan_in) ** 0.5 - 1) < 0.15
    assert abs(stds["pytorch"] / (1 / (3 * fan_in)) ** 0.5 - 1) < 0.15
    with pytest.raises(ValueError, match="unknown initialisation"):
        reset_parameters(gen, torch.Generator(), "xavier")
    with pytest.raises(ConfigError, match="init must be one of"):
        natural.NaturalInversion(natural.NaturalInversion.Config(init="xavier"), RunContext()).setup(tiny_teacher)

    labels = torch.tensor([0, 1, 2, 3])
    images = {}
    for pre in (False, True):
        cfg = natural.NaturalInversion.Config(iterations=1, generator_width=16, latent_dim=32, pre_jitter=pre,
                                              init="kaiming", jitter=3)
        synth = natural.NaturalInversion(cfg, RunContext())
        synth.setup(tiny_teacher)
        images[pre] = synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(1)).images
    nets, _ = synth._build_nets(torch.Generator().manual_seed(0))
    assert (nets.generator.conv_out.bias == 0).all()
    assert not (nets.ftp.out_conv.bias == 0).all()  # init=kaiming leaves the FTP at PyTorch's default
    # same seed, same nets: only the jitter of G(z|y) before the FTP differs
    assert not torch.allclose(images[False], images[True])


@pytest.mark.parametrize("name", ["deepinversion", "natural", "seeded"])
def test_inversion_loop_reports_every_step_and_the_values_every_log_every(name, tiny_teacher, stats_file):
    from dfcompress.plugins import get_registry

    calls = []
    ctx = RunContext(log_every=2, on_step=lambda step, total, values: calls.append((step, total, values)))
    synth = _make(get_registry().get("synthesizers", name), ctx, stats_file, iterations=5, generator_width=16, latent_dim=32)
    synth.setup(tiny_teacher)
    batch = synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    synth.close()
    assert [(step, total) for step, total, _ in calls] == [(i, 5) for i in range(1, 6)]
    assert [step for step, _, values in calls if values is not None] == [2, 4, 5]
    assert all(isinstance(v, float) for v in calls[1][2].values()) and "loss" in calls[1][2]
    assert batch.metrics["iterations"] == 5


@pytest.mark.parametrize("name", ["deepinversion", "natural", "seeded"])
def test_stop_before_the_first_step_returns_the_initial_images(name, tiny_teacher, stats_file):
    from dfcompress.plugins import get_registry

    ctx = RunContext()
    synth = _make(get_registry().get("synthesizers", name), ctx, stats_file, generator_width=16, latent_dim=32)
    synth.setup(tiny_teacher)
    ctx.stop_requested = True
    batch = synth.synthesize_batch(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    synth.close()
    assert batch.images.shape == (2, 3, 32, 32) and batch.metrics["iterations"] == 0
    assert batch.metrics["work_teacher"] == 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_teacher.model.modules())


def test_iterations_below_one_are_refused(tiny_teacher):
    from dfcompress.synth.deepinversion import DeepInversion

    with pytest.raises(ConfigError, match="deepinversion: iterations must be >= 1"):
        DeepInversion(DeepInversion.Config(iterations=0), RunContext()).setup(tiny_teacher)


def test_synthesis_bar_advances_per_iteration_with_live_losses(tiny_teacher, tmp_path):
    from dfcompress.synth.deepinversion import DeepInversion
    from dfcompress.synth.driver import SynthesisProgress, open_writer, run_synthesis

    ctx = RunContext(quiet=False, log_every=2)
    synth = DeepInversion(DeepInversion.Config(iterations=3), ctx)
    synth.setup(tiny_teacher)
    seen = []
    original = SynthesisProgress.on_step

    def spy(self, step, total, values):
        original(self, step, total, values)
        seen.append((self.bar.total, self.bar.n, values is not None))

    SynthesisProgress.on_step = spy
    try:
        writer = open_writer(tmp_path / "data", tiny_teacher, synth, num_images=4, batch_size=2, seed=0, labels="balanced")
        assert run_synthesis(synth, tiny_teacher, writer, ctx) == 2
    finally:
        SynthesisProgress.on_step = original
    assert [n for _, n, _ in seen] == [1, 2, 3, 4, 5, 6] and {total for total, _, _ in seen} == {6}
    assert [has for _, _, has in seen] == [False, True, True, False, True, True]
    assert ctx.on_step is None  # the hook is the driver's only while it runs
