"""The embedded demo teacher: trained once per test session on digits, cached, reloaded without retraining."""
from __future__ import annotations

import json

import pytest
import torch

from dfcompress.data.real import load_data
from dfcompress.models import demo, load_teacher


@torch.inference_mode()
def top1(teacher, data) -> float:
    logits = teacher.model(data.normalized(teacher.input))
    return float((logits.argmax(1) == data.labels).float().mean())


@pytest.mark.slow
def test_demo_teacher_trains_caches_and_reaches_95(monkeypatch):
    teacher = load_teacher("demo")
    weights, meta_path = demo.demo_cache_paths()
    assert weights.is_file() and meta_path.is_file()
    meta = json.loads(meta_path.read_text())
    assert meta["test_accuracy"] >= 0.95 and meta["input_spec"]["image_size"] == [16, 16]
    assert meta["seed"] == demo.TRAIN_SEED and meta["dfcompress_version"]

    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    data = load_data("digits:test", teacher.input, teacher="demo")
    accuracy = top1(teacher, data)
    assert accuracy >= 0.95 and abs(accuracy - meta["test_accuracy"]) < 1e-6

    # reused afterwards: loading again must not train
    monkeypatch.setattr(demo, "train_demo_teacher", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = load_teacher("demo")
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), teacher.model.state_dict().values()))


def test_damaged_cache_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("DFCOMPRESS_CACHE", str(tmp_path))
    weights, meta = demo.demo_cache_paths()
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"half a file")
    meta.write_text("{}")
    calls = []

    def quick_train(*args, **kwargs):
        calls.append(1)
        return demo.build_demo("teacher"), {"test_accuracy": 0.0, "test_images": 0, "train_seconds": 0.0}

    monkeypatch.setattr(demo, "train_demo_teacher", quick_train)
    assert demo.ensure_demo_teacher() == weights and calls == [1]
    assert demo.ensure_demo_teacher() == weights and calls == [1]  # now valid: not trained again
    assert json.loads(meta.read_text())["test_accuracy"] == 0.0


def test_demo_small_is_a_student_without_default_weights():
    from dfcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher demo:small needs --weights"):
        load_teacher("demo:small")
