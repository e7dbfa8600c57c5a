"""Mixed precision and memory format, checked on the CPU: bf16 autocast gives the float32 images up to a stated
tolerance for every built-in synthesizer, float16 steps go through the gradient scaler (fast included),
channels-last gives the contiguous results up to float rounding, and the GPU speed script runs (--tiny)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfcompress.context import RunContext, apply_memory_format
from dfcompress.plugins import get_registry
from dfcompress.synth.labels import make_labels
from dfcompress.synth.seeded_stats import collect_stats

REPO = Path(__file__).resolve().parents[1]
SYNTHS = ("deepinversion", "natural", "seeded", "fast")
#: small nets so that a few iterations take well under a second per precision
SMALL = {"natural": {"generator_width": 16, "latent_dim": 32}, "fast": {"generator_width": 16, "latent_dim": 32}}


@pytest.fixture
def stats_file(tiny_teacher, tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(20, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    return collect_stats(tiny_teacher, images, make_labels(20, 10), layers="Conv2d").save(tmp_path / "stats.safetensors")


def _synth(name: str, ctx: RunContext, teacher, stats: Path, steps: int = 3):
    cls = get_registry().get("synthesizers", name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    option = cls.iterations_option or "g_steps"
    opts = {option: steps, **SMALL.get(name, {})}
    if "stats" in fields:
        opts["stats"] = str(stats)
    synth = cls(cls.Config(**opts), ctx)
    synth.setup(teacher)
    return synth


def _batch(name: str, teacher, stats: Path, **ctx_args):
    ctx = RunContext(log_every=1, **ctx_args)
    synth = _synth(name, ctx, teacher, stats)
    return synth.synthesize_batch(make_labels(8, 10), generator=ctx.generator(0))


@pytest.mark.parametrize("name", SYNTHS)
def test_bf16_autocast_gives_the_float32_images_within_tolerance(name, tiny_teacher, stats_file, one_thread):
    """Three iterations from the same seed: bf16-mixed images stay within 0.05 (mean absolute difference, pixels
    in [0, 1]) of float32 ones, finite, and the loss terms are float32 and finite. Noise-like differences of a few
    bf16 ulps through Adam's sign-like first steps are what this allows; an unscaled, NaN or garbage batch fails."""
    full = _batch(name, tiny_teacher, stats_file)
    half = _batch(name, tiny_teacher, stats_file, precision="bf16-mixed")
    assert half.images.dtype == full.images.dtype == torch.float32
    assert torch.isfinite(half.images).all()
    assert all(math.isfinite(v) for v in half.metrics.values())
    diff = (half.images - full.images).abs().mean().item()
    assert diff < 0.05, f"{name}: bf16 images differ from float32 by {diff:.4f} on average"
    assert half.images.std() > 0.01  # not a constant image


def test_float16_fast_steps_through_the_scaler_and_keeps_the_meta_generator_finite(tiny_teacher, stats_file, one_thread):
    ctx = RunContext(log_every=1, precision="16-mixed")
    synth = _synth("fast", ctx, tiny_teacher, stats_file)
    before = [p.detach().clone() for p in synth.generator.parameters()]
    for seed in range(8):  # the scaler starts at 2**16 and halves on each overflow: the first steps are skipped
        batch = synth.synthesize_batch(make_labels(8, 10), generator=ctx.generator(seed))
        assert torch.isfinite(batch.images).all()
    assert synth.scaler.get_scale() < 2.0**16  # one scaler across batches: it learnt the scale
    after = list(synth.generator.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the meta-generator did not move"


def test_fast_skips_the_meta_gradient_of_an_overflowed_step(tiny_teacher, stats_file):
    from dfcompress.synth import fast

    net = torch.nn.Linear(2, 2)
    net.weight.grad = torch.full_like(net.weight, float("inf"))
    assert not fast._finite_grads(net)
    net.weight.grad = torch.ones_like(net.weight)
    assert fast._finite_grads(net)


@pytest.mark.parametrize("name", ["deepinversion", "natural", "fast"])
def test_channels_last_gives_the_contiguous_images(name, tiny_teacher, stats_file, one_thread):
    flat = _batch(name, tiny_teacher, stats_file, memory_format="contiguous")
    apply_memory_format(tiny_teacher.model, "channels_last")
    try:
        conv = next(m for m in tiny_teacher.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        last = _batch(name, tiny_teacher, stats_file, memory_format="channels_last")
    finally:
        apply_memory_format(tiny_teacher.model, "contiguous")
    diff = (last.images - flat.images).abs()
    # float rounding only: the layouts sum in other orders, and Adam's first steps (normalised by tiny second
    # moments) carry that into a generator's images (natural, fast: measured 1.8e-3 mean, 2.1e-2 max for fast)
    # more than into pixels optimised directly
    assert diff.mean().item() < 5e-3 and diff.max().item() < 5e-2, (diff.mean().item(), diff.max().item())


def test_memory_format_auto_picks_channels_last_for_conv_nets_only():
    conv = apply_memory_format(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "auto")
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv[0].weight.is_contiguous()
    mlp = apply_memory_format(torch.nn.Sequential(torch.nn.Linear(3, 4)), "auto")
    assert mlp[0].weight.is_contiguous()
    with pytest.raises(Exception, match="memory format"):
        RunContext(memory_format="nhwc")


def test_kd_steps_agree_between_layouts_and_in_bf16(tiny_teacher, one_thread):
    """Ten KD steps from the same start: channels-last within float rounding of contiguous, bf16 finite and close."""
    import copy

    import timm

    from dfcompress.distill.kd import KnowledgeDistillation

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(1)
    start = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    results = {}
    for key, ctx_args in {"flat": {"memory_format": "contiguous"}, "last": {"memory_format": "channels_last"},
                          "bf16": {"precision": "bf16-mixed"}}.items():
        ctx = RunContext(**ctx_args)
        student = ctx.layout(copy.deepcopy(start))
        apply_memory_format(tiny_teacher.model, ctx_args.get("memory_format", "auto"))
        kd = KnowledgeDistillation(KnowledgeDistillation.Config(epochs=1, batch_size=16, lr=0.01), ctx)
        results[key] = (kd.fit(student, tiny_teacher, images, labels),
                        torch.cat([p.detach().reshape(-1) for p in student.parameters()]))
    apply_memory_format(tiny_teacher.model, "contiguous")
    flat, last, bf16 = results["flat"][1], results["last"][1], results["bf16"][1]
    assert (flat - last).abs().max().item() < 1e-4
    assert torch.isfinite(bf16).all() and math.isfinite(results["bf16"][0]["loss"])
    assert (flat - bf16).abs().max().item() < 0.05


def test_a_whole_demo_run_in_bf16_has_no_nan(tmp_path, one_thread, capsys):
    from dfcompress.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["-q", "run", "--synth", "deepinversion", "--num-images", "40", "--batch-size", "20", "--iterations", "5",
              "--epochs", "2", "--precision", "bf16-mixed", "--out", str(out), "--json"])
        raise SystemExit(0)
    assert not exit_.value.code, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())

    def numbers(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from numbers(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from numbers(v)
        elif isinstance(obj, float):
            yield obj
    values = list(numbers(metrics))
    assert values and all(math.isfinite(v) for v in values)


def test_gpu_speed_script_runs_tiny_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), "--tiny", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "gpu-speed-tiny.json").read_text())
    rows = payload["rows"]
    assert {r["precision"] for r in rows} == {"32-true", "bf16-mixed"}
    for row in rows:
        assert set(row["median_s"]) == {"bare", *SYNTHS}
        assert all(v > 0 for v in row["median_s"].values())
        assert all(row["finite"].values()) and row["kd"]["finite"]
    table = (tmp_path / "gpu-speed-tiny.md").read_text()
    assert "| cifar:resnet20 @32 | 8 | bf16-mixed |" in table and "bf16-mixed against 32-true" in table
