import errno
import json
import os

import pytest
import torch

from dfcompress.data import synthetic as synthdata
from dfcompress.errors import DataError, DFCompressError
from dfcompress.io import DirectoryLock


def _fill(writer, upto=None):
    for plan in writer.pending()[:upto]:
        g = torch.Generator().manual_seed(plan.seed)
        images = torch.rand(plan.count, 3, 8, 8, generator=g)
        labels = torch.arange(plan.count) % 10
        writer.add(plan, images, labels, confidence=torch.full((plan.count,), 0.5), metrics={"loss": 1.0})


def _writer(path, seed=0, request=None):
    return synthdata.SyntheticWriter(path, request or {"synth": "x"}, num_images=10, batch_size=4, seed=seed)


def test_plan_shards_and_seeds(tmp_path):
    w = _writer(tmp_path / "d")
    assert [(p.index, p.count) for p in w.plan()] == [(0, 4), (1, 4), (2, 2)]
    assert len({p.seed for p in w.plan()}) == 3
    assert synthdata.shard_seed(0, 1) == synthdata.shard_seed(0, 1) != synthdata.shard_seed(1, 1)


def test_resume_gives_identical_data(tmp_path):
    full = _writer(tmp_path / "full")
    _fill(full)
    part = _writer(tmp_path / "part")
    _fill(part, upto=1)
    assert not synthdata.read_manifest(tmp_path / "part")["complete"]
    with pytest.raises(DataError, match="unfinished"):
        synthdata.load(tmp_path / "part")
    resumed = _writer(tmp_path / "part")
    assert [p.index for p in resumed.pending()] == [1, 2]
    _fill(resumed)
    a, b = synthdata.load(tmp_path / "full"), synthdata.load(tmp_path / "part")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (10, 3, 8, 8)


def test_other_request_is_refused(tmp_path):
    _fill(_writer(tmp_path / "d"))
    with pytest.raises(DataError, match="different synthetic data set"):
        _writer(tmp_path / "d", seed=1)


def test_corrupt_shard_is_named_by_verify_and_load(tmp_path):
    d = tmp_path / "d"
    _fill(_writer(d))
    assert synthdata.verify(d) == []
    shard = d / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = synthdata.verify(d)
    assert len(problems) == 1 and "shard-00001" in problems[0]
    with pytest.raises(DataError, match="shard-00001.*corrupt"):
        synthdata.load(d)


def test_disk_full_keeps_earlier_shards(tmp_path, monkeypatch):
    d = tmp_path / "d"
    w = _writer(d)
    _fill(w, upto=1)
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError):
        _fill(w, upto=1)
    monkeypatch.undo()
    assert synthdata.verify(d) == []
    assert len(synthdata.read_manifest(d)["shards"]) == 1
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, caplog):
    d = tmp_path / "d"
    d.mkdir()
    (d / ".lock").write_text("1")  # pid 1 is alive
    with pytest.raises(DFCompressError, match="in use by another dfcompress process"):
        DirectoryLock(d).acquire()
    (d / ".lock").write_text("999999999")
    with DirectoryLock(d):
        assert (d / ".lock").read_text() == str(os.getpid())
    assert "stale lock" in caplog.text
    assert not (d / ".lock").exists()


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a synthetic data set"):
        synthdata.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(DataError, match="corrupt"):
        synthdata.load(tmp_path)


def test_export_imagefolder(tmp_path):
    d = tmp_path / "d"
    _fill(_writer(d))
    n = synthdata.export_imagefolder(synthdata.load(d), tmp_path / "png")
    assert n == 10 and len(list((tmp_path / "png").rglob("*.png"))) == 10
    assert json.loads((d / "manifest.json").read_text())["complete"] is True
