"""The shared mathematics of the synthesizers: labels, R_BN, total variation, jitter, JS."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dfcompress.errors import ConfigError
from dfcompress.synth.bn_stats import BNStatistics, _ChannelStats, channel_stats, find_bn_layers
from dfcompress.synth.labels import make_labels
from dfcompress.synth.priors import cpu_generator_from, jitter_flip, js_divergence, l2_norm, total_variation


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)
        self.bn2 = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv(x)))
        return self.bn2(self.fc(h.mean((2, 3))))


def test_make_labels_balanced_counts_and_cycle():
    labels = make_labels(23, 5)
    counts = torch.bincount(labels, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23
    assert labels[:10].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert labels.dtype == torch.long


def test_make_labels_surplus_depends_on_generator_and_more_classes_than_images():
    a = make_labels(4, 1000, generator=torch.Generator().manual_seed(0))
    b = make_labels(4, 1000, generator=torch.Generator().manual_seed(1))
    assert len(set(a.tolist())) == 4 and a.tolist() != b.tolist()
    assert make_labels(6, 4, generator=torch.Generator().manual_seed(3)).bincount(minlength=4).tolist().count(2) == 2


def test_make_labels_random_and_list():
    g = torch.Generator().manual_seed(0)
    r = make_labels(1000, 7, "random", g)
    assert r.min() >= 0 and r.max() == 6 and len(set(r.tolist())) == 7
    assert make_labels(5, 10, [3, 8]).tolist() == [3, 8, 3, 8, 3]
    assert make_labels(4, 10, "1,2").tolist() == [1, 2, 1, 2]
    with pytest.raises(ConfigError):
        make_labels(4, 10, [12])
    with pytest.raises(ConfigError):
        make_labels(4, 10, "cats")


def test_find_bn_layers_by_running_statistics():
    model = TinyBN()
    model.extra = nn.BatchNorm2d(3, track_running_stats=False)
    assert [n for n, _ in find_bn_layers(model)] == ["bn1", "bn2"]


def test_r_bn_equals_hand_computation():
    torch.manual_seed(0)
    model = TinyBN().eval()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 2, 5, 5)
    with BNStatistics(model, first_multiplier=3.0) as stats:
        model(x)
        got = stats.loss()
    a = model.conv(x)
    h = torch.relu(model.bn1(a))
    b = model.fc(h.mean((2, 3)))
    mu_a, var_a = a.mean((0, 2, 3)), ((a - a.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3))
    mu_b, var_b = b.mean(0), ((b - b.mean(0)) ** 2).mean(0)
    want = 3.0 * ((mu_a - model.bn1.running_mean).norm() + (var_a - model.bn1.running_var).norm())
    want = want + (mu_b - model.bn2.running_mean).norm() + (var_b - model.bn2.running_var).norm()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not model.bn1._forward_pre_hooks and not model.bn2._forward_pre_hooks


def test_bn_statistics_inactive_and_removed_on_error():
    model = TinyBN().eval()
    stats = BNStatistics(model)
    stats.active = False
    model(torch.randn(4, 2, 5, 5))
    assert float(stats.loss()) == 0.0
    with pytest.raises(RuntimeError):
        with BNStatistics(model):
            model(torch.randn(4, 3, 5, 5))  # wrong channels
    stats.remove()
    assert not model.bn1._forward_pre_hooks


def test_channel_stats_gradient_matches_autograd():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.stack(_ChannelStats.apply(t)), (x,))
    y = torch.randn(5, 4, 3, 3, requires_grad=True)
    mean, var = channel_stats(y)
    v2, m2 = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, m2) and torch.allclose(var, v2, atol=1e-6)


def test_total_variation_equals_formula():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3) ** 1.5
    want = 0.0
    for dy, dx in ((0, 1), (1, 0), (1, -1), (1, 1)):
        sq = 0.0
        for n in range(2):
            for i in range(3):
                for j in range(3):
                    i2, j2 = i + dy, j + dx
                    if 0 <= i2 < 3 and 0 <= j2 < 3:
                        sq += float(x[n, 0, i, j] - x[n, 0, i2, j2]) ** 2
        want += math.sqrt(sq)
    assert abs(float(total_variation(x)) - want) < 1e-3
    assert float(total_variation(torch.ones(2, 3, 4, 4))) == 0.0
    assert abs(float(l2_norm(torch.full((2, 2), 3.0))) - 6.0) < 1e-6


def test_jitter_flip_is_deterministic_per_seed_and_a_permutation():
    x = torch.randn(2, 3, 8, 8)
    outs = [jitter_flip(x, torch.Generator().manual_seed(5), max_shift=2) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0].flatten().sort().values, x.flatten().sort().values)
    many = {tuple(jitter_flip(x, g := torch.Generator().manual_seed(s), max_shift=2)[0, 0, 0, :3].tolist()) for s in range(12)}
    assert len(many) > 3
    assert torch.equal(jitter_flip(x, torch.Generator().manual_seed(1), max_shift=0, flip=False), x)
    g = torch.Generator().manual_seed(9)
    assert cpu_generator_from(g).device.type == "cpu"


def test_js_divergence_bounds():
    a = torch.randn(4, 10)
    assert float(js_divergence(a, a)) < 1e-6
    far = js_divergence(torch.tensor([[100.0, 0.0]]), torch.tensor([[0.0, 100.0]]), temperature=1.0)
    assert abs(float(far) - math.log(2)) < 1e-4


@pytest.mark.parametrize("train_mode", [False, True])
def test_fused_batchnorm_path_equals_the_hook_path(train_mode):
    """Plain BatchNorm layers take the fused forward: same outputs, R_BN and input gradient as the hooks,
    and the layers are restored afterwards (a layer in training mode falls back to its own forward)."""
    torch.manual_seed(0)
    model = TinyBN().train(train_mode)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x0 = torch.randn(6, 2, 5, 5)
    results = []
    for fuse in (True, False):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        x = x0.clone().requires_grad_(True)
        with BNStatistics(model, first_multiplier=2.0, fuse=fuse) as stats:
            assert ("forward" in vars(model.bn1)) == fuse
            out = model(x)
            r_bn = stats.loss()
        (grad,) = torch.autograd.grad(out.square().sum() + r_bn, [x])
        results.append((out.detach(), r_bn.detach(), grad))
        model.load_state_dict(state)
        assert "forward" not in vars(model.bn1) and not model.bn1._forward_pre_hooks
    for fused, hooked in zip(*results):
        assert torch.allclose(fused, hooked, rtol=1e-5, atol=1e-6)


def test_affine_with_stats_gradient():
    from dfcompress.synth.bn_stats import _AffineWithStats

    x = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    scale, shift = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: torch.cat([v.flatten() for v in _AffineWithStats.apply(t, scale, shift)]), (x,))
