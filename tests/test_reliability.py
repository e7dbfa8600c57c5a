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


# -- issue 17: bad input caught before work, weights files told apart, resume that resumes ---------------------
def test_a_png_or_random_bytes_as_weights_is_not_called_a_pickle(capsys, tmp_path):
    from PIL import Image

    png = tmp_path / "photo.pt"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(png), "--out", str(tmp_path / "a"))
    assert "PNG image" in line and "trust-weights" not in line
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(7, 256)) * 40)
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(noise), "--out", str(tmp_path / "b"))
    assert "not a weights file" in line and "trust-weights" not in line


def test_class_count_mismatch_names_a_flag_that_exists(capsys, tmp_path):
    from dfcompress.models.cifar_resnet import cifar_resnet

    path = tmp_path / "r20-100.pt"
    torch.save(cifar_resnet("resnet20", num_classes=100).state_dict(), path)
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(path), "--out", str(tmp_path / "r"))
    assert "--num-classes" in line
    # ... and the flag does what the hint says: the teacher gets 100 classes (checked up to the eval data, which
    # has 10 and is refused before any work)
    line = one_line_error(capsys, "run", "--teacher", "cifar:resnet20", "--weights", str(path), "--num-classes", "100",
                          "--synth", "noise", "--eval-data", "digits", "--out", str(tmp_path / "r2"))
    assert "100" in line and "10 classes" in line


def test_num_classes_and_image_size_reach_the_teacher(tmp_path):
    from dfcompress.config import RunConfig
    from dfcompress.plugins import get_registry
    from dfcompress.run import Run

    config = RunConfig(teacher="timm:test_resnet", weights="random", num_classes=7, image_size=40, out=str(tmp_path / "r"))
    with Run(config, get_registry(), quiet=True) as run:
        assert run.teacher.input.num_classes == 7 and run.teacher.input.image_size == (40, 40)
        assert run.teacher.model(torch.zeros(1, 3, 40, 40)).shape == (1, 7)


@pytest.mark.parametrize("args, words", [
    (["--task", "distill", "--epochs", "0"], "epochs must be >= 1"),
    (["--task", "distill", "--num-images", "1"], "--num-images must be at least 2"),
    (["--task", "distill", "-s", "iterations=0", "--synth", "deepinversion"], "iterations must be >= 1"),
])
def test_bad_counts_fail_before_any_work(capsys, tmp_path, args, words):
    from dfcompress.models import load_teacher

    load_teacher("demo")  # the demo teacher trains on first use: not part of what is timed
    out = tmp_path / "r"
    start = time.perf_counter()
    code = cli("run", "--synth", "noise", *args, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert time.perf_counter() - start < 5
    if words:
        assert words in err
    assert not (out / "synthetic").exists() or not any((out / "synthetic").iterdir())


def test_weights_random_runs_to_the_end_with_a_report(tmp_path):
    out = tmp_path / "r"
    assert cli("run", "--teacher", "cifar:resnet20", "--weights", "random", "--synth", "noise", "--task", "distill",
               "--num-images", "16", "--batch-size", "16", "--epochs", "1", "--out", str(out)) == 0
    assert (out / "report.md").is_file()


def test_a_run_that_failed_at_start_leaves_its_directory_to_the_corrected_command(capsys, tmp_path):
    out = tmp_path / "r"
    assert cli("run", "--synth", "noise", "--weights", str(tmp_path / "missing.pt"), "--out", str(out)) == 2
    capsys.readouterr()
    assert cli("run", "--synth", "noise", "--task", "distill", "--num-images", "16", "--batch-size", "16",
               "--epochs", "1", "--out", str(out)) == 0


def test_resume_accepts_any_spelling_of_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--synth", "noise", "--task", "distill", "--num-images", "16", "--batch-size", "16", "--epochs", "1"]
    assert cli(*args) == 0  # the default directory, runs/<time>-noise-distill
    (run_dir,) = (tmp_path / "runs").iterdir()
    for spelling in (f"runs/{run_dir.name}/", str(run_dir), f"./runs/{run_dir.name}"):
        assert cli("run", "--resume", spelling) == 0, spelling


@pytest.mark.slow
def test_the_resume_hint_printed_after_ctrl_c_finishes_the_run(tmp_path):
    """Interrupt a run that uses the default directory, then run exactly the command the CLI printed."""
    import shlex

    proc = subprocess.Popen([sys.executable, "-m", "dfcompress", "-q", "run", "--synth", "deepinversion", "-s",
                             "iterations=40", "--task", "distill", "--num-images", "64", "--batch-size", "32",
                             "--epochs", "1", "--device", "cpu"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any((tmp_path / "runs").glob("*/.lock")) if (tmp_path / "runs").exists() else False, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    hint = next(line.split("resume with:", 1)[1].strip() for line in err.splitlines() if "resume with:" in line)
    argv = shlex.split(hint)
    assert argv[0] == "dfcompress"
    done = subprocess.run([sys.executable, "-m", "dfcompress", "-q", *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file()


def test_the_driver_refuses_a_batch_that_breaks_the_contract_naming_the_plugin(tiny_teacher, tmp_path):
    from dfcompress.components import SynthBatch, Synthesizer
    from dfcompress.context import RunContext
    from dfcompress.errors import PluginError
    from dfcompress.synth.driver import open_writer, run_synthesis

    class TooBright(Synthesizer):
        name = "toobright"

        def synthesize_batch(self, labels, *, generator, student=None):
            return SynthBatch(images=torch.full((len(labels), 3, 32, 32), 255.0), labels=labels.cpu().long())

    synth = TooBright()
    writer = open_writer(tmp_path / "d", tiny_teacher, synth, num_images=8, batch_size=8, seed=0, labels="balanced")
    with pytest.raises(PluginError, match=r"toobright.*TooBright.*\[0, 1\]"):
        run_synthesis(synth, tiny_teacher, writer, RunContext())
    assert not list((tmp_path / "d").glob("shard-*"))


def test_an_architecture_that_cannot_be_pruned_fails_before_any_work(capsys, tmp_path):
    out = tmp_path / "r"
    start = time.perf_counter()
    code = cli("run", "--teacher", "timm:test_nfnet", "--weights", "random", "--num-classes", "10", "--image-size",
               "32", "--synth", "noise", "--task", "prune", "--ratio", "0.5", "--num-images", "16", "--out", str(out))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and "--weights random" not in x]  # the random-weights warning
    assert code == 2 and len(lines) == 1, err
    assert "cannot prune NormFreeNet (NFNet)" in err and "Traceback" not in err
    assert time.perf_counter() - start < 5
    assert not (out / "synthetic").exists() or not any((out / "synthetic").iterdir())


def test_a_pruning_failure_found_by_the_trial_fails_before_any_work(capsys, tmp_path, monkeypatch):
    """Whatever torch-pruning raises in the trial prune of the teacher is one line before synthesis."""
    import torch_pruning as tp

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    out = tmp_path / "r"
    code = cli("run", "--synth", "noise", "--task", "prune", "--num-images", "16", "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert "torch-pruning 1.6 cannot trace" in err and "ZeroDivisionError" in err
    assert not (out / "synthetic").exists() or not any((out / "synthetic").iterdir())
