"""Pruners: ratio semantics, architectures of timm / torchvision / the CIFAR option-A ResNets, saving."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dfcompress.components import InputSpec, Pruner
from dfcompress.errors import ConfigError, DFCompressError, WeightsError
from dfcompress.prune import (
    BNScalePruner,
    L1Pruner,
    L2Pruner,
    RandomPruner,
    TaylorPruner,
    find_channel_pad_coupling,
    load_pruned,
    read_pruned,
    save_pruned,
)

SPEC = InputSpec(image_size=(32, 32), num_classes=10)
LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def _timm(name: str):
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)

    return build


def _tv(name: str):
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=10)

    return build


def _cifar(name: str):
    def build() -> nn.Module:
        from dfcompress.models.cifar_resnet import cifar_resnet

        return cifar_resnet(name)

    return build


ARCHITECTURES = {
    "cifar:resnet20": _cifar("resnet20"),
    "timm:test_resnet": _timm("test_resnet"),
    "timm:test_efficientnet": _timm("test_efficientnet"),
    "timm:test_convnext": _timm("test_convnext"),
    "timm:mobilenetv3_small_050": _timm("mobilenetv3_small_050"),
    "timm:resnet10t": _timm("resnet10t"),
    "torchvision:resnet18": _tv("resnet18"),
    "torchvision:squeezenet1_1": _tv("squeezenet1_1"),
    "torchvision:mobilenet_v2": _tv("mobilenet_v2"),
}
SLOW_ARCHITECTURES = {
    "torchvision:vgg11_bn": _tv("vgg11_bn"),
    "torchvision:efficientnet_b0": _tv("efficientnet_b0"),
}
#: layers that keep their output channels at any ratio: the head, and for option A the pad-tied layers
KEPT_WHOLE = {
    "cifar:resnet20": {"linear", "conv1"} | {f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)},
}
HEADS = {"timm:test_resnet": "fc", "timm:test_efficientnet": "classifier", "timm:test_convnext": "head.fc",
         "timm:mobilenetv3_small_050": "classifier", "timm:resnet10t": "fc", "torchvision:resnet18": "fc",
         "torchvision:squeezenet1_1": "classifier.1", "torchvision:mobilenet_v2": "classifier.1",
         "torchvision:vgg11_bn": "classifier.6", "torchvision:efficientnet_b0": "classifier.1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def out_channels(model: nn.Module) -> dict[str, int]:
    return {name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, LAYERS)}


def build(builder, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return builder().eval()


def check_architecture(arch: str, builder, tmp_path) -> None:
    model = build(builder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = out_channels(model)
    result = L1Pruner().prune(model, SPEC, ratio=0.5)
    assert result.model is model
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert result.params_after < result.params_before and result.macs_after < result.macs_before
    assert result.params_after == sum(p.numel() for p in model.parameters())
    after = out_channels(model)
    kept_whole = KEPT_WHOLE[arch] if arch in KEPT_WHOLE else {HEADS[arch]}
    for name, channels in before.items():
        expected = channels if name in kept_whole else int(channels * 0.5)
        assert after[name] == expected, (name, channels, after[name])
    # reloads from disk into a fresh unpruned instance, weights_only, with identical outputs
    path = save_pruned(model, tmp_path / "pruned.pt", arch=arch, input_spec=SPEC)
    reloaded = load_pruned(path, build(builder, seed=123))
    assert torch.equal(reloaded(x), out)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_prunes_at_half_channels(arch, tmp_path):
    check_architecture(arch, ARCHITECTURES[arch], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(SLOW_ARCHITECTURES))
def test_large_architecture_prunes_at_half_channels(arch, tmp_path):
    check_architecture(arch, SLOW_ARCHITECTURES[arch], tmp_path)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        L1Pruner().prune(build(ARCHITECTURES["timm:test_resnet"]), SPEC, ratio=ratio)


def test_unknown_ratio_of_is_a_config_error():
    with pytest.raises(ConfigError, match="ratio_of"):
        L1Pruner().prune(build(ARCHITECTURES["timm:test_resnet"]), SPEC, ratio=0.5, ratio_of="flops")


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


PRUNERS = [L1Pruner, L2Pruner, BNScalePruner, TaylorPruner, RandomPruner]


@pytest.mark.parametrize("cls", PRUNERS, ids=lambda c: c.name)
def test_every_pruner_removes_the_channel_fraction_of_every_layer(cls):
    model = build(ARCHITECTURES["timm:test_resnet"])
    before = out_channels(model)
    batches = _batches() if cls.needs_data else None
    cls().prune(model, SPEC, ratio=0.25, batches=batches)
    after = out_channels(model)
    for name, channels in before.items():
        assert after[name] == (channels if name == "fc" else int(channels * 0.75)), name


@pytest.mark.parametrize("cls,ratio_of,ratio", [
    (L1Pruner, "params", 0.5), (L1Pruner, "macs", 0.3), (TaylorPruner, "params", 0.4), (RandomPruner, "macs", 0.6),
], ids=lambda v: getattr(v, "name", str(v)))
def test_params_and_macs_targets_are_reached_within_three_points(cls, ratio_of, ratio):
    model = build(ARCHITECTURES["timm:test_resnet"])
    x = torch.randn(2, 3, 32, 32)
    result = cls().prune(model, SPEC, ratio=ratio, ratio_of=ratio_of,
                         batches=_batches(1) if cls.needs_data else None)
    achieved = result.params_removed if ratio_of == "params" else result.macs_removed
    assert abs(achieved - ratio) <= 0.03, achieved
    assert any("progressive pruning" in note for note in result.notes)
    assert model(x).shape == (2, 10)
    # one ratio for every layer: all prunable layers kept the same fraction (up to the floor of one channel)
    kept = [m.weight.shape[0] / w for m, w in zip(model.modules(), _widths(ARCHITECTURES["timm:test_resnet"]))
            if isinstance(m, LAYERS) and m is not model.fc]
    assert max(kept) - min(kept) < 0.15 and max(kept) < 1


def _widths(builder) -> list[int]:
    return [m.weight.shape[0] if isinstance(m, LAYERS) else 0 for m in build(builder).modules()]


def test_params_target_on_option_a_resnet():
    model = build(ARCHITECTURES["cifar:resnet20"])
    result = L1Pruner().prune(model, SPEC, ratio=0.3, ratio_of="params")
    assert abs(result.params_removed - 0.3) <= 0.03
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_coupling_is_detected_only_where_channels_are_padded():
    resnet20 = build(ARCHITECTURES["cifar:resnet20"])
    coupling = find_channel_pad_coupling(resnet20, SPEC.example_input())
    assert coupling.pads == [(0, 0, 0, 0, 8, 8), (0, 0, 0, 0, 16, 16)] or sorted(coupling.pads) == sorted(
        [(0, 0, 0, 0, 8, 8), (0, 0, 0, 0, 16, 16)])
    assert set(coupling.tied_layers) == KEPT_WHOLE["cifar:resnet20"] - {"linear"}

    class SpatialPad(nn.Module):  # F.pad on H and W only (timm "same" padding) is a plain element-wise op
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.conv(nn.functional.pad(x, (1, 1, 1, 1))).mean((2, 3)))

    assert not find_channel_pad_coupling(SpatialPad(), SPEC.example_input())


def _silence_block_channels(model: nn.Module, fraction: float) -> None:
    """Make the last ``fraction`` of each block's conv1 channels contribute exactly nothing (zero filter,
    zero BN affine, zero conv2 input weights): removing exactly them must not change the outputs."""
    with torch.no_grad():
        for stage in (model.layer1, model.layer2, model.layer3):
            for block in stage:
                c = block.conv1.out_channels
                dead = slice(c - int(c * fraction), c)
                block.conv1.weight[dead] = 0
                block.bn1.weight[dead] = 0
                block.bn1.bias[dead] = 0
                block.conv2.weight[:, dead] = 0


def _resnet20_pretrained_or_random() -> nn.Module:
    from pathlib import Path

    from dfcompress.models.cifar_resnet import cifar_resnet

    model = build(ARCHITECTURES["cifar:resnet20"])
    weights = Path(__file__).resolve().parents[2] / "shared" / "models" / "resnet20-12fca82f.th"
    if weights.exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
        model = cifar_resnet("resnet20")
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def test_option_a_resnet_pruning_removes_dead_channels_without_changing_outputs():
    model = _resnet20_pretrained_or_random()
    _silence_block_channels(model, 0.25)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    result = L1Pruner().prune(model, SPEC, ratio=0.25)
    with torch.no_grad():
        pruned = model(x)
    assert result.params_after < result.params_before
    assert [b.conv1.out_channels for s in (model.layer1, model.layer2, model.layer3) for b in s] == [12] * 3 + [24] * 3 + [48] * 3
    torch.testing.assert_close(pruned, reference, rtol=1e-4, atol=1e-5)
    assert any("option-A" in note for note in result.notes)


def test_taylor_needs_batches():
    assert TaylorPruner.needs_data and not L1Pruner.needs_data
    with pytest.raises(ConfigError, match="batches"):
        TaylorPruner().prune(build(ARCHITECTURES["timm:test_resnet"]), SPEC, ratio=0.5)


def test_taylor_uses_the_data():
    pruned = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
        model = build(ARCHITECTURES["timm:test_resnet"])
        TaylorPruner().prune(model, SPEC, ratio=0.5, batches=batches)
        pruned.append(model.conv1[0].weight.detach().clone())
    assert not torch.equal(pruned[0], pruned[1])


def test_random_pruner_is_reproducible_and_seeded():
    def run(seed: int) -> torch.Tensor:
        model = build(ARCHITECTURES["timm:test_resnet"])
        RandomPruner(RandomPruner.Config(seed=seed)).prune(model, SPEC, ratio=0.5)
        return model.conv1[0].weight.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_bn_scale_needs_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match="BatchNorm"):
        BNScalePruner().prune(model, SPEC, ratio=0.5)


def test_pruning_keeps_frozen_parameters_frozen_and_training_mode():
    model = build(ARCHITECTURES["timm:test_resnet"])
    for p in model.parameters():
        p.requires_grad_(False)
    L1Pruner().prune(model, SPEC, ratio=0.5)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    model.train()
    L1Pruner().prune(model, SPEC, ratio=0.3)
    assert model.training


def test_saved_file_is_weights_only_and_checks_the_architecture(tmp_path):
    model = build(ARCHITECTURES["timm:test_resnet"])
    L1Pruner().prune(model, SPEC, ratio=0.5)
    path = save_pruned(model, tmp_path / "m.pt", arch="timm:test_resnet")
    payload = torch.load(path, weights_only=True)
    assert payload["arch"] == "timm:test_resnet" and read_pruned(path)["format"] == "dfcompress-pruned"
    with pytest.raises(WeightsError):
        load_pruned(path, build(ARCHITECTURES["cifar:resnet20"]))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="not a dfcompress pruned-model file"):
        load_pruned(tmp_path / "plain.pt", build(ARCHITECTURES["timm:test_resnet"]))


def test_registered_pruners_follow_the_contract():
    import dataclasses

    from dfcompress.plugins import get_registry

    registry = get_registry()
    for name in ("l1", "l2", "bn_scale", "taylor", "random"):
        cls = registry.get("pruners", name)
        assert issubclass(cls, Pruner) and cls.name == name and cls.summary
        config = cls.Config()
        assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen
        for f in dataclasses.fields(config):
            assert f.metadata.get("help"), (name, f.name)


class _TrainOnlyBranch(nn.Module):
    """A conv that runs only in train mode: the eval-mode trace never sees it, so pruning leaves it stale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.aux = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn(self.conv1(x)).relu()
        if self.training:
            x = x + self.aux(x)
        return self.fc(x.mean((2, 3)))


def test_a_model_broken_in_train_mode_by_pruning_is_caught_in_one_line():
    with pytest.raises(DFCompressError, match="no longer runs in train mode") as err:
        L1Pruner().prune(build(_TrainOnlyBranch), SPEC, ratio=0.5)
    assert "\n" not in str(err.value)


def test_check_model_is_a_trial_that_leaves_the_model_unchanged():
    import torchvision

    model = torchvision.models.googlenet(weights=None, num_classes=10, init_weights=False).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    L1Pruner().check_model(model, SPEC, ratio=0.5)
    assert model.aux1 is not None and model.aux_logits  # the trial removed the auxiliary heads of a copy only
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="NFNet"):
        import timm

        L1Pruner().check_model(timm.create_model("test_nfnet", num_classes=10), SPEC, ratio=0.5)


def test_pruned_files_keep_module_versions_and_older_files_still_load(tmp_path):
    """torchvision's MNASNet refuses a state dict without its module version; files written before versions were
    stored get the fresh model's own."""
    import torchvision

    def build_mnasnet():
        torch.manual_seed(0)
        return torchvision.models.mnasnet0_5(weights=None, num_classes=10).eval()

    model = build_mnasnet()
    L1Pruner().prune(model, SPEC, ratio=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    path = save_pruned(model, tmp_path / "m.pt", arch="torchvision:mnasnet0_5", input_spec=SPEC)
    assert read_pruned(path)["metadata"][""]["version"] == 2
    old = read_pruned(path)
    del old["metadata"], old["removed"]
    torch.save(old, tmp_path / "old.pt")
    for p in (path, tmp_path / "old.pt"):
        with torch.no_grad():
            assert torch.equal(load_pruned(p, build_mnasnet()).eval()(x), out)


def test_check_model_refuses_what_the_real_prune_would_refuse():
    """A params target on block-by-block pruning (ShuffleNetV2) and bn_scale on a model without BatchNorm fail in
    the trial, before any synthesis, not after it."""
    import torchvision

    shuffle = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()
    with pytest.raises(ConfigError, match="--ratio-of channels"):
        L1Pruner().check_model(shuffle, SPEC, ratio=0.5, ratio_of="params")
    L1Pruner().check_model(shuffle, SPEC, ratio=0.5)
    no_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    with pytest.raises(ConfigError, match="bn_scale needs BatchNorm"):
        BNScalePruner().check_model(no_bn, SPEC, ratio=0.5)
