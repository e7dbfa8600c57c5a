"""Benchmarks: suite parsing and validation, stable cell ids, dry-runs of the committed suites, the resumable
runner (with a fake `dfcompress` launcher), equal-time calibration, result CSVs, the leaderboard and
`dfcompress data import`."""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dfcompress.bench import launch as bench_launch
from dfcompress.bench import results as bench_results
from dfcompress.bench import runner as bench_runner
from dfcompress.bench.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted((REPO / "benchmarks" / "suites").glob("*.toml"))
PLUGIN = "dfcompress.commands.bench"


@pytest.fixture
def bench_cli(monkeypatch):
    """The CLI with the bench plugin registered (whether or not DEFAULT_PLUGINS already lists it)."""
    import dfcompress.plugins as plugins

    if PLUGIN not in plugins.DEFAULT_PLUGINS:
        monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", (*plugins.DEFAULT_PLUGINS, PLUGIN))
    from dfcompress.cli import build_cli

    return build_cli()


def invoke(cli, args):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.output


# --- a fake `python -m dfcompress` ----------------------------------------------------------------------

FAKE = r'''
import json, os, signal, sys, time
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\n")
assert args[0] == "-q", args
args = args[1:]
def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default
if args[:2] == ["data", "import"]:
    out = Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({"complete": True, "shards": []}))
    sys.exit(0)
if args[0] == "synthesize":
    assert "--json" not in args and "--task" not in args, args
    out = Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({"complete": True, "shards": []}))
    sys.exit(0)
assert args[0] == "run", args
if "--resume" in args:
    out = Path(opt("--resume"))
    assert (out / "config.toml").is_file()
    synth = (out / "config.toml").read_text().split('synth = "')[1].split('"')[0]
    iterations = int((out / "config.toml").read_text().split("iterations = ")[1].split()[0]) if "iterations = " in (out / "config.toml").read_text() else 0
else:
    out = Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
    synth = opt("--synth", "natural"); iterations = int(opt("--iterations", "0"))
    lines = [f'{k.lstrip("-").replace("-", "_")} = "{v}"' for k, v in zip(args[1::2], args[2::2])
             if k.startswith("--") and k not in ("--out", "--iterations", "--json")]
    lines.append(f'iterations = {iterations}')
    (out / "config.toml").write_text("\n".join(lines) + "\n")
(out / "env.json").write_text(json.dumps({"torch": "0.0-fake", "torch_threads": 2, "python": "3.x"}))
(out / "log.txt").write_text("fake run\n")
die = os.environ.get("FAKE_DIE", "")
if die and die in str(out) and "--resume" not in args:
    sys.exit(1)
if os.environ.get("FAKE_HANG", "") and os.environ["FAKE_HANG"] in str(out):
    def stop(signum, frame):
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    Path(os.environ["FAKE_STARTED"]).write_text("started")
    time.sleep(60)
    sys.exit(3)
if "--synthetic" not in args:  # every synthesizer, noise too, writes its images into the run directory
    rates = json.loads(os.environ.get("FAKE_RATES", "{}"))
    rate = rates.get(synth, 1.0)
    n = max(1, iterations)
    overhead = float(os.environ.get("FAKE_OVERHEAD", "0"))  # fixed seconds per batch (slow first iterations)
    shards = [{"index": 0, "metrics": {"iterations": float(n), "seconds": n * rate + overhead}}]
    (out / "synthetic").mkdir(exist_ok=True)
    (out / "synthetic" / "manifest.json").write_text(json.dumps({"complete": True, "shards": shards}))
task = opt("--task", "distill")
key = "student" if task == "distill" else "final"
metrics = {"models": {"teacher": {"top1": 0.9, "params": 100}, key: {"top1": 0.5, "params": 50}},
           "synthetic": {"feature_fd": 1.5, "class_histogram": [1, 2]}, "timings_s": {"synthesize": 3.0}}
(out / "metrics.json").write_text(json.dumps(metrics))
'''

SMALL_SUITE = """
[suite]
name = "tiny"
seeds = [0]
{reference}

[vars]
weights = "models/teacher.pt"

[run]
teacher = "demo"
num_images = 64
batch_size = 32
distill_options = {{ epochs = 1 }}

[budgets.it10]
iterations = 10

[budgets.eq]
label = "equal time"
equal_time = {{ method = "di", iterations = 40 }}
calibration = {{ from_budget = "it10", probe_iterations = 4 }}

[methods.noise]
synth = "noise"
budgets = []

[methods.di]
label = "DeepInversion"
synth = "deepinversion"

[methods.ni]
label = "NaturalInversion"
synth = "natural"

[methods.real]
kind = "real"
synthetic = "${{prereq:real}}"
tasks = ["distill"]
real_images = 20

[methods.teacher]
kind = "teacher"

[tasks.distill]
task = "distill"
student = "demo:small"

[tasks.prune]
task = "prune"
ratio = 0.5
reuse_synthetic_from = "distill"

[prerequisites.real]
command = ["data", "import", "digits:train", "--per-class", "2", "--out", "${{out}}"]
out = "real"
"""


def make_suite(tmp_path: Path, text: str = SMALL_SUITE, name: str = "tiny.toml", **fmt) -> Path:
    suites = tmp_path / "benchmarks" / "suites"
    suites.mkdir(parents=True, exist_ok=True)
    path = suites / name
    path.write_text(textwrap.dedent(text.format(reference=fmt.get("reference", ""))))
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_dfcompress.py"
    script.write_text(FAKE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_RATES", json.dumps({"deepinversion": 0.5, "natural": 2.0}))

    def read_calls():
        if not calls.is_file():
            return []
        items = [json.loads(line) for line in calls.read_text().splitlines()]
        calls.unlink()
        return items

    return [sys.executable, str(script)], read_calls


# --- parsing ----------------------------------------------------------------------------------------------


def test_suite_expands_the_grid_with_stable_ids(tmp_path):
    suite = load_suite(make_suite(tmp_path))
    ids = [c.id for c in suite.cells]
    assert ids == [
        "noise--distill--s0", "real--distill--s0", "noise--prune--s0",
        "di--distill--it10--s0", "ni--distill--it10--s0", "di--prune--it10--s0", "ni--prune--it10--s0",
        "di--distill--eq--s0", "ni--distill--eq--s0", "di--prune--eq--s0", "ni--prune--eq--s0",
    ]
    assert ids == [c.id for c in load_suite(make_suite(tmp_path)).cells]  # stable
    prune = suite.cell("di--prune--it10--s0")
    assert prune.depends_on == "di--distill--it10--s0"
    assert prune.config["synthetic"] == "benchmarks/results/tiny/di--distill--it10--s0/synthetic"
    assert prune.config["distill_options"] == {"epochs": 1} and prune.config["ratio"] == 0.5
    real = suite.cell("real--distill--s0")
    assert real.prerequisites == ["real"] and real.config["synthetic"] == "benchmarks/results/tiny/_prereq/real"
    assert suite.prerequisites["real"].command[-1] == "benchmarks/results/tiny/_prereq/real"
    assert suite.teacher_rows == [("teacher", "teacher", None)]
    assert suite.root == tmp_path


def test_cifar10_cpu_suite_cells():
    suite = load_suite(REPO / "benchmarks" / "suites" / "cifar10-cpu.toml")
    ids = {c.id for c in suite.cells}
    assert len(ids) == 36
    assert {"noise--distill--s0", "real--prune90--s0", "deepinversion-adi--distill--it200--s0",
            "seeded--prune50--time-di800--s0", "natural--distill--time-di800--s0"} <= ids
    seeded = suite.cell("seeded--distill--it200--s0")
    assert seeded.prerequisites == ["seed-stats"] and seeded.real_images == 100
    assert seeded.config["synth_options"]["stats"].endswith("_prereq/seed-stats.safetensors")
    di = suite.cell("deepinversion--distill--it200--s0")
    assert di.config["distill_options"]["epochs"] == 60 and di.config["distill_options"]["lr"] == 0.05
    prune = suite.cell("natural--prune90--it200--s0")
    assert prune.config["distill_options"]["lr"] == 0.001 and prune.config["distill_options"]["temperature"] == 4.0
    assert suite.budgets["time-di800"].equal_time == ("deepinversion", 800)



def test_a_suite_extends_another_suite_s_recipe(tmp_path):
    make_suite(tmp_path)
    study = make_suite(tmp_path, textwrap.dedent("""
        [suite]
        name = "study"
        extends = "tiny.toml"
        seeds = [0, 1]

        [run]
        num_images = 32

        [methods.ni-wide]
        synth = "natural"
        synth_options = {{ generator_width = 128 }}
        budgets = ["it10"]
        tasks = ["distill"]

        [methods.di]
        synth = "deepinversion"
        budgets = ["it10"]
        tasks = ["distill"]
        seeds = [2]

        [methods.teacher]
        kind = "teacher"
    """), name="study.toml")
    suite = load_suite(study)
    # a method's own seeds replace the suite's
    assert [c.id for c in suite.cells if c.kind != "teacher"] == [
        "ni-wide--distill--it10--s0", "ni-wide--distill--it10--s1", "di--distill--it10--s2"]
    cell = suite.cells[0]
    # [run] merged entry by entry: the study's num_images, the base's teacher and distill options
    assert cell.config["num_images"] == 32 and cell.config["teacher"] == "demo"
    assert cell.config["distill_options"] == {"epochs": 1} and cell.budget.iterations == 10
    assert cell.config["student"] == "demo:small" and cell.config["synth_options"] == {"generator_width": 128}
    # the base's equal-time budget names a method the study does not have, and no study method uses it (the
    # teacher, which has no synthesis budget, does not keep it)
    assert set(suite.budgets) == {"it10"}
    assert suite.results_dir == tmp_path / "benchmarks" / "results" / "study"

    bad = make_suite(tmp_path, '[suite]\nextends = "nope.toml"\n', name="bad.toml")
    with pytest.raises(SuiteError, match="extends 'nope.toml', which does not exist"):
        load_suite(bad)
    nested = make_suite(tmp_path, '[suite]\nextends = "study.toml"\n', name="nested.toml")
    with pytest.raises(SuiteError, match="one level only"):
        load_suite(nested)

def test_a_method_extends_another_and_seeds_differ_by_task(tmp_path):
    path = make_suite(tmp_path, SMALL_SUITE + textwrap.dedent("""
        [methods.ni-wide]
        label = "NaturalInversion, wide"
        extends = "ni"
        budgets = ["it10"]
        synth_options = {{ generator_width = 128 }}
        seeds = {{ prune = [3, 4] }}

        [methods.ni-deep]
        extends = "ni-wide"
    """))
    with pytest.raises(SuiteError, match=r"\[methods.ni-deep\]: extends 'ni-wide', which extends another method"):
        load_suite(path)
    path.write_text(path.read_text().replace('extends = "ni-wide"', 'extends = "di"\nsynth = "noise"\ntasks = ["distill"]'))
    suite = load_suite(path)
    # ni-wide: ni's synth under its own options and budgets; its label and note are its own; seeds by task
    wide = [c for c in suite.cells if c.method == "ni-wide"]
    assert [c.id for c in wide] == ["ni-wide--distill--it10--s0", "ni-wide--prune--it10--s3",
                                    "ni-wide--prune--it10--s4"]
    assert wide[0].config["synth"] == "natural" and wide[0].config["synth_options"] == {"generator_width": 128}
    assert wide[0].method_label == "NaturalInversion, wide"
    # the extending table's keys win; the base's label is not taken
    deep = [c for c in suite.cells if c.method == "ni-deep"]
    assert {c.config["synth"] for c in deep} == {"noise"} and {c.task for c in deep} == {"distill"}
    assert deep[0].method_label == "ni-deep" and len(deep) == 2  # di's budgets (it10, eq), the suite's seed

    for bad, message in [
        ('extends = "nope"', r"extends 'nope', which is not another method of this file; known: noise, di"),
        ("seeds = {{ quantize = [1] }}", r"seeds names task\(s\) quantize this method does not run; its tasks: "
                                         r"distill, prune"),
        ("seeds = {{ prune = [] }}", r"\(task prune\): seeds must be a non-empty list of integers"),
    ]:
        text = SMALL_SUITE + f'\n[methods.odd]\nsynth = "noise"\nbudgets = []\n{bad}\n'
        with pytest.raises(SuiteError, match=message):
            load_suite(make_suite(tmp_path, text, name="odd.toml"))


def test_cells_needing_shared_are_skipped_with_the_reason(tmp_path):
    suite = load_suite(REPO / "benchmarks" / "suites" / "cifar10-cpu.toml", root=tmp_path)
    reasons = {suite.missing_requirements(c) for c in suite.cells}
    assert reasons == {"needs ../shared/models/resnet20-12fca82f.th, which is absent"}


def test_vars_from_env_and_set(monkeypatch):
    path = REPO / "benchmarks" / "suites" / "paper.toml"
    monkeypatch.delenv("DFCOMPRESS_PAPER_WEIGHTS", raising=False)
    suite = load_suite(path)
    assert "set $DFCOMPRESS_PAPER_WEIGHTS or --set weights=VALUE" in suite.missing_requirements(suite.cells[0])
    suite = load_suite(path, overrides={"weights": "r34.pt"})
    assert suite.cells[0].config["weights"] == "r34.pt" and not suite.cells[0].missing
    monkeypatch.setenv("DFCOMPRESS_PAPER_WEIGHTS", "env.pt")
    assert load_suite(path).cells[0].config["weights"] == "env.pt"
    with pytest.raises(SuiteError, match="--set nope: the suite has no such variable"):
        load_suite(path, overrides={"nope": "1"})


@pytest.mark.parametrize("change,message", [
    (("[run]", "[run]\nbogus = 1"), "unknown key(s) bogus"),
    (("iterations = 10", "iterations = 0"), "iterations must be a positive integer"),
    (('method = "di"', 'method = "xx"'), "equal_time.method 'xx' is not a method"),
    (('reuse_synthetic_from = "distill"', 'reuse_synthetic_from = "nope"'), "reuse_synthetic_from must name another task"),
    (('student = "demo:small"', 'student = "${{nope}}"'), "unknown variable ${nope}"),
    (('${{prereq:real}}', '${{prereq:other}}'), "names no [prerequisites.other]"),
    (('[methods.noise]', '[methods.bad--id]\nsynth = "noise"\n[methods.noise]'), "must be letters"),
    (('kind = "real"', 'kind = "other"'), "kind must be one of"),
])
def test_suite_errors(tmp_path, change, message):
    text = SMALL_SUITE.replace(*change)
    path = make_suite(tmp_path, text)
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    assert message in str(exc.value)


def test_only_selects_cells_and_their_dependencies(tmp_path):
    suite = load_suite(make_suite(tmp_path))
    assert [c.id for c in suite.select(["ni--prune--eq*"])] == ["ni--distill--eq--s0", "ni--prune--eq--s0"]
    assert [c.id for c in suite.select(["noise"])] == ["noise--distill--s0", "noise--prune--s0"]
    with pytest.raises(SuiteError, match="matches no cell"):
        suite.select(["zzz"])


def test_run_args_round_trip_through_the_real_run_command(tmp_path):
    """The generated flags are exactly what `dfcompress run` parses into the cell's RunConfig."""
    import click

    from dfcompress.cli import run
    from dfcompress.config import make_run_config

    suite = load_suite(REPO / "benchmarks" / "suites" / "cifar10-cpu.toml")
    cell = suite.cell("deepinversion-adi--prune50--it200--s0")
    config = dict(cell.config, iterations=200)
    args = bench_launch.run_args(config, "out/dir")
    ctx = run.make_context("run", list(args))
    from dfcompress.options import parse_assignments

    params = ctx.params
    parsed = make_run_config({k: v for k, v in params.items() if v is not None and k not in (
        "synth_opt", "distill_opt", "prune_opt", "quant_opt", "config_file", "resume", "as_json")}, {
        "synth_options": parse_assignments(params["synth_opt"], flag="-s"),
        "distill_options": parse_assignments(params["distill_opt"], flag="-d"),
        "prune_options": parse_assignments(params["prune_opt"], flag="-p"),
        "quant_options": parse_assignments(params["quant_opt"], flag="-Q")})
    expected = make_run_config(config, {"out": "out/dir"})
    assert parsed.to_dict() == {**expected.to_dict(), "synth_options": {"adi_scale": "0.2"}, "distill_options": {
        k: bench_launch._flag_value(v) for k, v in expected.distill_options.items()}}
    assert isinstance(ctx, click.Context)


# --- dry runs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite_file", SUITES, ids=[p.stem for p in SUITES])
def test_dry_run_of_every_committed_suite_is_valid(bench_cli, suite_file, tmp_path):
    """Every cell's RunConfig builds and every component name and option is known to the registry
    (the paper suite with a placeholder weights path)."""
    args = ["bench", str(suite_file), "--dry-run", "--results", str(tmp_path / "results")]
    if suite_file.stem == "paper":
        args += ["--set", "weights=placeholder-resnet34.pt"]
    code, out = invoke(bench_cli, args)
    invalid = [line.strip() for line in out.splitlines() if "INVALID" in line or "invalid:" in line]
    assert code == 0 and not invalid, "\n".join(invalid) or out
    suite = load_suite(suite_file, overrides={"weights": "x"} if suite_file.stem == "paper" else None)
    for cell in suite.cells:
        assert cell.id in out
    assert f"{len(suite.cells)} cells:" in out


def test_dry_run_reports_bad_cells_and_exits_2(bench_cli, tmp_path):
    text = SMALL_SUITE.replace('synth = "natural"', 'synth = "natural"\nsynth_options = {{ no_such_option = 1 }}')
    text = text.replace('synth = "noise"', 'synth = "nosie"')
    path = make_suite(tmp_path, text)
    code, out = invoke(bench_cli, ["bench", str(path), "--dry-run"])
    assert code == 2
    assert "unknown synthesizer 'nosie'. Did you mean 'noise'?" in out
    assert "unknown option 'no_such_option' for synthesizer natural" in out
    assert "equal time as 40 iterations of DeepInversion: calibrated at run time" in out
    assert "--iterations '<calibrated at run time>'" in out
    assert not (tmp_path / "benchmarks" / "results").exists()  # a dry run writes nothing


def test_dry_run_checks_prerequisite_commands(bench_cli, tmp_path):
    text = SMALL_SUITE.replace('"--per-class", "2"', '"--per-klass", "2"')
    code, out = invoke(bench_cli, ["bench", str(make_suite(tmp_path, text)), "--dry-run"])
    assert code == 2 and "`dfcompress data import`: No such option '--per-klass'" in out


def test_iterations_budget_rejected_for_a_synthesizer_without_iterations(bench_cli, tmp_path):
    text = SMALL_SUITE.replace('synth = "noise"\nbudgets = []', 'synth = "noise"')
    code, out = invoke(bench_cli, ["bench", str(make_suite(tmp_path, text)), "--dry-run", "--only", "noise"])
    assert code == 2 and "synthesizer noise has no iterations option; give the method budgets = []" in out


def test_the_runner_reads_what_a_synthesizer_does_from_its_declared_capabilities(tmp_path):
    """Whether a method synthesizes against the student comes from its class (``wants_student()``), whatever its
    options are called; a cell whose images were made against the student is not re-made from its settings."""
    from dataclasses import dataclass

    from dfcompress.bench import results
    from dfcompress.bench.capabilities import wants_student
    from dfcompress.components import Synthesizer
    from dfcompress.plugins import get_registry

    @dataclass(frozen=True)
    class RivalConfig:
        rivalry: float = 0.0
        iterations: int = 10

    class Rival(Synthesizer):
        Config = RivalConfig
        uses_student = True
        iterations_option = "iterations"

        def wants_student(self) -> bool:
            return self.config.rivalry > 0

        def synthesize_batch(self, labels, *, generator, student=None):
            raise NotImplementedError

    class Registry:
        def get(self, kind, name):
            assert kind == "synthesizers"
            return Rival if name == "rival" else get_registry().get(kind, name)

    assert wants_student("rival", {"rivalry": "0.5"}, Registry())
    assert not wants_student("rival", {}, Registry())
    assert wants_student("deepinversion", {"adi_scale": 0.2}) and not wants_student("deepinversion", {})
    assert not wants_student("noise", {})

    text = SMALL_SUITE.replace('synth = "deepinversion"', 'synth = "rival"\nsynth_options = {{ rivalry = 1.0 }}')
    suite = load_suite(make_suite(tmp_path, text))
    runner = bench_runner.Runner(suite, registry=Registry())
    out = runner.cell_dir("di--distill--it10--s0")
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    problem = results.restore_images(runner.workspace, runner.launch, "di--distill--it10--s0", Registry())
    assert "were made against its student during distillation" in problem


def test_library_modules_do_not_import_the_command_line():
    code = (
        "import sys, pkgutil, importlib, dfcompress.bench as b\n"
        "for m in pkgutil.iter_modules(b.__path__):\n    importlib.import_module(f'dfcompress.bench.{m.name}')\n"
        "assert 'dfcompress.cli' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_prerequisite_commands_are_checked_against_the_given_command_line(tmp_path, bench_cli):
    text = SMALL_SUITE.replace('"--per-class", "2"', '"--per-klass", "2"')
    suite = load_suite(make_suite(tmp_path, text))
    runner = bench_runner.Runner(suite)
    assert runner.validate_prerequisites(suite.cells) == {"real": None}  # no command line running: not checked
    (problem,) = runner.validate_prerequisites(suite.cells, bench_cli).values()
    assert "`dfcompress data import`: No such option '--per-klass'" in problem


# --- running, resuming ------------------------------------------------------------------------------------


def test_runner_skips_finished_cells_and_resumes_killed_ones(tmp_path, fake, monkeypatch):
    launcher, calls = fake
    suite = load_suite(make_suite(tmp_path))
    runner = bench_runner.Runner(suite, launcher=launcher)
    monkeypatch.setenv("FAKE_DIE", "ni--distill--it10")
    results = runner.run()
    assert results["ni--distill--it10--s0"] == "failed"
    assert results["ni--prune--it10--s0"] == "blocked"
    assert results["di--distill--it10--s0"] == "ok" and results["real--distill--s0"] == "ok"
    first = calls()
    assert first[0][:3] == ["-q", "data", "import"]  # the prerequisite runs first, once
    assert all(c[1] == "run" and "--json" in c and "--out" in c for c in first[1:])
    prune = next(c for c in first if "di--prune--it10--s0" in " ".join(c))
    assert prune[prune.index("--synthetic") + 1] == "benchmarks/results/tiny/di--distill--it10--s0/synthetic"
    failed_dir = runner.cell_dir("ni--distill--it10--s0")
    assert (failed_dir / "config.toml").is_file() and not (failed_dir / "metrics.json").exists()

    monkeypatch.delenv("FAKE_DIE")
    results = runner.run()
    assert set(results.values()) == {"ok"}
    second = calls()
    assert second[0] == ["-q", "run", "--resume", "benchmarks/results/tiny/ni--distill--it10--s0", "--json"]
    assert [c for c in second[1:] if "--resume" in c] == []
    # the equal-time cells finished in the first run (natural was calibrated by a probe run)
    assert {Path(c[c.index("--out") + 1]).name for c in second[1:]} == {"ni--prune--it10--s0"}

    assert runner.run() and calls() == []  # nothing left to do
    attempts = json.loads((failed_dir / "bench.json").read_text())["attempts"]
    assert [a["resumed"] for a in attempts] == [False, True] and [a["exit_code"] for a in attempts] == [1, 0]


def test_results_without_their_git_ignored_files_are_completed(tmp_path, fake):
    """A clone of committed results has each cell's metrics but not its images nor the prerequisites' outputs:
    the runner makes what a pending cell needs again instead of failing it."""
    launcher, calls = fake
    suite = load_suite(make_suite(tmp_path))
    runner = bench_runner.Runner(suite, launcher=launcher)
    only = [c for c in suite.cells if c.id in ("di--distill--it10--s0", "real--distill--s0")]
    assert set(runner.run(only).values()) == {"ok"}
    calls()
    shutil.rmtree(runner.cell_dir("di--distill--it10--s0") / "synthetic")
    shutil.rmtree(runner.results_dir / "_prereq" / "real")
    prune = next(c for c in suite.cells if c.id == "di--prune--it10--s0")
    assert runner.run([prune]) == {"di--prune--it10--s0": "ok"}
    synth, run = calls()
    assert synth[1] == "synthesize" and synth[synth.index("--iterations") + 1] == "10"
    assert synth[synth.index("--out") + 1] == "benchmarks/results/tiny/di--distill--it10--s0/synthetic"
    assert run[1] == "run" and run[run.index("--synthetic") + 1] == synth[synth.index("--out") + 1]
    # a cell that needs the prerequisite makes it again (its done marker alone is not enough)
    (runner.cell_dir("real--distill--s0") / "metrics.json").unlink()
    runner.run([c for c in suite.cells if c.id == "real--distill--s0"])
    assert calls()[0][1:3] == ["data", "import"]
    assert (runner.results_dir / "_prereq" / "real" / "manifest.json").is_file()


def test_equal_time_budget_is_calibrated_from_finished_cells(tmp_path, fake):
    launcher, calls = fake
    suite = load_suite(make_suite(tmp_path))
    runner = bench_runner.Runner(suite, launcher=launcher)
    assert set(runner.run().values()) == {"ok"}
    bench = {c.id: json.loads((runner.cell_dir(c) / "bench.json").read_text()) for c in suite.cells}
    # deepinversion: 0.5 s / iteration, natural: 2.0 s (fake rates); 40 DI iterations = 20 s = 10 NI iterations
    assert bench["di--distill--eq--s0"]["iterations"] == 40
    assert bench["ni--distill--eq--s0"]["iterations"] == 10
    assert bench["ni--prune--eq--s0"]["iterations"] == 10
    assert bench["ni--distill--eq--s0"]["budget"]["target_seconds_per_batch"] == 20.0
    calibration = json.loads(runner.calibration_path.read_text())
    assert calibration["ni|"]["source"] == "cell ni--distill--it10--s0"
    assert not any("_calibration" in " ".join(c) for c in calls())  # no probe was needed

    rows = {r["cell"]: r for r in runner.collect()}
    assert rows["ni--distill--eq--s0"]["iterations"] == 10
    assert "equal time: 20.0 s per batch" in rows["ni--distill--eq--s0"]["iterations_rule"]


def test_equal_time_budget_probes_when_no_cell_measured_it(tmp_path, fake, monkeypatch):
    launcher, calls = fake
    monkeypatch.setenv("FAKE_OVERHEAD", "5")  # each batch also costs 5 s that do not grow with iterations
    suite = load_suite(make_suite(tmp_path))
    runner = bench_runner.Runner(suite, launcher=launcher)
    assert runner.run(suite.select(["ni--distill--eq"])) == {"ni--distill--eq--s0": "ok"}
    made = calls()
    probes = [c for c in made if "_calibration" in " ".join(c)]
    assert len(probes) == 4  # deepinversion and natural, one batch of 4 and one of 12 iterations each
    assert sorted(p[p.index("--iterations") + 1] for p in probes) == ["12", "12", "4", "4"]
    for probe in probes:
        assert probe[probe.index("--num-images") + 1] == "32" and "epochs=1" in probe
        assert "--eval-data" not in probe
    calibration = json.loads(runner.calibration_path.read_text())
    # the differenced probe sees the fake's true rates, the overhead cancels (one run of 4 would say 1.75 s)
    assert calibration["di|"]["seconds_per_iter"] == 0.5 and calibration["ni|"]["seconds_per_iter"] == 2.0
    assert calibration["di|"]["source"].startswith("probe runs of 4 and 12 iterations")
    bench = json.loads((runner.cell_dir("ni--distill--eq--s0") / "bench.json").read_text())
    assert bench["iterations"] == 10



def test_equal_time_probe_pairs_with_the_reference_measured_beside_it(tmp_path, fake):
    """A reference timing stored in an earlier session (here 0.6 s, the machine has since become faster: the
    fake runs DeepInversion at 0.5 s) must not set the count: the reference is probed again beside the method."""
    launcher, calls = fake
    suite = load_suite(make_suite(tmp_path))
    runner = bench_runner.Runner(suite, launcher=launcher)
    runner.calibration_path.parent.mkdir(parents=True, exist_ok=True)
    runner.calibration_path.write_text(json.dumps({"di|": {"seconds_per_iter": 0.6, "source": "an old session"}}))
    stale = runner.results_dir / "_calibration" / "di--it4--beside-ni" / "synthetic" / "shard-00000.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_text("")  # a real run would resume this finished shard instead of timing it again
    assert runner.run(suite.select(["ni--distill--eq"])) == {"ni--distill--eq--s0": "ok"}
    probes = [c for c in calls() if "_calibration" in " ".join(c)]
    assert sorted(p[p.index("--synth") + 1] for p in probes) == ["deepinversion"] * 2 + ["natural"] * 2
    assert sorted(Path(p[p.index("--out") + 1]).name for p in probes) == [
        "di--it12--beside-ni", "di--it4--beside-ni", "ni--it12", "ni--it4"]
    assert not stale.exists()  # the probe started from an empty directory
    calibration = json.loads(runner.calibration_path.read_text())
    assert calibration["di|"]["seconds_per_iter"] == 0.6  # the stored reference entry is left as it was
    ni = calibration["ni|"]
    assert ni["seconds_per_iter"] == 2.0 and ni["reference_seconds_per_iter"] == 0.5 and ni["reference"] == "di"
    assert "di probed in the same session" in ni["source"]
    bench = json.loads((runner.cell_dir("ni--distill--eq--s0") / "bench.json").read_text())
    assert bench["iterations"] == 10  # 40 x 0.5 / 2.0; the stale 0.6 would have given 12
    assert bench["budget"]["target_seconds_per_batch"] == 20.0
    assert "measured in the same session" in bench["iterations_rule"]
    # calibrated once: a re-run of the suite probes nothing more
    before = len(calls())
    (runner.cell_dir("ni--distill--eq--s0") / "metrics.json").unlink()
    shutil.rmtree(runner.cell_dir("ni--distill--eq--s0"))
    runner.run(suite.select(["ni--distill--eq"]))
    assert not any("_calibration" in " ".join(c) for c in calls()[before:])

def test_collected_csv_has_metrics_hardware_and_links(tmp_path, fake):
    import pandas as pd

    launcher, _ = fake
    ref = tmp_path / "benchmarks" / "reference" / "ref.toml"
    ref.parent.mkdir(parents=True)
    ref.write_text(textwrap.dedent("""
        [source]
        title = "peer numbers"
        [settings.s]
        [[settings.s.rows]]
        method = "di"
        label = "DI reference code"
        task = "distill"
        iterations = 10
        top1 = 0.25
    """))
    suite = load_suite(make_suite(tmp_path, reference='reference = { file = "benchmarks/reference/ref.toml", '
                                                      'setting = "s", budget = "it10" }'))
    runner = bench_runner.Runner(suite, launcher=launcher)
    runner.run(suite.select(["di--distill--it10"]))
    path = runner.write_csv()
    assert path == tmp_path / "benchmarks" / "results" / "tiny.csv"
    frame = pd.read_csv(path)
    row = frame[frame["cell"] == "di--distill--it10--s0"].iloc[0]
    assert row["status"] == "ok" and row["models.student.top1"] == 0.5 and row["top1"] == 0.5
    assert row["synthetic.class_histogram"] == "[1, 2]" and row["config.synth"] == "deepinversion"
    assert row["torch_version"] == "0.0-fake" and row["torch_threads"] == 2 and row["cpu_model"]
    assert row["config"] == "tiny/di--distill--it10--s0/config.toml" and (path.parent / row["config"]).is_file()
    assert row["log"] == "tiny/di--distill--it10--s0/log.txt" and len(row["config_hash"]) == 12
    assert row["wall_s"] > 0
    assert frame[frame["cell"] == "ni--distill--it10--s0"].iloc[0]["status"] == "pending"
    teacher = frame[frame["kind"] == "teacher"].iloc[0]
    assert teacher["top1"] == 0.9 and teacher["status"] == "ok"
    reference = frame[frame["kind"] == "reference-code"].iloc[0]
    assert reference["top1"] == 0.25 and reference["budget"] == "it10"
    assert "reference code, measured separately" in reference["note"]


def _bench_with_a_hanging_cell(tmp_path, path, launcher):
    """Start a runner on the cell di--distill--it10 (whose fake run hangs) in its own process group; return it
    once the cell has started."""
    started = tmp_path / "started"
    script = tmp_path / "bench.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from dfcompress.bench.runner import Runner
        from dfcompress.bench.suite import load_suite
        from dfcompress.errors import Interrupted
        suite = load_suite({str(path)!r})
        try:
            Runner(suite, launcher={launcher!r}).run(suite.select(["di--distill--it10"]))
        except Interrupted:
            sys.exit(130)
    """))
    env = dict(os.environ, FAKE_HANG="di--distill--it10", FAKE_STARTED=str(started))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert started.exists()
    return proc


def test_killing_the_bench_and_rerunning_finishes_the_suite(tmp_path, fake):
    """SIGTERM to the runner reaches the running cell, which saves its state and exits 130; the runner
    stops with 130; running again resumes that cell with --resume and finishes."""
    launcher, calls = fake
    path = make_suite(tmp_path)
    proc = _bench_with_a_hanging_cell(tmp_path, path, launcher)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    cell_dir = tmp_path / "benchmarks" / "results" / "tiny" / "di--distill--it10--s0"
    assert (cell_dir / "config.toml").is_file() and not (cell_dir / "metrics.json").exists()
    calls()
    suite = load_suite(path)
    assert bench_runner.Runner(suite, launcher=launcher).run(suite.select(["di--distill--it10"])) == {
        "di--distill--it10--s0": "ok"}
    assert calls() == [["-q", "run", "--resume", "benchmarks/results/tiny/di--distill--it10--s0", "--json"]]


def test_a_cell_killed_with_its_runner_keeps_its_command_and_is_not_stale_once_resumed(tmp_path, fake):
    """kill -9 of the runner and its cell (a machine restart) before the first attempt ends: bench.json already
    records the attempt and the suite's command, so the resumed cell is done, not stale."""
    launcher, calls = fake
    path = make_suite(tmp_path)
    proc = _bench_with_a_hanging_cell(tmp_path, path, launcher)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    calls()
    runner = bench_runner.Runner(load_suite(path), launcher=launcher)
    (killed,) = runner.plan([runner.suite.cell("di--distill--it10--s0")])
    assert killed.status == "resume" and killed.argv[:2] == ["run", "--resume"]
    bench = json.loads((killed.out_dir / "bench.json").read_text())
    assert bench["command"] == killed.command and killed.command.startswith("dfcompress run ")
    assert "--resume" not in bench["command"]
    assert [(a["resumed"], a["exit_code"]) for a in bench["attempts"]] == [(False, None)]
    assert bench_results.cell_row(runner.workspace, killed.cell, tmp_path)["status"] == "pending"

    assert runner.run(runner.suite.select(["di--distill--it10"])) == {"di--distill--it10--s0": "ok"}
    assert calls() == [["-q", "run", "--resume", "benchmarks/results/tiny/di--distill--it10--s0", "--json"]]
    bench = json.loads((killed.out_dir / "bench.json").read_text())
    assert bench["command"] == killed.command
    assert [(a["resumed"], a["exit_code"]) for a in bench["attempts"]] == [(False, None), (True, 0)]
    (done,) = runner.plan([runner.suite.cell("di--distill--it10--s0")])
    assert done.status == "done" and done.reason == ""


def test_bench_command_runs_writes_csv_and_exits_1_on_failure(bench_cli, tmp_path, fake, monkeypatch):
    launcher, calls = fake
    monkeypatch.setattr(bench_launch, "DEFAULT_LAUNCHER", tuple(launcher))
    monkeypatch.setenv("FAKE_DIE", "noise--distill")
    path = make_suite(tmp_path)
    code, out = invoke(bench_cli, ["bench", str(path), "--only", "noise"])
    assert code == 1
    assert "tiny: 0 finished, 1 failed, 0 skipped, 1 blocked" in out and "failed: noise--distill--s0" in out
    assert "blocked: noise--prune--s0" in out
    assert (tmp_path / "benchmarks" / "results" / "tiny.csv").is_file()
    monkeypatch.delenv("FAKE_DIE")
    code, out = invoke(bench_cli, ["bench", str(path), "--only", "noise"])
    assert code == 0 and "tiny: 2 finished, 0 failed" in out


# --- leaderboard ----------------------------------------------------------------------------------------


def _fixture_csv(results: Path) -> Path:
    import pandas as pd

    (results / "demo" / "c1").mkdir(parents=True)
    (results / "demo" / "c1" / "config.toml").write_text("x = 1\n")
    (results / "demo" / "c1" / "log.txt").write_text("log\n")
    base = {"suite": "demo", "model": "", "seed": 0, "real_images": 0, "note": "", "status": "ok",
            "config": "demo/c1/config.toml", "log": "demo/c1/log.txt", "cpu_model": "CPU X", "torch_threads": 2,
            "torch_version": "2.14.1"}
    rows = [
        dict(base, cell="teacher", kind="teacher", method="teacher", method_label="Teacher", top1=0.81,
             budget="", budget_label=""),
        dict(base, cell="noise--distill--s0", kind="synthetic", method="noise", method_label="Gaussian noise",
             task="distill", **{"config.task": "distill"}, budget="", budget_label="", top1=0.11),
        dict(base, cell="di--distill--a--s0", kind="synthetic", method="di", method_label="DeepInversion",
             task="distill", **{"config.task": "distill", "models.student.params": 270_000,
                                "models.student.agreement": 0.21, "timings_s.distill": 200.4}, budget="a", budget_label="200 it", top1=0.2,
             iterations=200),
        dict(base, cell="di--distill--b--s0", kind="synthetic", method="di", method_label="DeepInversion",
             task="distill", **{"config.task": "distill"}, budget="b", budget_label="equal time", top1=0.3,
             iterations=800),
        dict(base, cell="real--distill--s0", kind="real", method="real", method_label="Real 1,280",
             task="distill", **{"config.task": "distill"}, budget="", budget_label="", top1=0.6, real_images=1280),
        dict(base, cell="di--prune5--a--s0", kind="synthetic", method="di", method_label="DeepInversion",
             task="prune5", **{"config.task": "prune", "config.ratio": 0.5, "models.pruned.top1": 0.3,
                               "models.final.params": 134_000, "models.final.macs": 20_500_000,
                               "timings_s.fine-tune": 61.4, "synthetic.teacher_accuracy": 0.625,
                               "synthetic.diversity": 0.41},
             budget="a", budget_label="200 it", top1=0.7),
        dict(base, cell="di--prune9--a--s0", kind="synthetic", method="di", method_label="DeepInversion",
             task="prune9", **{"config.task": "prune", "config.ratio": 0.9}, budget="a", budget_label="200 it",
             top1=0.4),
        dict(base, cell="ni--distill--a--s0", kind="synthetic", method="ni", method_label="NaturalInversion",
             task="distill", **{"config.task": "distill"}, budget="a", budget_label="200 it", status="failed",
             reason="exit 1", top1=None),
        dict(base, cell="reference:di", kind="reference-code", method="di", method_label="DI (NVlabs)",
             task="distill", **{"config.task": "distill"}, budget="a", budget_label="200 it", top1=0.169,
             note="reference code, measured separately", config="../reference/peer-baselines.toml", log=""),
    ]
    path = results / "demo.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_leaderboard_renders_tables_and_plots(tmp_path, bench_cli):
    results = tmp_path / "benchmarks" / "results"
    _fixture_csv(results)
    out = tmp_path / "benchmarks"
    code, text = invoke(bench_cli, ["leaderboard", "demo", "--results", str(results), "--out", str(out)])
    assert code == 0, text
    md = (out / "LEADERBOARD.md").read_text()
    assert "## demo" in md and "6 of 7 cells finished; CPU CPU X; torch threads 2; torch 2.14.1" in md
    table = md.split("### Knowledge distillation")[1].split("###")[0]
    assert "| Method " in table and "| 200 it " in table and "| equal time " in table
    assert "DeepInversion" in table and "20.00" in table and "30.00" in table
    assert "DI (NVlabs) (reference code, measured separately)" in table and "16.90" in table
    assert "Teacher" in table and "81.00" in table and "1,280" in table
    # the main table links no configs or logs: the notes under it say where the other numbers come from
    assert "[config]" not in table and "Config / log" not in table
    assert "| Teacher [1] " in table and "- [1] ([source](results/demo/c1/config.toml))" in table
    assert "DI (NVlabs) (reference code, measured separately) [2]" in table
    assert "- [2] reference code, measured separately\n" in table
    prune = md.split("### Pruning")[1].split("###")[0]
    assert "ratio 0.5" in prune and "ratio 0.9" in prune and "70.00 (before fine-tuning 30.00)" in prune
    assert "failed (exit 1)" in md
    every = md.split("### Every cell")[1]
    assert "| [config](results/demo/c1/config.toml) · [log](results/demo/c1/log.txt) |" in every
    for name in ("demo-distill.png", "demo-prune.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"(plots/{name})" in md
    assert (out / "leaderboard.csv").read_text().count("\n") == 10
    cells = md.split("### Every cell")[1]
    header = [c.strip() for c in cells.splitlines()[2].strip("|").split("|")]
    assert header[:6] == ["cell", "status", "top-1 %", "agrees with teacher %", "params M", "MACs M"]
    assert {"teacher acc. on images %", "diversity", "training s"} <= set(header)
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in cells.splitlines()[4:] if r}
    prune = dict(zip(header, rows["di--prune5--a--s0"]))  # the pruned model's columns where a distill cell's
    distill = dict(zip(header, rows["di--distill--a--s0"]))  # are the student's
    assert (prune["params M"], prune["MACs M"], prune["training s"]) == ("0.134", "20.500", "61")
    assert (prune["teacher acc. on images %"], prune["diversity"]) == ("62.50", "0.41")
    assert (distill["params M"], distill["training s"], distill["agrees with teacher %"]) == ("0.270", "200", "21.00")


def test_distill_plot_shows_the_seed_spread_of_a_method_run_with_several_seeds(tmp_path, monkeypatch):
    import statistics

    import pandas as pd
    from matplotlib.container import BarContainer, ErrorbarContainer

    from dfcompress.bench import plots

    base = {"kind": "synthetic", "status": "ok", "task": "distill", "config.task": "distill", "budget": "a",
            "budget_label": "200 it"}
    frame = pd.DataFrame([dict(base, cell=f"ni--s{i}", method="ni", method_label="NaturalInversion", seed=i, top1=t)
                          for i, t in enumerate((0.30, 0.36, 0.33))]
                         + [dict(base, cell="di--s0", method="di", method_label="DeepInversion", seed=0, top1=0.15)])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_distill(frame, tmp_path / "p.png", "t")
    ax = figures[0].axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)][0]
    assert [round(b.get_width(), 6) for b in bars] == [33.0, 15.0]  # the mean of the seeds, the single run
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 1  # only the method with several seeds
    (segment,) = errorbars[0].lines[2][0].get_segments()
    assert segment[1][0] - segment[0][0] == pytest.approx(2 * statistics.stdev([30.0, 36.0, 33.0]))
    dots = [line for line in ax.lines if line.get_linestyle() == "None" and len(line.get_xdata()) == 3]
    assert sorted(dots[0].get_xdata()) == pytest.approx([30.0, 33.0, 36.0])


def test_leaderboard_shows_the_suite_s_description_and_notes(tmp_path, bench_cli):
    results = tmp_path / "benchmarks" / "results"
    _fixture_csv(results)
    suites = tmp_path / "benchmarks" / "suites"
    suites.mkdir()
    (suites / "demo-suite.toml").write_text(textwrap.dedent("""
        [suite]
        name = "demo"
        description = "the demo recipe"
        notes = ["KD 60 epochs for every row"]
        [methods.noise]
        synth = "noise"
        [tasks.distill]
        task = "distill"
    """))
    code, text = invoke(bench_cli, ["leaderboard", "demo", "--results", str(results), "--out", str(tmp_path / "benchmarks")])
    assert code == 0, text
    md = (tmp_path / "benchmarks" / "LEADERBOARD.md").read_text()
    section = md.split("## demo")[1].split("###")[0]
    assert "Suite [`suites/demo-suite.toml`](suites/demo-suite.toml): the demo recipe." in section
    assert "- KD 60 epochs for every row" in section


def test_leaderboard_without_results_is_an_error(tmp_path, bench_cli):
    from dfcompress.errors import DFCompressError

    with pytest.raises(DFCompressError, match="no result CSVs in"):
        invoke(bench_cli, ["leaderboard", "--results", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(DFCompressError, match="no results for suite nope"):
        invoke(bench_cli, ["leaderboard", "nope", "--results", str(tmp_path), "--out", str(tmp_path)])


# --- data import ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_loaders(monkeypatch):
    import torch
    from torch import nn

    from dfcompress.bench import importing
    from dfcompress.components import InputSpec, Teacher
    from dfcompress.data.real import EvalData

    torch.manual_seed(0)
    spec = InputSpec(image_size=(8, 8), num_classes=4, channels=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    seen = {}

    def load_teacher(name, weights=None, trust_weights=False):
        seen["teacher"] = (name, weights)
        return Teacher(model, spec, name)

    def load_data(data_spec, input_spec, teacher="the teacher"):
        seen["data"] = (data_spec, input_spec)
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
        labels = torch.arange(40) % 4
        return EvalData(images, labels, ["a", "b", "c", "d"], "fake:train")

    monkeypatch.setattr(importing, "_loaders", lambda: (load_data, load_teacher))
    return seen


def test_data_import_writes_a_loadable_data_set(tmp_path, bench_cli, fake_loaders):
    import torch

    from dfcompress.data import synthetic as synthdata
    from dfcompress.errors import DataError

    out = tmp_path / "real"
    code, text = invoke(bench_cli, ["data", "import", "fake:train", "--per-class", "3", "--seed", "5", "--out", str(out),
                                    "--teacher", "cifar:resnet20", "--weights", "w.th"])
    assert code == 0, text
    assert "12 images of 4 classes from fake:train" in text
    assert fake_loaders["teacher"] == ("cifar:resnet20", "w.th")
    data = synthdata.load(out)
    assert data.images.shape == (12, 3, 8, 8) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [3, 3, 3, 3]
    assert ((data.confidence >= 0) & (data.confidence <= 1)).all()
    assert data.manifest["request"]["source"] == "import" and data.manifest["complete"]
    assert synthdata.verify(out) == []
    # the same command again is a no-op; another draw into the same directory is refused
    code, _ = invoke(bench_cli, ["data", "import", "fake:train", "--per-class", "3", "--seed", "5", "--out", str(out),
                                 "--teacher", "cifar:resnet20", "--weights", "w.th"])
    assert code == 0 and torch.equal(synthdata.load(out).images, data.images)
    from dfcompress.bench.importing import import_real

    with pytest.raises(DataError, match="different synthetic data set"):
        import_real("fake:train", out, per_class=2, seed=5, teacher="cifar:resnet20", weights="w.th")
    # a different seed draws other images
    other = import_real("fake:train", tmp_path / "other", per_class=3, seed=6, teacher="cifar:resnet20", weights="w.th")
    assert other["images"] == 12 and not torch.equal(synthdata.load(tmp_path / "other").images, data.images)


def test_bench_plugin_does_not_import_heavy_modules():
    code = (
        "import sys\nimport dfcompress.commands.bench, dfcompress.commands.data, dfcompress.commands.stats\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules]\nassert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path, bench_cli, monkeypatch):
    """The real thing on the demo teacher: prerequisite, three cells, the CSV and the leaderboard."""
    import pandas as pd

    wrapper = tmp_path / "dfc.py"  # the subprocesses need the bench plugin too (for `data import`)
    wrapper.write_text(
        "import dfcompress.plugins as p\n"
        f"m = {PLUGIN!r}\n"
        "if m not in p.DEFAULT_PLUGINS:\n    p.DEFAULT_PLUGINS = (*p.DEFAULT_PLUGINS, m)\n"
        "from dfcompress.cli import main\nmain()\n"
    )
    monkeypatch.setattr(bench_launch, "DEFAULT_LAUNCHER", (sys.executable, str(wrapper)))
    results = tmp_path / "results" / "cifar10-cpu-smoke"
    suite = REPO / "benchmarks" / "suites" / "cifar10-cpu-smoke.toml"
    code, out = invoke(bench_cli, ["bench", str(suite), "--results", str(results)])
    assert code == 0, out + "".join(p.read_text() for p in results.rglob("bench.log"))
    frame = pd.read_csv(tmp_path / "results" / "cifar10-cpu-smoke.csv")
    ours = frame[frame["kind"].isin(["synthetic", "real"])]
    assert len(ours) == 3 and set(ours["status"]) == {"ok"}
    assert ours["top1"].between(0, 1).all() and ours["config_hash"].notna().all()
    assert frame[frame["kind"] == "teacher"]["top1"].iloc[0] > 0.5
    for link in ours["config"].tolist() + ours["log"].tolist():
        assert (tmp_path / "results" / link).is_file()
    code, out = invoke(bench_cli, ["bench", str(suite), "--results", str(results)])
    assert code == 0 and "3 finished" in out  # nothing re-run
    code, out = invoke(bench_cli, ["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")])
    assert code == 0 and (tmp_path / "lb" / "plots" / "cifar10-cpu-smoke-distill.png").is_file()


def test_leaderboard_time_budget_table_and_learning_curves(tmp_path):
    import json

    import pandas as pd

    from dfcompress.bench.leaderboard import Notes, time_curves, time_table

    base = {"kind": "synthetic", "status": "ok", "task": "distill", "task_label": "KD 30 min", "note": "",
            "config.task": "distill", "budget_label": "", "distill.time_budget_s": 1800.0, "distill.total_s": 1801.0}
    curve = [{"round": 10, "seconds": 60.0, "steps": 0, "pool": 2560, "top1": 0.1},
             {"round": 20, "seconds": 400.0, "steps": 400, "pool": 5120, "top1": 0.3}]
    frame = pd.DataFrame([
        dict(base, cell=f"fast--s{seed}", method="fast", method_label="Fast-2", seed=seed, top1=top1,
             **{"distill.schedule": "online", "distill.images": 5120, "distill.synthesis_s": 300.0,
                "distill.training_s": 1500.0, "distill.steps": 3000 + 500 * seed,
                "distill.work_images.synthesis_teacher": 10240,
                "distill.work_images.train_student": 1_000_000, "distill.curve": json.dumps(curve)})
        for seed, top1 in ((0, 0.40), (1, 0.44))
    ] + [dict(base, cell="di--s0", method="di", method_label="DeepInversion", seed=0, top1=0.2,
              **{"distill.schedule": "offline", "distill.images": 1280, "distill.synthesis_s": 900.0,
                 "distill.training_s": 900.0, "distill.work_images.synthesis_teacher": 256_000,
                 "distill.work_images.train_student": 500_000, "distill.curve": "[]"}),
         dict(base, cell="old--s0", method="old", method_label="no budget", seed=0, top1=0.5,
              **{"distill.time_budget_s": None})])
    table = time_table(frame, Notes(tmp_path, tmp_path))
    assert list(table["Method"]) == ["Fast-2", "DeepInversion"]  # cells without a budget are not in it
    fast = table.iloc[0]
    assert fast["top-1 %"] == "42.00 ± 2.83 (n=2)" and fast["images made"] == "5,120"
    assert fast["schedule"] == "online" and fast["work (M images through a model)"] == "1.01"
    assert table.iloc[1]["synthesis s"] == "900"
    assert fast["KD steps"] == "3,250" and table.iloc[1]["KD steps"] == ""  # mean over seeds; absent: blank
    curves = time_curves(frame)
    assert curves["Fast-2 (distill)"] == curve and curves["DeepInversion (distill)"] == []
    from dfcompress.schedule import plot_curve

    png = plot_curve(curves, tmp_path / "c.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_curve({"x": []}, tmp_path / "none.png") is None


def test_a_finished_cell_whose_suite_settings_changed_is_reported_stale(tmp_path):
    """A finished cell keeps its results, but the plan says they are stale when the suite now gives it another
    command (here: another learning rate), so that a changed suite never passes old numbers off as new."""
    from dfcompress.bench.launch import shell_line
    from dfcompress.bench.runner import Runner

    def suite_file(lr: str) -> Path:
        path = tmp_path / "s.toml"
        path.write_text(f"""
[suite]
name = "stale"
seeds = [0]
[run]
num_images = 16
[run.distill_options]
lr = {lr}
[methods.noise]
synth = "noise"
[tasks.distill]
task = "distill"
""")
        return path

    runner = Runner(load_suite(suite_file("0.05"), root=tmp_path), results_dir=tmp_path / "results")
    (plan,) = runner.plan()
    out = runner.cell_dir(plan.cell)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "bench.json").write_text(json.dumps({"command": shell_line(["dfcompress", *plan.argv])}))
    (done,) = runner.plan()
    assert done.status == "done" and done.reason == ""
    runner = Runner(load_suite(suite_file("0.1"), root=tmp_path), results_dir=tmp_path / "results")
    (changed,) = runner.plan()
    assert changed.status == "done" and changed.reason.startswith("stale:")
