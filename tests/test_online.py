"""The online schedule, the time budget and the ``fast`` synthesizer: the math on tiny tensors, then end to end
on the demo teacher (kill -9 and resume, the budget honoured, every built-in synthesizer online)."""
import json
import signal
import time

import pytest
import torch
from torch import nn

from dfcompress.config import parse_duration
from dfcompress.errors import ConfigError
from dfcompress.synth.fast import MomentumBNStatistics, masked_adversarial_kl, paper_learning_rates
from dfcompress.synth.fast_nets import FastGenerator, accumulate_fomaml, reptile_update, upsampling_stages

from test_reliability import cli, spawn, wait_for


# -- the math ---------------------------------------------------------------------------------------------------
def test_masked_adversarial_kl_matches_a_hand_computation():
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    # rows 0 and 2 agree on the class, row 1 does not (teacher 1, student 0)
    def kl(p_logits, q_logits):
        p, q = p_logits.softmax(0), q_logits.softmax(0)
        return float((p * (p / q).log()).sum())

    expected = -(kl(t[0], s[0]) + kl(t[2], s[2])) / 3
    assert masked_adversarial_kl(t, s).item() == pytest.approx(expected, rel=1e-6)
    assert masked_adversarial_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_bn_momentum_mixes_this_batch_with_the_running_average():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -0.5]))
    bn.running_var.copy_(torch.tensor([2.0, 1.0]))
    model = nn.Sequential(bn)
    x1, x2 = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3) + 1
    stats = MomentumBNStatistics(model, 0.9, [])
    model(x1)
    first = stats.loss()
    m1, v1 = x1.mean((0, 2, 3)), x1.var((0, 2, 3), unbiased=False)
    hand = torch.linalg.vector_norm(m1 - bn.running_mean) + torch.linalg.vector_norm(v1 - bn.running_var)
    assert first.item() == pytest.approx(hand.item(), rel=1e-5)  # no history: the plain statistics
    history = stats.remember()
    assert torch.allclose(history[0][0], m1, atol=1e-6) and torch.allclose(history[0][1], v1, atol=1e-6)
    stats.remove()

    stats = MomentumBNStatistics(model, 0.9, history)
    model(x2)
    m2, v2 = x2.mean((0, 2, 3)), x2.var((0, 2, 3), unbiased=False)
    mixed_m, mixed_v = 0.1 * m2 + 0.9 * m1, 0.1 * v2 + 0.9 * v1
    hand = torch.linalg.vector_norm(mixed_m - bn.running_mean) + torch.linalg.vector_norm(mixed_v - bn.running_var)
    assert stats.loss().item() == pytest.approx(hand.item(), rel=1e-5)
    history = stats.remember()
    assert torch.allclose(history[0][0], 0.9 * m1 + 0.1 * m2, atol=1e-6)
    assert torch.allclose(history[0][1], 0.9 * v1 + 0.1 * v2, atol=1e-6)
    stats.remove()


def _pair():
    torch.manual_seed(0)
    meta = nn.Linear(3, 2)
    fast = nn.Linear(3, 2)
    fast.load_state_dict(meta.state_dict())
    return meta, fast


def test_fomaml_sums_the_inner_gradients_into_the_meta_model():
    meta, fast = _pair()
    x = torch.randn(5, 3)
    inner = torch.optim.SGD(fast.parameters(), lr=0.1)
    grads = []
    for _ in range(2):
        inner.zero_grad()
        fast(x).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in fast.parameters()])
        accumulate_fomaml(meta, fast)
        inner.step()
    for p, g0, g1 in zip(meta.parameters(), *grads):
        assert torch.allclose(p.grad, g0 + g1)
    before = [p.detach().clone() for p in meta.parameters()]
    torch.optim.SGD(meta.parameters(), lr=0.5).step()
    for p, b, g0, g1 in zip(meta.parameters(), before, *grads):
        assert torch.allclose(p, b - 0.5 * (g0 + g1))


def test_reptile_moves_the_start_point_towards_the_adapted_weights():
    meta, fast = _pair()
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in meta.parameters()]
    reptile_update(meta, fast, 0.25)
    for p, b in zip(meta.parameters(), before):
        assert torch.allclose(p, b + 0.25)


def test_generator_shapes_for_32_and_224_pixels_and_the_paper_learning_rates():
    assert upsampling_stages(32) == 2 and upsampling_stages(224) == 5 and upsampling_stages(16) == 1
    for size in (16, 32, 224):
        g = FastGenerator(8, 3, (size, size), width=4)
        out = g(torch.randn(2, 8))
        assert out.shape == (2, 3, size, size) and 0 <= out.min() and out.max() <= 1
    assert paper_learning_rates(2) == (5e-3, 0.015) and paper_learning_rates(5) == (3e-3, 0.01)
    assert paper_learning_rates(10) == (2e-3, 0.01) and paper_learning_rates(4) == (3e-3, 0.01)


def test_conditional_generator_is_steered_by_the_label_and_meta_learns_its_embedding(tiny_teacher, one_thread):
    from dfcompress.context import RunContext
    from dfcompress.synth.fast import FastConfig, FastSynthesizer

    torch.manual_seed(0)
    g = FastGenerator(8, 3, (16, 16), width=4, num_classes=10)
    z = torch.randn(1, 8).repeat(2, 1)
    out = g(z, torch.tensor([1, 7]))
    assert not torch.allclose(out[0], out[1])  # the same z, two labels: two images
    assert torch.allclose(g(z, torch.tensor([3, 3]))[0], g(z, torch.tensor([3, 3]))[1])
    with pytest.raises(ValueError, match="labels"):
        g(z)
    assert FastGenerator(8, 3, (16, 16), width=4).embed is None  # the paper's generator stays unconditional

    ctx = RunContext(log_every=1)
    synth = FastSynthesizer(FastConfig(g_steps=2, latent_dim=16, generator_width=8, conditional=True), ctx)
    synth.setup(tiny_teacher)
    assert synth.generator.embed.num_embeddings == 10
    before = synth.generator.embed.weight.detach().clone()
    labels = torch.arange(8) % 10
    batch = synth.synthesize_batch(labels, generator=ctx.generator(0))
    assert batch.images.shape == (8, 3, 32, 32) and torch.equal(batch.labels, labels)
    moved = (synth.generator.embed.weight - before).abs().sum(dim=1)
    assert (moved[:8] > 0).all() and (moved[8:] == 0).all()  # only the embeddings of the labels drawn move
    assert "embed.weight" in synth.state_dict()["generator"]


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    for bad in ("", "soon", "0", "-5m", "5x"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


# -- end to end on the demo teacher -----------------------------------------------------------------------------
ONLINE = ["run", "--synth", "fast", "--task", "distill", "--student", "demo:small", "--num-images", "96",
          "--batch-size", "16", "--round-steps", "4", "--warmup-rounds", "1", "--device", "cpu",
          "-d", "batch_size=16", "-s", "latent_dim=32", "-s", "generator_width=16"]


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_online_fast_run_reports_rounds_work_and_a_reusable_pool(tmp_path):
    out = tmp_path / "run"
    assert cli(*ONLINE, "--eval-every", "2", "--out", str(out)) == 0
    d = _metrics(out)["distill"]
    assert d["schedule"] == "online" and d["rounds"] == 6 and d["images"] == 96
    assert d["steps"] == 5 * 4  # the warm-up round does not train
    work = d["work_images"]
    assert work["synthesis_teacher"] == 96 * 2  # g_steps = 2 teacher passes per image
    assert work["synthesis_student"] == 80 * 2  # no student term in the warm-up round
    assert work["train_student"] == 20 * 16
    assert [p["round"] for p in d["curve"]] == [2, 4, 6]
    assert (out / "images" / "learning-curve.png").exists()
    reuse = tmp_path / "reuse"
    assert cli("run", "--synth", "noise", "--task", "distill", "--student", "demo:small", "--synthetic",
               str(out / "synthetic"), "--epochs", "1", "--device", "cpu", "--out", str(reuse)) == 0
    assert _metrics(reuse)["synthetic"]["num_images"] == 96


@pytest.mark.slow
@pytest.mark.parametrize("synth, options", [
    ("noise", []),
    ("deepinversion", ["-s", "iterations=2", "-s", "adi_scale=0.2"]),
    ("natural", ["-s", "iterations=2", "-s", "generator_width=8", "-s", "latent_dim=16"]),
    ("fast", ["-s", "latent_dim=16", "-s", "generator_width=8"]),
])
def test_every_synthesizer_runs_online(tmp_path, synth, options):
    out = tmp_path / synth
    args = ["run", "--synth", synth, "--task", "distill", "--student", "demo:small", "--schedule", "online",
            "--num-images", "32", "--batch-size", "16", "--round-steps", "2", "--warmup-rounds", "0", "--device", "cpu",
            "-d", "batch_size=16", *options, "--out", str(out)]
    assert cli(*args) == 0
    d = _metrics(out)["distill"]
    assert d["schedule"] == "online" and d["rounds"] == 2 and d["steps"] == 4


@pytest.mark.slow
def test_prune_fine_tunes_online(tmp_path):
    out = tmp_path / "prune"
    args = ["run", "--synth", "fast", "--task", "prune", "--ratio", "0.5", "--num-images", "32", "--batch-size", "16",
            "--round-steps", "2", "--warmup-rounds", "0", "--device", "cpu", "-d", "batch_size=16", "-s", "latent_dim=16",
            "-s", "generator_width=8", "--out", str(out)]
    assert cli(*args) == 0
    m = _metrics(out)
    assert m["distill"]["schedule"] == "online" and m["models"]["final"]["params"] < m["models"]["teacher"]["params"]
    assert (out / "pruned.pt").exists()


@pytest.mark.slow
def test_time_budget_is_honoured(tmp_path):
    out = tmp_path / "budget"
    budget = 12.0
    args = [*ONLINE, "--num-images", "4096", "--time-budget", f"{budget:g}s", "--out", str(out)]
    start = time.perf_counter()
    assert cli(*args) == 0
    d = _metrics(out)["distill"]
    # within 2% plus one round: the last round's synthesis is one batch, its training stops at the budget
    round_s = (d["synthesis_s"] / max(1, d["rounds"])) + 1.0
    assert budget * 0.98 - round_s <= d["total_s"] <= budget * 1.02 + round_s
    assert d["images"] < 4096 and d["time_budget_s"] == budget
    assert time.perf_counter() - start < budget + 60
    from dfcompress.data import synthetic as synthdata

    assert len(synthdata.load(out / "synthetic")) == d["images"]  # a pool cut short by the budget is final


@pytest.mark.slow
def test_offline_with_a_budget_splits_synthesis_and_training(tmp_path):
    out = tmp_path / "offline"
    args = ["run", "--synth", "deepinversion", "-s", "iterations=20", "--task", "distill", "--student", "demo:small",
            "--schedule", "offline", "--num-images", "4096", "--batch-size", "32", "--round-steps", "5",
            "--time-budget", "10s", "--synthesis-share", "0.4", "--device", "cpu", "-d", "batch_size=16",
            "--out", str(out)]
    assert cli(*args) == 0
    d = _metrics(out)["distill"]
    assert d["schedule"] == "offline" and d["steps"] > 0 and d["images"] < 4096
    assert d["work_images"]["synthesis_student"] == 0


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_gives_the_same_weights(tmp_path):
    killed = tmp_path / "killed"
    args = [*ONLINE, "--round-steps", "30"]
    proc = spawn(*args, "--out", str(killed))
    checkpoint = killed / "checkpoints" / "distill-rounds.pt"
    wait_for(checkpoint.exists, proc)
    first = checkpoint.stat().st_mtime_ns
    wait_for(lambda: checkpoint.stat().st_mtime_ns != first, proc)  # two rounds done, the third under way
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "student.pt").exists()
    assert cli("run", "--resume", str(killed)) == 0
    whole = tmp_path / "whole"
    assert cli(*args, "--out", str(whole)) == 0
    a = torch.load(killed / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(whole / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    from dfcompress.data import synthetic as synthdata

    assert torch.equal(synthdata.load(killed / "synthetic").images, synthdata.load(whole / "synthetic").images)


def test_bad_schedule_input_fails_fast_with_one_line(capsys, tmp_path):
    for args in (["--time-budget", "soon"], ["--round-steps", "0"], ["--synthesis-share", "1.5"]):
        start = time.perf_counter()
        code = cli("run", "--synth", "fast", "--out", str(tmp_path / "x"), *args)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "error:" in err, err
        assert time.perf_counter() - start < 5


def test_a_warmup_that_leaves_no_training_round_is_refused_before_any_synthesis(capsys, tmp_path):
    out = tmp_path / "x"
    code = cli("run", "--synth", "fast", "--task", "distill", "--out", str(out), "--num-images", "64",
               "--batch-size", "32", "--warmup-rounds", "2", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--warmup-rounds 2 leaves no training round" in err, err
    assert not (out / "synthetic").exists()


def test_fast_suggests_the_rounds_it_was_measured_with_and_the_user_overrides_them():
    from dfcompress.cli import _layers, _with_source_defaults
    from dfcompress.config import make_run_config
    from dfcompress.plugins import get_registry

    def resolved(**values):
        layers = _layers(None, None, values, (), (), ())
        return make_run_config(*_with_source_defaults(layers, get_registry()))

    fast = resolved(synth="fast")  # above the demo source's num_images 512
    assert (fast.batch_size, fast.round_steps, fast.warmup_rounds, fast.num_images) == (32, 5, 80, 50000)
    mine = resolved(synth="fast", batch_size=64, warmup_rounds=0)
    assert (mine.batch_size, mine.warmup_rounds, mine.round_steps) == (64, 0, 5)
    natural = resolved(synth="natural")  # no suggestion: the source's and the run's defaults
    assert (natural.batch_size, natural.round_steps, natural.num_images) == (256, 50, 512)
