"""IMAGINE (image-guided inversion): each loss term against a hand computation, the discriminator of the
supplement's Table 1, the ablation switches of its Table 3, guides, and BN-free teachers."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dfcompress.context import RunContext
from dfcompress.errors import ConfigError
from dfcompress.synth.imagine import (
    Imagine,
    PatchDiscriminator,
    channel_statistics,
    discriminator_step,
    feature_matching_loss,
    patch_consistency,
    random_crops,
)
from dfcompress.testing import tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _guides(tmp_path, teacher, per_class: int = 1, classes: int = 10):
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = tmp_path / "guides" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(3, *teacher.input.image_size, generator=g) * 255).to(torch.uint8)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return str(tmp_path / "guides")


def _imagine(teacher, guides, **options) -> Imagine:
    synth = Imagine(Imagine.Config(guides=guides, iterations=options.pop("iterations", 2), d_width=8, **options),
                    RunContext())
    synth.setup(teacher)
    return synth


def test_the_discriminator_is_table_1():
    d = PatchDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (3, 128, (3, 3), (1, 1), (0, 0)), *[(128, 128, (3, 3), (1, 1), (0, 0))] * 3, (128, 1, (1, 1), (1, 1), (0, 0))]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4 and all(b.num_features == 128 and b.eps == 1e-5 and b.momentum == 0.1 and b.affine for b in bns)
    relus = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 4 and all(r.negative_slope == 0.2 for r in relus)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 24, 24)  # one logit per 9x9 patch


def test_feature_matching_is_eq_5_by_hand():
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]]])  # 1 image, 2 channels, 1 x 2 positions
    t = torch.tensor([[[[2.0, 2.0]], [[1.0, -1.0]]]])
    mean, var = channel_statistics(x)
    assert torch.allclose(mean, torch.tensor([[2.0, 0.0]])) and torch.allclose(var, torch.tensor([[1.0, 0.0]]))
    # ||(2,0) - (2,0)|| + ||(1,0) - (0,1)|| = 0 + sqrt(2), plus a 2-D layer: ||(1,2)-(1,0)|| + 0 = 2
    loss = feature_matching_loss({"a": x, "b": torch.tensor([[1.0, 2.0]])}, {"a": t, "b": torch.tensor([[1.0, 0.0]])})
    assert loss.item() == pytest.approx(2 ** 0.5 + 2.0)
    # the mean over the images of the batch
    two = feature_matching_loss({"a": torch.cat([x, t])}, {"a": torch.cat([t, t])})
    assert two.item() == pytest.approx(2 ** 0.5 / 2)


def test_patch_consistency_and_the_discriminator_step_by_hand():
    d = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        d.weight.fill_(0.5)
    fake = torch.ones(1, 3, 2, 2)  # logit 1.5 at every patch
    assert patch_consistency(d, fake).item() == pytest.approx(F.softplus(torch.tensor(-1.5)).item())
    real = -torch.ones(1, 3, 2, 2)  # logit -1.5
    optimizer = torch.optim.SGD(d.parameters(), lr=0.1)
    before = discriminator_step(d, optimizer, real, fake).item()
    assert before == pytest.approx(2 * F.softplus(torch.tensor(1.5)).item())  # BCE(-1.5, 1) + BCE(1.5, 0)
    after = discriminator_step(d, optimizer, real, fake).item()
    assert after < before  # the step made the discriminator better at telling them apart


def test_random_crops_of_full_side_without_flip_are_the_image():
    images = torch.rand(3, 3, 8, 8)
    same = random_crops(images, torch.Generator().manual_seed(0), min_side=1.0, flip=False)
    assert torch.allclose(same, images, atol=1e-6)
    crops = random_crops(images, torch.Generator().manual_seed(0), min_side=0.5)
    assert crops.shape == images.shape and not torch.allclose(crops, images)


def test_the_ablation_switches_remove_their_terms(tmp_path):
    teacher = tiny_teacher()
    guides = _guides(tmp_path, teacher)
    labels = torch.arange(4)
    seen = {}
    for fm, d in ((False, False), (False, True), (True, False), (True, True)):
        synth = _imagine(teacher, guides, feature_matching=fm, discriminator=d)
        metrics = synth.synthesize_batch(labels, generator=torch.Generator().manual_seed(0)).metrics
        assert ("loss_fm" in metrics) == fm and ("loss_adv" in metrics) == d and ("loss_d" in metrics) == d
        expected = metrics["loss_ce"] + 1e-3 * metrics["loss_tv"] + fm * metrics.get("loss_fm", 0) \
            + 0.1 * d * metrics.get("loss_adv", 0)
        assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
        seen[(fm, d)] = metrics["loss"]
    assert len(set(seen.values())) == 4


def test_targets_guides_and_bad_options(tmp_path):
    teacher = tiny_teacher()
    guides = _guides(tmp_path, teacher, per_class=2)
    synth = _imagine(teacher, guides)
    assert synth.guides.pixels.shape == (20, 3, 16, 16) and synth.guides.predicted.shape == (20,)
    picks = synth.guides.pick(torch.tensor([3, 3, 7]), torch.Generator().manual_seed(0))
    assert synth.guides.labels[picks].tolist() == [3, 3, 7]
    assert torch.equal(synth.cross_entropy_targets(picks, torch.tensor([3, 3, 7])), synth.guides.predicted[picks])
    assert _imagine(teacher, guides, target="guide").cross_entropy_targets(picks, torch.tensor([3, 3, 7])).tolist() == [3, 3, 7]
    assert _imagine(teacher, guides, target="5").cross_entropy_targets(picks, torch.tensor([3, 3, 7])).tolist() == [5, 5, 5]
    assert _imagine(teacher, guides, guides_per_class=1).guides.pixels.shape[0] == 10
    with pytest.raises(ConfigError, match="needs guide images"):
        Imagine(Imagine.Config(), RunContext()).setup(teacher)
    with pytest.raises(ConfigError, match="target"):
        Imagine(Imagine.Config(guides=guides, target="zebra"), RunContext()).check_options()
    with pytest.raises(ConfigError, match="not below"):
        _imagine(teacher, guides, target="12")


def test_a_class_without_guides_is_named(tmp_path):
    teacher = tiny_teacher()
    guides = _guides(tmp_path, teacher)
    synth = _imagine(teacher, guides)
    synth.guides.by_class.pop(4)
    with pytest.raises(ConfigError, match=r"no guide image of class\(es\) \[4\]"):
        synth.synthesize_batch(torch.tensor([1, 4]), generator=torch.Generator().manual_seed(0))


class _NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x).relu()).relu().mean((2, 3)))


def test_a_teacher_without_batchnorm_works_and_feature_matching_pulls_towards_the_guide(tmp_path):
    from dfcompress.components import Teacher

    torch.manual_seed(0)
    base = tiny_teacher()
    teacher = Teacher(_NoBN().eval().requires_grad_(False), base.input, "nobn")
    guides = _guides(tmp_path, teacher)
    labels = torch.arange(10)
    first = _imagine(teacher, guides, iterations=1, discriminator=False)
    many = _imagine(teacher, guides, iterations=40, discriminator=False)
    a = first.synthesize_batch(labels, generator=torch.Generator().manual_seed(0))
    b = many.synthesize_batch(labels, generator=torch.Generator().manual_seed(0))
    assert b.images.shape == (10, 3, 16, 16) and 0 <= b.images.min() and b.images.max() <= 1
    assert b.metrics["loss_fm"] < 0.5 * a.metrics["loss_fm"]


def test_the_options_are_a_frozen_dataclass_with_help():
    for f in dataclasses.fields(Imagine.Config):
        assert f.metadata.get("help"), f.name


# -- --fuse-bn: the teacher as deployed ---------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["cifar:resnet20", "timm:test_resnet"])
def test_fused_teacher_gives_the_same_logits_without_batchnorm(spec):
    from dfcompress.models import create_model
    from dfcompress.models.fusion import fuse_batchnorm

    torch.manual_seed(0)
    model, _ = create_model(spec, num_classes=10, image_size=(32, 32))
    model.eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32)
    fused, count = fuse_batchnorm(model, x[:2])
    assert count > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fuse_bn_refuses_a_model_without_batchnorm():
    from dfcompress.models.fusion import fuse_batchnorm

    with pytest.raises(ConfigError, match="no BatchNorm"):
        fuse_batchnorm(_NoBN().eval(), torch.randn(2, 3, 16, 16))


def test_bn_statistics_methods_refuse_a_fused_teacher_naming_imagine_and_seeded(capsys, tmp_path):
    from dfcompress.cli import main

    for synth in ("deepinversion", "natural"):
        with pytest.raises(SystemExit) as exc:
            main(["-q", "run", "--teacher", "cifar:resnet20", "--weights", "random", "--fuse-bn", "--synth", synth,
                  "--task", "distill", "--num-images", "8", "--out", str(tmp_path / synth)])
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip() and "--weights random" not in x]
        assert exc.value.code == 2 and len(lines) == 1, err
        assert "--synth imagine" in err and "--synth seeded" in err and "BN-fused" in err


def test_imagine_synthesizes_for_a_fused_teacher(tmp_path):
    from dfcompress.components import Teacher
    from dfcompress.models.fusion import fuse_batchnorm

    base = tiny_teacher()
    fused, _ = fuse_batchnorm(base.model, torch.randn(2, 3, 16, 16))
    teacher = Teacher(fused, base.input, "fused")
    synth = _imagine(teacher, _guides(tmp_path, teacher), iterations=3)
    batch = synth.synthesize_batch(torch.arange(10), generator=torch.Generator().manual_seed(0))
    assert batch.images.shape == (10, 3, 16, 16) and batch.metrics["loss_fm"] > 0


# -- dfcompress imagine -------------------------------------------------------------------------------------

def _digit(path, index: int = 3):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    Image.fromarray((digits.images[index] / 16 * 255).astype(np.uint8)).resize((32, 32)).save(path)
    return str(path), int(digits.target[index])


def _cli(*args) -> int:
    from dfcompress.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
        raise SystemExit(0)
    return exc.value.code or 0


def test_imagine_command_end_to_end_on_the_demo_teacher(tmp_path, capsys):
    photo, digit = _digit(tmp_path / "three.png")
    out = tmp_path / "out"
    args = ["imagine", photo, "--num-images", "3", "--iterations", "4", "-s", "d_width=8", "--device", "cpu",
            "--out", str(out)]
    assert _cli(*args) == 0
    report = __import__("json").loads((out / "report.json").read_text())
    row = report["photos"][0]
    assert row["photo"] == "three.png" and row["target_class"] == digit and row["class"] == digit
    assert row["outputs"] == 3 and 0 <= row["agreement"] <= 1 and -1 <= row["fidelity"] <= 1
    assert sorted(p.name for p in (out / "images" / "three").iterdir()) == ["000.png", "001.png", "002.png"]
    assert (out / "grid.png").is_file() and "three.png" in (out / "report.md").read_text()
    before = (out / "images" / "three" / "000.png").read_bytes()
    capsys.readouterr()
    assert _cli(*args) == 0  # finished photos are kept, not made again
    assert (out / "images" / "three" / "000.png").read_bytes() == before


def test_imagine_command_bad_input_is_one_line(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for args, words in ((["imagine", str(tmp_path / "missing.png")], "no such photo"),
                        (["imagine", str(text)], "not a readable image"),
                        (["imagine", str(text), "--num-images", "0"], "--num-images must be at least 1"),
                        (["imagine", str(text), "-s", "target=zebra"], "target must be")):
        assert _cli(*args, "--out", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err
        assert len([x for x in err.splitlines() if x.strip()]) == 1 and words in err, err
