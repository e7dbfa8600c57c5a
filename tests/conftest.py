"""Shared fixtures: tiny models, a fresh plugin environment, and the ../shared data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Each test gets its own cache dir (the demo teacher is shared through a session cache) and no
    third-party plugins unless it asks for them."""
    monkeypatch.setenv("DFCOMPRESS_LOAD_PLUGINS", os.environ.get("DFCOMPRESS_TEST_LOAD_PLUGINS", ""))
    monkeypatch.setenv("DFCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    from dfcompress import plugins
    from dfcompress.plugins import get_registry

    get_registry.cache_clear()
    plugins._WARNED.clear()  # each test sees the one warning per broken plugin
    yield
    get_registry.cache_clear()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a busy shared CPU does not stall intra-op thread barriers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder with real data and models is absent)")
    return path


@pytest.fixture
def tiny_teacher():
    """timm's test_resnet (BatchNorm, 4 stages) at 32x32 with 10 classes, random weights, as a Teacher."""
    import timm
    import torch

    from dfcompress.components import InputSpec, Teacher

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, InputSpec(image_size=(32, 32), num_classes=10), "timm:test_resnet")
