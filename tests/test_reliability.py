"""Fault injection: kills, interrupts, corrupt files and bad input, through the real command line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfcompress.cli import main



def cli(*args):
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
        raise SystemExit(0)
    return exc.value.code or 0


def spawn(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "dfcompress", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def shards(directory: Path) -> int:
    try:
        return len(json.loads((directory / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


SYNTH = ["synthesize", "--synth", "deepinversion", "-s", "iterations=40", "--num-images", "96", "--batch-size", "32",
         "--device", "cpu"]


@pytest.mark.slow
def test_sigkill_during_synthesis_then_resume_gives_the_same_data_set(tmp_path):
    from dfcompress.data import synthetic as synthdata

    killed = tmp_path / "killed"
    proc = spawn(*SYNTH, "--out", str(killed))
    wait_for(lambda: shards(killed) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not synthdata.read_manifest(killed)["complete"]
    assert cli(*SYNTH, "--out", str(killed)) == 0  # the stale lock of the dead process is taken over
    whole = tmp_path / "whole"
    assert cli(*SYNTH, "--out", str(whole)) == 0
    a, b = synthdata.load(killed), synthdata.load(whole)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


@pytest.mark.slow
def test_sigint_during_synthesis_exits_130_with_the_resume_hint(tmp_path):
    out = tmp_path / "d"
    proc = spawn(*SYNTH, "--out", str(out))
    wait_for(lambda: (out / ".lock").exists(), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with:" in err and str(out) in err
    assert "Traceback" not in err


DISTILL = ["run", "--synth", "noise", "--task", "distill", "--student", "demo:small", "--num-images", "512",
           "--batch-size", "256", "--epochs", "12", "--device", "cpu", "-d", "batch_size=32"]


@pytest.mark.slow
def test_sigkill_during_distillation_then_resume_gives_the_same_weights(tmp_path):
    killed = tmp_path / "killed"
    proc = spawn(*DISTILL, "--out", str(killed))
    wait_for(lambda: (killed / "checkpoints" / "distill.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "student.pt").exists()
    assert cli("run", "--resume", str(killed)) == 0
    whole = tmp_path / "whole"
    assert cli(*DISTILL, "--out", str(whole)) == 0
    a = torch.load(killed / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(whole / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- bad input: one line, exit code 2, existing outputs untouched ---------------------------------------------
def one_line_error(capsys, *args):
    code = cli(*args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _resnet20_file(tmp_path):
    from dfcompress.models.cifar_resnet import cifar_resnet

    path = tmp_path / "r20.pt"
    torch.save(cifar_resnet("resnet20").state_dict(), path)
    return path


def test_missing_weights_file(capsys, tmp_path):
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(tmp_path / "nope.th"),
                          "--out", str(tmp_path / "r"))
    assert "nope.th" in line


def test_truncated_weights_file(capsys, tmp_path):
    path = _resnet20_file(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(path), "--out", str(tmp_path / "r"))
    assert "r20.pt" in line and "truncated" in line


def test_weights_of_another_architecture_name_the_keys(capsys, tmp_path):
    path = _resnet20_file(tmp_path)
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet56", "--weights", str(path), "--out", str(tmp_path / "r"))
    assert "layer1.3" in line


class NotATensor:
    pass


def test_pickle_needing_full_unpickling_is_refused(capsys, tmp_path):
    path = tmp_path / "full.pt"
    torch.save({"state_dict": {}, "extra": NotATensor()}, path)
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(path), "--out", str(tmp_path / "r"))
    assert "--trust-weights" in line


def _folder(root: Path, classes: int, per_class: int = 2) -> Path:
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), color=i * 40).save(root / f"c{c}" / f"{i}.png")
    return root


def test_eval_data_with_another_class_count(capsys, tmp_path):
    folder = _folder(tmp_path / "three", 3)
    line = one_line_error(capsys, "run", "--eval-data", str(folder), "--synth", "noise", "--num-images", "16",
                          "--out", str(tmp_path / "r"))
    assert "3 classes" in line and "10" in line


def test_empty_image_folder(capsys, tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    line = one_line_error(capsys, "run", "--eval-data", str(tmp_path / "empty"), "--synth", "noise",
                          "--num-images", "16", "--out", str(tmp_path / "r"))
    assert "empty" in line


def test_output_directory_not_writable(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(capsys, "run", "--synth", "noise", "--out", str(blocker / "run"))
    assert str(blocker) in line


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.toml").write_text('teacher = "demo"\nseed = 7\n')
    line = one_line_error(capsys, "run", "--synth", "noise", "--out", str(out))
    assert "holds another run" in line and "--resume" in line
    assert (out / "config.toml").read_text() == 'teacher = "demo"\nseed = 7\n'


def test_nan_loss_names_the_term_and_step(capsys, tmp_path):
    line = one_line_error(capsys, "synthesize", "--synth", "deepinversion", "--num-images", "8", "--batch-size", "8",
                          "-s", "iterations=60", "-s", "lr=1e30", "--out", str(tmp_path / "d"))
    assert "loss" in line and "step" in line


def test_corrupt_shard_is_named_by_data_verify_and_on_read(capsys, tmp_path):
    d = tmp_path / "d"
    assert cli("synthesize", "--synth", "noise", "--num-images", "64", "--batch-size", "32", "--out", str(d)) == 0
    shard = d / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    assert cli("data", "verify", str(d)) == 1
    assert "shard-00001" in capsys.readouterr().out
    line = one_line_error(capsys, "run", "--synthetic", str(d), "--out", str(tmp_path / "r"))
    assert "shard-00001" in line and "corrupt" in line
