"""The command line: fast paths stay torch-free, bad input is one line and exit code 2."""
import json
import subprocess
import sys

import pytest

from dfcompress.cli import main

LIGHT_COMMANDS = [["--help"], ["--version"], ["plugins"], ["plugins", "--json"], ["run", "--help"], ["models"]]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys\nfrom dfcompress.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'timm', 'torch_pruning') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "dfcompress" in out


def test_plugins_json_lists_builtins_with_package(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    data = json.loads(out)
    names = {e["name"]: e for e in data["synthesizers"]}
    assert {"deepinversion", "natural", "seeded", "noise"} <= set(names)
    assert names["natural"]["package"] == "dfcompress"
    assert {"l1", "l2", "bn_scale", "taylor", "random"} <= {e["name"] for e in data["pruners"]}
    assert data["errors"] == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--synth", "naturl"], "unknown synthesizer 'naturl'. Did you mean 'natural'?"),
        (["run", "--task", "prun"], "unknown task 'prun'. Did you mean 'prune'?"),
        (["run", "--ratio", "1.5"], "--ratio must be in (0, 1), got 1.5"),
        (["run", "--ratio", "0"], "--ratio must be in (0, 1)"),
        (["run", "-s", "iterations"], "--synth-opt expects key=value"),
        (["run", "--num-images", "0"], "--num-images must be at least 1"),
        (["run", "--config", "does-not-exist.toml"], "config file does-not-exist.toml does not exist"),
        (["run", "--resume", "no-such-run"], "--resume no-such-run: no config.toml there"),
        (["data", "verify", "no-such-dir"], "is not a synthetic data set"),
        (["show", "synthesizers", "dee"], "unknown synthesizer 'dee'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_choice_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "run", "--ratio-of", "flops")
    assert code == 2 and "flops" in err


def test_config_file_with_unknown_key(capsys, tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("ratoi = 0.5\n")
    code, _, err = run_cli(capsys, "run", "--config", str(bad))
    assert code == 2 and "unknown key(s) ratoi; valid:" in err and "ratio" in err


def test_debug_shows_the_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "dfcompress", "--debug", "run", "--synth", "nope"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "Traceback" in result.stderr
