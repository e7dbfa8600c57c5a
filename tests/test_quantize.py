"""int8 post-training quantization (torchao PT2E, x86 Inductor): the backend, the saved program, the task and
the --then chain, on the demo teacher (a BatchNorm CNN on 16 x 16 digits)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from dfcompress.cli import main
from dfcompress.errors import ConfigError, UnsupportedModelError


def cli(*args):
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
        raise SystemExit(0)
    return exc.value.code or 0


@pytest.fixture(scope="module")
def demo():
    """The demo teacher and its held-out digits (normalised)."""
    from dfcompress.models import load_teacher
    from dfcompress.models.demo import _digits_tensors

    teacher = load_teacher("demo")
    x, y = _digits_tensors("test")
    return teacher, x, y


def quantizer(**options):
    from dfcompress import options as opts
    from dfcompress.quantize.x86 import X86InductorPTQ

    return X86InductorPTQ(opts.build(X86InductorPTQ.Config, options, owner="quantizer x86"))


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x
        return -x


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), Gate())
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


def test_a_model_that_cannot_be_exported_names_the_module(demo):
    teacher = demo[0]
    with pytest.raises(UnsupportedModelError) as exc:
        quantizer().check_model(Gated(), teacher.input, label="my:gated")
    message = str(exc.value)
    assert "my:gated cannot be quantized" in message and "'block.1' (Gate)" in message
    assert "data-dependent control flow" in message and "\n" not in message


def test_options_are_checked(demo):
    with pytest.raises(ConfigError, match="calib_images must be >= 1"):
        quantizer(calib_images=0).check_options()
    with pytest.raises(ConfigError, match="skip names modules the model does not have: nope"):
        quantizer(skip="nope", lower=False).quantize(demo[0].model, demo[0].input, batches=[demo[1][:8]])


@pytest.mark.slow
def test_int8_demo_teacher_agrees_with_float_and_reloads(demo, tmp_path, one_thread):
    from dfcompress.quantize import load_quantized

    teacher, x, y = demo
    q = quantizer()
    result = q.quantize(teacher.model, teacher.input, batches=[x[i:i + 64] for i in range(0, 256, 64)])
    assert result.calib_images == 256 and result.notes == []  # no note: the convolutions got int8 kernels
    assert result.stats["float_batchnorms"] == 0 and result.stats["batchnorms_before"] > 0  # all folded
    with torch.no_grad():
        fp32 = teacher.model.cpu()(x).argmax(1)
    int8 = result.model(x)
    assert int8.shape == (len(x), 10) and int8.dtype == torch.float32
    assert int8.argmax(1).eq(fp32).float().mean() >= 0.97
    assert int8.argmax(1).eq(y).float().mean() >= 0.9
    path = q.save(result, tmp_path / "demo-int8.pt2", meta={"source": "teacher"})
    state = tmp_path / "fp32.pt"
    torch.save(teacher.model.state_dict(), state)
    import zipfile

    weights = sum(i.file_size for i in zipfile.ZipFile(path).infolist() if "/weights/weight_" in i.filename)
    assert weights < 0.3 * state.stat().st_size  # int8 weights (a quarter, plus float biases and scales)
    assert path.stat().st_size < 0.6 * state.stat().st_size  # and the graph, which a tiny net does not amortise
    again = load_quantized(path)
    assert torch.allclose(again(x[:64]), result.model(x[:64]), atol=1e-4)
    assert again.eval() is again and again.train() is again  # the wrapper accepts mode switches


@pytest.mark.slow
def test_skip_keeps_the_classifier_in_float(demo, one_thread):
    teacher, x, _ = demo
    result = quantizer(skip="fc", lower=False).quantize(teacher.model, teacher.input, batches=[x[:32]])
    graph = result.program.graph_module.graph
    linear = [n for n in graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert linear and all("dequantize" not in str(n.args[1].target) for n in linear if hasattr(n.args[1], "target"))
    conv = [n for n in graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    assert conv and all("dequantize" in str(n.args[1].target) for n in conv)  # int8 weights elsewhere


def test_then_needs_a_task_that_hands_on_a_model(capsys, tmp_path):
    out = tmp_path / "r"
    assert cli("run", "--task", "quantize", "--then", "quantize", "--synth", "noise", "--out", str(out)) == 2
    assert "task quantize does not end with a compressed model" in capsys.readouterr().err
    assert cli("run", "--task", "prune", "--then", "distill", "--synth", "noise", "--out", str(out)) == 2
    assert "task distill cannot take another task's model" in capsys.readouterr().err
    assert cli("run", "--task", "quantize", "--schedule", "online", "--synth", "noise", "--out", str(out)) == 2
    assert "synthesizes its calibration images before quantizing" in capsys.readouterr().err
    assert not (out / "config.toml").exists()  # refused before any work


def test_quantizers_are_listed_and_shown(capsys):
    assert cli("plugins", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listing["quantizers"]] == ["x86"]
    assert "quantize" in [e["name"] for e in listing["tasks"]]
    assert cli("show", "quantizers", "x86") == 0
    shown = capsys.readouterr().out
    assert "calib_images" in shown and "reduce_range" in shown and "auto" in shown


SMALL = ["--synth", "noise", "--num-images", "64", "--batch-size", "32", "--device", "cpu", "-Q", "calib_images=32"]


@pytest.mark.slow
def test_quantize_task_calibrates_on_the_runs_synthetic_images(tmp_path):
    out = tmp_path / "q"
    assert cli("run", "--task", "quantize", "--out", str(out), *SMALL) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["models"]
    assert list(rows) == ["teacher", "teacher-int8"]
    assert rows["teacher-int8"]["params"] == rows["teacher"]["params"]
    assert rows["teacher-int8"]["agreement"] >= 0.9
    assert rows["teacher-int8"]["size_mb"] < 4 * rows["teacher"]["params"] / 1e6  # below the float32 weights alone
    quant = metrics["quantize"]
    assert quant["calib_images"] == 32 and quant["calib_data"] == str(out / "synthetic")
    assert set(quant["latency"]["b64"]) == {"fp32_eager", "fp32_compiled", "int8_compiled"}
    assert (out / "teacher-int8.pt2").is_file()
    report = (out / "report.md").read_text()
    assert "## Quantization" in report and "int8_compiled" in report


def spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "dfcompress", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.slow
def test_prune_then_quantize_after_kill_during_quantization_reuses_the_finished_stages(tmp_path):
    out = tmp_path / "chain"
    args = ["run", "--task", "prune", "--ratio", "0.5", "--then", "quantize", "--epochs", "2", "--out", str(out),
            *SMALL]
    proc = spawn(*args)
    log = out / "log.txt"
    start = time.time()
    while not (log.exists() and "stage quantize started" in log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 300, "timed out"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final-int8.pt2").exists()
    assert cli("run", "--resume", str(out)) == 0
    text = log.read_text()
    second = text[text.index("INFO dfcompress.run: run ", text.index("stage quantize started")):]
    assert "kd epoch 2/2" in text and "kd epoch" not in second  # the resumed run did not fine-tune again
    assert "resuming" in second and "stage quantize took" in second  # re-used the images, quantized
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["teacher", "pruned", "final", "final-int8"]
    final, int8 = metrics["models"]["final"], metrics["models"]["final-int8"]
    assert int8["params"] == final["params"] and int8["macs"] == final["macs"]
    assert metrics["quantize"]["source"] == "final" and "agreement_with_float" in metrics["quantize"]
    assert (out / "final-int8.pt2").is_file() and (out / "pruned.pt").is_file()


@pytest.mark.slow
def test_a_teacher_without_batchnorm_goes_through_the_task(tmp_path):
    """timm's test_vit (LayerNorm only): nothing to fold, the linear layers are quantized."""
    out = tmp_path / "vit"
    assert cli("run", "--task", "quantize", "--teacher", "timm:test_vit", "--weights", "random", "--num-classes", "10",
               "--image-size", "32", "--synth", "noise", "--num-images", "32", "--batch-size", "32", "--device", "cpu",
               "-Q", "calib_images=32", "-Q", "latency=false", "-Q", "lower=false", "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantize"]["batchnorms_before"] == 0 and metrics["quantize"]["quantized_ops"] > 0
    assert metrics["models"]["teacher-int8"]["size_mb"] < 4 * metrics["models"]["teacher"]["params"] / 1e6


def test_reduce_range_auto_follows_the_cpus_vnni(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert quantizer().reduce_range() is True and quantizer().scheme()["activation_bits"] == 7
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert quantizer().reduce_range() is False and quantizer(reduce_range="true").reduce_range() is True
    with pytest.raises(ConfigError, match="must be one of auto, true, false"):
        quantizer(reduce_range="maybe")
