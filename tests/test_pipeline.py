"""End to end through the CLI on the demo teacher (trained once per test session on sklearn's digits)."""
import json
import tomllib

import pytest
import torch

from dfcompress.cli import main

pytestmark = pytest.mark.slow


def cli(*args):
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
        raise SystemExit(0)
    return exc.value.code or 0


SMALL = ["--num-images", "64", "--batch-size", "32", "--epochs", "1", "--device", "cpu"]


def test_distill_pipeline_writes_a_complete_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli("run", "--synth", "noise", "--task", "distill", "--student", "demo:small", "--out", str(out), *SMALL)
    assert code == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "student" in printed and "report:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["teacher"]["top1"] >= 0.95  # the demo teacher on held-out digits
    assert 0 <= metrics["models"]["student"]["agreement"] <= 1
    assert metrics["synthetic"]["num_images"] == 64
    assert {"synthesize", "distill", "evaluate"} <= set(metrics["timings_s"])
    for name in ("config.toml", "env.json", "log.txt", "report.md", "student.pt", "images/synthetic-grid.png"):
        assert (out / name).exists(), name
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["task"] == "distill" and config["student"] == "demo:small"
    # the saved student reloads as a teacher
    from dfcompress.models import load_teacher

    reloaded = load_teacher("demo:small", weights=str(out / "student.pt"))
    assert reloaded.model(torch.zeros(2, *reloaded.input.example_input().shape[1:])).shape == (2, 10)


def test_prune_pipeline_reuses_synthetic_data_and_reloads_the_model(tmp_path):
    first = tmp_path / "first"
    assert cli("synthesize", "--synth", "noise", "--num-images", "64", "--batch-size", "32", "--out", str(first),
               "--device", "cpu") == 0
    out = tmp_path / "prune"
    assert cli("run", "--task", "prune", "--synthetic", str(first), "--ratio", "0.5", "--out", str(out), *SMALL) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prune"]["params_after"] < metrics["prune"]["params_before"]
    assert metrics["models"]["final"]["params"] == metrics["prune"]["params_after"]
    from dfcompress.models import create_model
    from dfcompress.prune import load_pruned

    model, spec = create_model("demo")
    model = load_pruned(out / "pruned.pt", model)
    assert sum(p.numel() for p in model.parameters()) == metrics["prune"]["params_after"]
    assert model.eval()(spec.example_input(3)).shape == (3, 10)


def test_config_file_replays_a_run(tmp_path):
    out = tmp_path / "a"
    assert cli("run", "--synth", "noise", "--task", "distill", "--out", str(out), *SMALL) == 0
    again = tmp_path / "b"
    assert cli("run", "--config", str(out / "config.toml"), "--out", str(again)) == 0
    a = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(again / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same machine: same weights


def test_synthetic_data_of_another_shape_is_refused(tmp_path, capsys):
    from dfcompress.data import synthetic as synthdata

    d = tmp_path / "syn"
    w = synthdata.SyntheticWriter(d, {"x": 1}, num_images=4, batch_size=4, seed=0)
    w.add(w.plan()[0], torch.rand(4, 3, 32, 32), torch.arange(4), confidence=torch.ones(4), metrics={})
    code = cli("run", "--synthetic", str(d), "--out", str(tmp_path / "r"), *SMALL)
    assert code == 2
    assert "shape" in capsys.readouterr().err
