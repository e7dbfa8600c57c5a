"""Weights files: formats, nesting, and every error a user can meet."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file

from dfcompress.errors import WeightsError
from dfcompress.models import create_model
from dfcompress.weights import apply_state_dict, read_state_dict

from conftest import shared_path


class NotAllowed:
    """A class torch's weights_only unpickler refuses (needs full unpickling)."""

    def __init__(self) -> None:
        self.counter = collections.Counter(a=1)


@pytest.fixture
def resnet20_sd():
    torch.manual_seed(0)
    model, _ = create_model("cifar:resnet20")
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".bin"])
def test_plain_torch_files(tmp_path, resnet20_sd, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save(resnet20_sd, path)
    assert_same(read_state_dict(path), resnet20_sd)


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_nested_and_dataparallel_prefix(tmp_path, resnet20_sd, key):
    path = tmp_path / "ckpt.th"
    torch.save({key: {f"module.{k}": v for k, v in resnet20_sd.items()}, "best_prec1": 91.0, "epoch": 3}, path)
    assert_same(read_state_dict(path), resnet20_sd)


def test_safetensors(tmp_path, resnet20_sd):
    path = tmp_path / "w.safetensors"
    save_file(resnet20_sd, str(path))
    sd = read_state_dict(path)
    assert_same(sd, resnet20_sd)
    model, _ = create_model("cifar:resnet20", weights=path)
    assert torch.equal(model.linear.weight, resnet20_sd["linear.weight"])


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file .*nope\.pt does not exist"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, resnet20_sd, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".safetensors":
        save_file(resnet20_sd, str(whole))
    else:
        torch.save(resnet20_sd, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match="is truncated or not a weights file") as info:
        read_state_dict(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"this is not a weights file at all"])
def test_not_a_weights_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="not a weights file") as info:
        read_state_dict(path)
    assert "trust-weights" not in str(info.value)


def test_wrong_architecture_names_keys(tmp_path, resnet20_sd):
    path = tmp_path / "r20.pt"
    torch.save(resnet20_sd, path)
    with pytest.raises(WeightsError) as info:
        create_model("cifar:resnet32", weights=path)
    message = str(info.value)
    assert "does not fit cifar:resnet32" in message and "missing layer1.3.conv1.weight" in message
    assert str(path) in message and "\n" not in message


def test_wrong_class_count_names_the_shape(tmp_path):
    model100, _ = create_model("cifar:resnet20", num_classes=100)
    path = tmp_path / "c100.pt"
    torch.save(model100.state_dict(), path)
    with pytest.raises(WeightsError) as info:
        create_model("cifar:resnet20", weights=path)
    message = str(info.value)
    assert "linear.weight is (100, 64) in the file, (10, 64) in the model" in message
    assert "--num-classes" in message
    model, spec = create_model("cifar:resnet20", weights=path, num_classes=100)
    assert spec.num_classes == 100


def test_unexpected_keys(resnet20_sd):
    model, _ = create_model("cifar:resnet20")
    sd = dict(resnet20_sd, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="unexpected extra.weight"):
        apply_state_dict(model, sd, spec="cifar:resnet20", path="x.pt")


def test_full_pickle_needs_trust(tmp_path, resnet20_sd, caplog):
    path = tmp_path / "full.pth"
    torch.save({"state_dict": resnet20_sd, "extra": NotAllowed()}, path)
    with pytest.raises(WeightsError, match="--trust-weights") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    with caplog.at_level("WARNING"):
        sd = read_state_dict(path, trust=True)
    assert_same(sd, resnet20_sd)
    assert "arbitrary code" in caplog.text


def test_pickled_module_with_trust(tmp_path):
    model, _ = create_model("demo:small")
    path = tmp_path / "module.pt"
    torch.save(model, path)
    with pytest.raises(WeightsError, match="--trust-weights"):
        read_state_dict(path)
    assert_same(read_state_dict(path, trust=True), model.state_dict())


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match="holds no state dict"):
        read_state_dict(path)


@pytest.mark.shared
@pytest.mark.parametrize("file, keys", [("resnet20-12fca82f.th", 97), ("resnet56-4bfd9763.th", 277)])
def test_shared_files_load_strictly(file, keys):
    path = shared_path("models", file)
    sd = read_state_dict(path)
    assert len(sd) == keys and not any(k.startswith("module.") for k in sd)
    create_model(f"cifar:{file.split('-')[0]}", weights=path)  # strict
