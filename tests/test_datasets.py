"""Evaluation data: ImageFolder directories and archives, digits, CIFAR-10, the decode cache, and errors."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dfcompress.data import real as datasets
from dfcompress.components import InputSpec
from dfcompress.data.real import EvalData, load_data
from dfcompress.errors import DataError

from conftest import shared_path

RGB32 = InputSpec(image_size=(32, 32), channels=3, num_classes=3)
GREY16 = InputSpec(image_size=(16, 16), channels=1, mean=(0.5,), std=(0.5,), num_classes=3)
CLASSES = ["ant", "bee", "cat"]


def make_folder(root, per_class: int = 4, classes=CLASSES):
    """An ImageFolder of PNGs: mixed sizes and modes, one image in a nested folder."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(classes):
        (root / cls / "more").mkdir(parents=True)
        for i in range(per_class):
            size = (40, 48) if i % 2 else (24, 24)
            pixels = np.full((*size, 3), 60 * c, np.uint8) + rng.integers(0, 20, (*size, 3), dtype=np.uint8)
            img = Image.fromarray(pixels, "RGB")
            img = img.convert("L") if i == 1 else img
            target = root / cls / "more" if i == 3 else root / cls
            img.save(target / f"{i}.png")
    return root


def make_tar(folder, archive, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def test_folder_resized_and_converted(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    data = load_data(str(folder), RGB32)
    assert data.images.shape == (12, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.classes == CLASSES and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.labels.dtype == torch.long
    grey = load_data(f"folder:{folder}", GREY16)
    assert grey.images.shape == (12, 1, 16, 16)
    # class 2 is brighter than class 0 after any conversion
    assert grey.images[grey.labels == 2].float().mean() > grey.images[grey.labels == 0].float().mean() + 50


def test_folder_decode_is_cached(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "imgs")
    first = load_data(str(folder), RGB32)
    monkeypatch.setattr(datasets, "_decode_all", lambda *a: pytest.fail("decoded again despite the cache"))
    second = load_data(str(folder), RGB32)
    assert torch.equal(first.images, second.images) and second.classes == CLASSES
    monkeypatch.undo()
    Image.new("RGB", (8, 8)).save(folder / "ant" / "new.png")  # an edited folder is decoded again
    assert len(load_data(str(folder), RGB32)) == 13


def test_archive_with_splits(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_folder(src / "train", per_class=2)
    make_folder(src / "test", per_class=3)
    archive = make_tar(src, tmp_path / "set.tar.gz", arcname="wrapper")  # a wrapper folder is stripped
    test = load_data(str(archive), RGB32)
    assert len(test) == 9 and test.name.endswith(":test") and test.classes == CLASSES
    train = load_data(f"folder:{archive}:train", RGB32)
    assert len(train) == 6 and train.name.endswith(":train")
    monkeypatch.setattr(datasets, "_read_archive", lambda *a: pytest.fail("read the archive again"))
    assert torch.equal(load_data(f"{archive}:test", RGB32).images, test.images)


def test_plain_archive(tmp_path):
    archive = make_tar(make_folder(tmp_path / "imgs"), tmp_path / "plain.tgz", arcname=".")
    data = load_data(str(archive), GREY16)
    assert len(data) == 12 and data.classes == CLASSES
    with pytest.raises(DataError, match="has no train/ and test/ folders"):
        load_data(f"{archive}:train", GREY16)


def test_archive_with_a_class_named_like_a_split(tmp_path):
    archive = make_tar(make_folder(tmp_path / "imgs", classes=["cat", "train"]), tmp_path / "odd.tar.gz", "odd")
    data = load_data(str(archive), InputSpec(num_classes=2))
    assert data.classes == ["cat", "train"] and len(data) == 8


def test_directory_with_splits(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=1)
    make_folder(tmp_path / "d" / "test", per_class=2)
    assert len(load_data(str(tmp_path / "d"), RGB32)) == 6
    assert len(load_data(f"{tmp_path / 'd'}:train", RGB32)) == 3


def test_subset_per_class():
    data = EvalData(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), torch.arange(30) % 3, ["a", "b", "c"], "x")
    sub = data.subset_per_class(4, seed=1)
    assert len(sub) == 12 and sub.labels.bincount().tolist() == [4, 4, 4]
    assert torch.equal(sub.labels, data.subset_per_class(4, seed=1).labels)
    assert len(data.subset_per_class(100)) == 30


def test_digits_splits():
    spec = InputSpec(image_size=(16, 16), channels=1, num_classes=10)
    test = load_data("digits:test", spec)
    train = load_data("digits:train", spec)
    assert (len(train), len(test)) == (1437, 360)
    assert test.images.shape == (360, 1, 16, 16) and test.classes == [str(d) for d in range(10)]
    assert test.labels.bincount().min() >= 35  # stratified
    assert int(test.images.max()) == 255
    rgb = load_data("digits", InputSpec(image_size=(32, 32), channels=3, num_classes=10))
    assert rgb.images.shape == (360, 3, 32, 32) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_missing_path():
    with pytest.raises(DataError, match="does-not-exist does not exist"):
        load_data("folder:/tmp/does-not-exist", RGB32)
    with pytest.raises(DataError, match="neither an existing path nor a data source. Did you mean 'digits'"):
        load_data("digts:test", RGB32)


def test_empty_folder(tmp_path):
    (tmp_path / "e" / "ant").mkdir(parents=True)
    with pytest.raises(DataError, match=r"eval data .*e is empty"):
        load_data(str(tmp_path / "e"), RGB32)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="has no class folders"):
        load_data(str(tmp_path / "flat"), RGB32)


def test_unreadable_image_is_named(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    (folder / "bee" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_data(str(folder), RGB32)


def test_not_an_archive(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a .tar.gz"):
        load_data(str(tmp_path / "notes.txt"), RGB32)
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="truncated or not a tar archive"):
        load_data(str(tmp_path / "bad.tar.gz"), RGB32)


def test_class_count_mismatch(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    with pytest.raises(DataError) as info:
        load_data(str(folder), InputSpec(num_classes=10), teacher="cifar:resnet20")
    assert str(info.value).startswith(f"eval data {folder} has 3 classes, teacher cifar:resnet20 has 10")


def test_cifar10_rejects_other_data(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="is not CIFAR-10"):
        load_data(f"cifar10:{folder}", RGB32)
    with pytest.raises(DataError, match="cifar10 needs the path"):
        load_data("cifar10", RGB32)


@pytest.mark.shared
def test_cifar10_test_split():
    archive = shared_path("data", "cifar10-jpeg.tar.gz")
    spec = InputSpec(num_classes=10)
    data = load_data(f"cifar10:{archive}", spec)
    assert data.images.shape == (10000, 3, 32, 32)
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"
    assert data.labels.bincount().tolist() == [1000] * 10
    assert data.name.endswith(":test")


def test_empty_class_folder_is_named(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    (folder / "aardvark").mkdir()  # would shift every label if skipped
    with pytest.raises(DataError, match="class folder.s. aardvark hold no images"):
        load_data(str(folder), RGB32)
