"""Run a suite: prerequisites once, then one ``python -m dfcompress run`` subprocess per cell.

A crash costs one row. Re-running finishes the suite: a cell whose run directory has ``metrics.json`` is
skipped, a cell killed mid-way (``config.toml`` but no ``metrics.json``) is continued with
``dfcompress run --resume DIR``. Equal-wall-clock budgets are calibrated once per suite (seconds per
iteration of every method, read from the finished cells of another budget or measured by short probe runs,
the reference method probed again beside each probed method so that the count rests on a ratio measured in one
session) and stored in ``calibration.json`` so that re-runs give every cell the same iteration count.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..config import SCALAR_FIELDS, SYNTHESIZE_FIELDS, make_run_config
from ..errors import DFCompressError, Interrupted
from ..io import atomic_write_text
from .suite import Cell, Suite, SuiteError

logger = logging.getLogger(__name__)

#: how a dfcompress command is started; tests replace it with a fake script
DEFAULT_LAUNCHER = (sys.executable, "-m", "dfcompress")
COMPONENT_FLAGS = {"synth_options": "-s", "distill_options": "-d", "prune_options": "-p"}


# --- commands ----------------------------------------------------------------------------------------------


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_flag_value(v) for v in value)
    return str(value)


def run_args(config: dict, out: str) -> list[str]:
    """``dfcompress run`` arguments (after ``run``) for a config dict: one flag per set field."""
    args: list[str] = []
    for option in SCALAR_FIELDS:
        value = config.get(option.name)
        if value is None or option.name == "out":
            continue
        flag = "--" + option.name.replace("_", "-")
        if option.type is bool:
            if value:
                args.append(flag)
            continue
        args += [flag, _flag_value(value)]
    for table, flag in COMPONENT_FLAGS.items():
        for key, value in (config.get(table) or {}).items():
            args += [flag, f"{key}={_flag_value(value)}"]
    return [*args, "--out", out, "--json"]


def shell_line(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# --- hardware --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError as exc:
        logger.debug("no /proc/cpuinfo (%s); using the platform's processor string", exc)
    return platform.processor() or platform.machine()


# --- calibration -----------------------------------------------------------------------------------------


def seconds_per_iteration(synthetic_dir: Path) -> tuple[float, int] | None:
    """Mean synthesis seconds per iteration over the finished shards of a data set (and the iterations
    counted), from the per-shard metrics in its manifest; None when there is nothing to measure."""
    path = synthetic_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return None
    seconds = iterations = 0.0
    for shard in manifest.get("shards", []):
        metrics = shard.get("metrics", {})
        its = float(metrics.get("iterations", 0) or 0)
        if its > 0 and "seconds" in metrics:
            seconds += float(metrics["seconds"])
            iterations += its
    if iterations <= 0:
        return None
    return seconds / iterations, int(iterations)


# --- plans -----------------------------------------------------------------------------------------------


@dataclass
class CellPlan:
    cell: Cell
    out_dir: Path
    status: str  # done | resume | run | skip | blocked
    reason: str = ""
    iterations: int | None = None
    iterations_rule: str = ""
    budget_info: dict = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _registry_problems(config: Any, registry: Any) -> list[str]:
    """Check component names (and their options, when the component loads) against the registry."""
    from .. import options as opts

    problems = []
    checks = [("tasks", config.task, None), ("synthesizers", config.synth, "synth_options"),
              ("distillers", config.distiller, "distill_options"), ("pruners", config.pruner, "prune_options")]
    for kind, name, table in checks:
        try:
            registry.entry(kind, name)
        except DFCompressError as exc:
            problems.append(str(exc))
            continue
        if table is None:
            continue
        try:
            cls = registry.get(kind, name)
        except DFCompressError as exc:
            problems.append(f"cannot check the options of {kind[:-1]} {name}: {exc}")
            continue
        values = dict(getattr(config, table))
        if kind == "synthesizers" and config.iterations is not None:
            if "iterations" not in {o.name for o in opts.options_of(cls.Config)}:
                problems.append(f"synthesizer {name} has no iterations option; give the method budgets = []")
        try:
            opts.build(cls.Config, values, owner=f"{kind[:-1]} {name}")
        except DFCompressError as exc:
            problems.append(str(exc))
    for spec in (config.teacher, config.student):
        if spec is None:
            continue
        try:
            from ..models import parse_spec

            parse_spec(spec, registry=registry)
        except DFCompressError as exc:
            problems.append(str(exc))
        except ImportError as exc:
            problems.append(f"model spec {spec}: {exc}")
    return problems


_CLI: list = []


def _cli() -> Any:
    """The dfcompress CLI with the plugins' commands (built once per process)."""
    if not _CLI:
        from ..cli import build_cli, cli

        _CLI.append(cli if any(name in cli.commands for name in ("bench", "leaderboard")) else build_cli())
    return _CLI[0]


def validate_command(argv: list[str]) -> str | None:
    """Parse a dfcompress command line with the real CLI (options and sub-commands); the error, or None."""
    import click

    group: click.Command = _cli()
    args = list(argv)
    path = ["dfcompress"]
    while isinstance(group, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = group.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)} {name}` is not a command (known: {', '.join(sorted(group.commands))})"
        path.append(name)
        group = sub
    try:
        group.make_context(" ".join(path), args, resilient_parsing=False)
    except click.exceptions.Exit:
        return None
    except click.ClickException as exc:
        return f"`{' '.join(path)}`: {exc.format_message()}"
    return None


class Runner:
    """Plans, runs and collects the cells of a suite."""

    def __init__(self, suite: Suite, *, results_dir: str | Path | None = None,
                 launcher: tuple[str, ...] | list[str] | None = None, registry: Any = None) -> None:
        self.suite = suite
        self.root = suite.root
        self.results_dir = Path(results_dir) if results_dir is not None else suite.results_dir
        self.launcher = list(launcher or DEFAULT_LAUNCHER)
        self._registry = registry
        self.calibration_path = self.results_dir / "calibration.json"
        self._proc: subprocess.Popen | None = None

    # paths ---------------------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        """A path as the subprocess (running in the repository root) sees it: relative when inside the root."""
        resolved, root = path.resolve(), self.root.resolve()
        return os.path.relpath(resolved, root) if resolved.is_relative_to(root) else str(resolved)

    def _path(self, value: str) -> Path:
        """A suite path (relative to the repository root) as this runner sees it."""
        path = Path(self._relocate(value))
        return path if path.is_absolute() else self.root / path

    def cell_dir(self, cell: Cell | str) -> Path:
        return self.results_dir / (cell if isinstance(cell, str) else cell.id)

    def _config(self, cell: Cell) -> dict:
        """The cell's config with suite-relative results paths pointing into this runner's results dir."""
        config = dict(cell.config)
        if cell.depends_on:
            config["synthetic"] = self.rel(self.cell_dir(cell.depends_on) / "synthetic")
        return self._relocate(config)

    def _relocate(self, value: Any) -> Any:
        default = f"benchmarks/results/{self.suite.name}"
        if self.results_dir.resolve() == (self.root / default).resolve():
            return value
        if isinstance(value, dict):
            return {k: self._relocate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._relocate(v) for v in value]
        if isinstance(value, str) and default in value:
            return value.replace(default, self.rel(self.results_dir))
        return value

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ..plugins import get_registry

            self._registry = get_registry()
        return self._registry

    # calibration ------------------------------------------------------------------------------------------
    def _load_calibration(self) -> dict:
        if self.calibration_path.is_file():
            try:
                return json.loads(self.calibration_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                logger.warning("ignoring the unreadable %s", self.calibration_path)
        return {}

    def _calibration_key(self, method: str, model: str | None) -> str:
        return f"{method}|{model or ''}"

    def seconds_per_iter(self, cell: Cell, method: str, *, measure: bool, reference: str | None = None,
                         fresh: dict[str, dict | None] | None = None) -> dict | None:
        """Seconds per synthesis iteration of ``method`` (with ``cell``'s model): stored in calibration.json,
        else read from a finished cell of the budget named by ``calibration.from_budget``, else (``measure``)
        measured by a probe run. Only with ``measure`` (a real run, not a dry run) is a new value stored.

        A method probed for an equal-time budget has its ``reference`` method probed in the same session too
        (``reference_seconds_per_iter``): the machine's speed drifts between sessions (10-20 % seen here), so
        its iteration count is taken from the ratio of two timings made side by side, not from a reference
        timing made hours or days before. ``fresh`` holds the probes made in this call chain, to reuse."""
        data = self._load_calibration()
        key = self._calibration_key(method, cell.model)
        if key in data:
            return data[key]
        budget = cell.budget
        entry = None
        if budget is not None and budget.calibrate_from:
            for other in self.suite.cells:
                if (other.method == method and other.model == cell.model and other.budget_id == budget.calibrate_from
                        and other.depends_on is None):
                    measured = seconds_per_iteration(self.cell_dir(other) / "synthetic")
                    if measured and (self.cell_dir(other) / "metrics.json").is_file():
                        entry = {"seconds_per_iter": round(measured[0], 6), "iterations_measured": measured[1],
                                 "source": f"cell {other.id}"}
                        break
        fresh = {} if fresh is None else fresh
        if entry is None and measure:
            entry = fresh[method] = fresh[method] if method in fresh else self._probe(cell, method)
            if entry is not None and reference is not None and reference != method:
                paired = fresh[reference] = (fresh[reference] if reference in fresh
                                             else self._probe(cell, reference, beside=method))
                if paired is None:
                    return None
                entry = {**entry, "reference": reference, "reference_seconds_per_iter": paired["seconds_per_iter"],
                         "source": f"{entry['source']}; {reference} probed in the same session: {paired['source']}"}
        if entry is None or not measure:
            return entry
        entry["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        data = self._load_calibration()
        data[key] = entry
        atomic_write_text(self.calibration_path, json.dumps(data, indent=1, sort_keys=True))
        logger.info("calibration %s: %.4f s per iteration (%s)", key, entry["seconds_per_iter"], entry["source"])
        return entry

    def _probe_config(self, cell: Cell, method: str) -> dict:
        template = next(c for c in self.suite.cells if c.method == method and c.model == cell.model
                        and c.budget_id == cell.budget_id and c.seed == cell.seed)
        config = self._config(template)
        for key in ("synthetic", "eval_data"):  # the probe times synthesis only
            config.pop(key, None)
        batch = int(config.get("batch_size") or 256)
        config.update(task="distill", num_images=batch)
        config["distill_options"] = {**config.get("distill_options", {}), "epochs": 1}
        return config

    def _probe(self, cell: Cell, method: str, *, beside: str | None = None) -> dict | None:
        """Measure steady-state seconds per iteration with two short runs of one batch, ``probe_iterations``
        and 3 x ``probe_iterations`` iterations: the difference of their synthesis times over the difference of
        their iterations, so that the fixed cost of a batch (the first, slow iterations) is not counted per
        iteration (with one run of 20 iterations it inflated DeepInversion's 0.50 s per iteration to 0.74 s).
        ``beside``: the method this probe is paired with (it names the probe's directory). A probe always starts
        from an empty directory: an earlier probe's finished shard would be resumed, not timed again."""
        name = method + (f"--{cell.model}" if cell.model else "")
        short = cell.budget.probe_iterations
        timed = []
        for iterations in (short, 3 * short):
            out = self.results_dir / "_calibration" / f"{name}--it{iterations}{f'--beside-{beside}' if beside else ''}"
            shutil.rmtree(out, ignore_errors=True)
            config = {**self._probe_config(cell, method), "iterations": iterations}
            args = ["run", *run_args(config, self.rel(out))]
            logger.info("calibrating %s: %s", name, shell_line(self.launcher + ["-q", *args]))
            log = out.with_name(out.name + ".log")
            rc = self._launch(args, log)
            if rc == 130:
                raise Interrupted("the calibration run was interrupted",
                                  resume_hint=f"dfcompress bench {self.suite.path}")
            measured = seconds_per_iteration(out / "synthetic")
            if rc != 0 or measured is None:
                logger.error("calibration run for %s failed (exit %s); see %s", name, rc, log)
                return None
            timed.append((measured[0] * measured[1], measured[1]))
        (t_short, n_short), (t_long, n_long) = timed
        per_iter = (t_long - t_short) / (n_long - n_short)
        source = f"probe runs of {n_short} and {n_long} iterations, difference ({self.rel(out.parent)})"
        if per_iter <= 0:  # timing noise larger than the extra iterations: fall back to the longer run's mean
            per_iter, source = t_long / n_long, f"probe run of {n_long} iterations ({self.rel(out.parent)})"
        return {"seconds_per_iter": round(per_iter, 6), "iterations_measured": n_long, "source": source}

    def iterations(self, cell: Cell, *, measure: bool) -> tuple[int | None, str, dict]:
        """Iterations per batch for ``cell`` (None: none, or not calibrated yet), the rule, and budget details."""
        budget = cell.budget
        if budget is None:
            return None, "", {}
        if cell.depends_on:  # the images were synthesized by the cell it reuses them from
            stored = self._stored_bench(self.cell_dir(cell.depends_on))
            if stored.get("iterations") is not None:
                return stored["iterations"], stored.get("iterations_rule", ""), stored.get("budget", {})
        if budget.iterations is not None:
            return budget.iterations, f"fixed: {budget.iterations} per batch", {}
        ref_method, ref_iters = budget.equal_time
        ref_label = self.suite.labels["methods"].get(ref_method, ref_method)
        fresh: dict[str, dict | None] = {}
        ref = self.seconds_per_iter(cell, ref_method, measure=measure, fresh=fresh)
        if cell.method == ref_method:
            info = {}
            if ref:
                info = {"seconds_per_iter": ref["seconds_per_iter"],
                        "target_seconds_per_batch": round(ref_iters * ref["seconds_per_iter"], 2)}
            return ref_iters, f"equal time: reference ({ref_iters} iterations of {ref_label})", info
        own = self.seconds_per_iter(cell, cell.method, measure=measure, reference=ref_method, fresh=fresh)
        if ref is None or own is None:
            return None, f"equal time as {ref_iters} iterations of {ref_label}: calibrated at run time", {}
        paired = "reference_seconds_per_iter" in own
        per_ref = own["reference_seconds_per_iter"] if paired else ref["seconds_per_iter"]
        target = ref_iters * per_ref
        n = max(1, math.floor(target / own["seconds_per_iter"]))
        rule = (f"equal time: {target:.1f} s per batch ({ref_iters} x {per_ref:.3f} s of {ref_label}"
                f"{', measured in the same session' if paired else ''}) / {own['seconds_per_iter']:.3f} s per iteration")
        info = {"seconds_per_iter": own["seconds_per_iter"], "target_seconds_per_batch": round(target, 2),
                "reference_seconds_per_iter": per_ref}
        return n, rule, info

    # planning -------------------------------------------------------------------------------------------
    def plan(self, cells: list[Cell] | None = None, *, validate: bool = False, measure: bool = False) -> list[CellPlan]:
        plans = []
        for cell in cells if cells is not None else self.suite.cells:
            out = self.cell_dir(cell)
            p = CellPlan(cell, out, "run")
            reason = self.suite.missing_requirements(cell)
            if (out / "metrics.json").is_file():
                p.status = "done"
            elif reason:
                p.status, p.reason = "skip", reason
            elif (out / "config.toml").is_file():
                p.status = "resume"
            if p.status == "resume":
                p.argv = ["run", "--resume", self.rel(out), "--json"]
            stored = self._stored_bench(out)
            if p.status in ("done", "resume") and "iterations" in stored:
                p.iterations, p.iterations_rule = stored["iterations"], stored.get("iterations_rule", "")
                p.budget_info = stored.get("budget", {})
            elif p.status != "skip" or validate:
                p.iterations, p.iterations_rule, p.budget_info = self.iterations(cell, measure=measure)
            if p.status == "run":
                config = self._config(cell)
                if p.iterations is not None:
                    config["iterations"] = p.iterations
                elif cell.budget is not None:  # shown by --dry-run; run() calibrates before launching
                    config["iterations"] = "<calibrated at run time>"
                p.argv = ["run", *run_args(config, self.rel(out))]
            if validate:
                p.problems = self.validate(cell, p.iterations)
            plans.append(p)
        return plans

    def validate(self, cell: Cell, iterations: int | None) -> list[str]:
        """Problems that would make ``cell`` fail at once (bad config, unknown component or option)."""
        config = self._config(cell)
        if cell.budget is not None:
            config["iterations"] = iterations if iterations is not None else 1
        try:
            run_config = make_run_config(config)
        except DFCompressError as exc:
            return [str(exc)]
        problems = _registry_problems(run_config, self.registry)
        if run_config.task == "distill" and cell.kind == "synthetic" and cell.depends_on is None:
            if float((run_config.synth_options or {}).get("adi_scale", 0) or 0) > 0 and run_config.synthetic:
                problems.append("ADI needs synthesis against the student: do not reuse a synthetic set")
        return problems

    def validate_prerequisites(self, cells: list[Cell]) -> dict[str, str | None]:
        needed = list(dict.fromkeys(p for c in cells for p in c.prerequisites))
        return {pid: validate_command(self.suite.prerequisites[pid].command) for pid in needed}

    @staticmethod
    def _stored_bench(out: Path) -> dict:
        path = out / "bench.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return {}
        return {}

    # running --------------------------------------------------------------------------------------------
    def _launch(self, args: list[str], log_path: Path) -> int:
        """Run ``dfcompress -q ARGS`` in the repository root, stderr appended to ``log_path``; the exit code.

        SIGTERM to the runner is passed on to the child (which saves its state and exits 130); on Ctrl-C
        the child, which got the signal too, is given time to save its state."""
        argv = [*self.launcher, "-q", *args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {shell_line(argv)}\n")
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(argv, cwd=self.root, stdout=subprocess.DEVNULL, stderr=log, env=env)
            self._proc = proc
            previous = None
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
            try:
                return proc.wait()
            except KeyboardInterrupt:
                try:
                    return proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGINT)
                try:
                    return proc.wait()
                except KeyboardInterrupt:
                    proc.kill()
                    proc.wait()
                    return 130
            finally:
                self._proc = None
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)

    def run_prerequisites(self, cells: list[Cell]) -> dict[str, str | None]:
        """Run the prerequisites the cells need (once: a done marker is kept); id -> failure or None."""
        status: dict[str, str | None] = {}
        for pid in dict.fromkeys(p for c in cells for p in c.prerequisites):
            prereq = self.suite.prerequisites[pid]
            marker = self.results_dir / "_prereq" / f"{pid}.done.json"
            if marker.is_file() and self._path(prereq.out).exists():
                status[pid] = None
                continue
            if marker.is_file():  # committed results keep the marker, not the (git-ignored) output
                logger.info("prerequisite %s: %s is missing, making it again", pid, prereq.out)
            if prereq.missing or any(not (self.root / r).exists() for r in prereq.requires):
                status[pid] = "requirements absent"
                continue
            command = [self._relocate(a) for a in prereq.command]
            logger.info("prerequisite %s: %s", pid, shell_line(self.launcher + ["-q", *command]))
            start = time.perf_counter()
            rc = self._launch(command, self.results_dir / "_prereq" / f"{pid}.log")
            if rc == 130:
                raise Interrupted(f"prerequisite {pid} was interrupted", resume_hint=f"dfcompress bench {self.suite.path}")
            if rc != 0:
                status[pid] = f"prerequisite {pid} failed (exit {rc}; see {self.rel(marker.with_suffix('').with_suffix('.log'))})"
                logger.error("%s", status[pid])
                continue
            atomic_write_text(marker, json.dumps({"command": command, "wall_s": round(time.perf_counter() - start, 2),
                                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                                 indent=1))
            status[pid] = None
        return status

    def run(self, cells: list[Cell] | None = None, *, on_change: Callable[[], None] | None = None) -> dict[str, str]:
        """Run (or resume) every selected cell not finished yet; cell id -> ok | failed | skipped | blocked."""
        cells = cells if cells is not None else self.suite.cells
        results: dict[str, str] = {}
        prereqs = self.run_prerequisites([c for c in cells if not (self.cell_dir(c) / "metrics.json").is_file()])
        for cell in cells:
            out = self.cell_dir(cell)
            if (out / "metrics.json").is_file():
                results[cell.id] = "ok"
                continue
            reason = self.suite.missing_requirements(cell)
            failed_prereq = next((prereqs[p] for p in cell.prerequisites if prereqs.get(p)), None)
            if reason or failed_prereq:
                results[cell.id] = "skipped"
                logger.warning("skipping %s: %s", cell.id, reason or failed_prereq)
                continue
            if cell.depends_on and results.get(cell.depends_on, "ok") != "ok" and not (
                    self.cell_dir(cell.depends_on) / "metrics.json").is_file():
                results[cell.id] = "blocked"
                logger.warning("skipping %s: it reuses the images of %s, which did not finish", cell.id, cell.depends_on)
                continue
            if cell.depends_on:
                problem = self._restore_images(cell.depends_on)
                if problem:
                    results[cell.id] = "blocked"
                    logger.warning("skipping %s: %s", cell.id, problem)
                    continue
            (plan,) = self.plan([cell], measure=True)
            if plan.status == "run" and cell.budget is not None and plan.iterations is None:
                results[cell.id] = "failed"
                logger.error("%s: the equal-time budget could not be calibrated; see %s", cell.id,
                             self.rel(self.results_dir / "_calibration"))
                continue
            results[cell.id] = self._run_cell(plan)
            if on_change is not None:
                on_change()
        return results

    def _restore_images(self, cell_id: str) -> str | None:
        """Make sure the finished cell ``cell_id`` still has its synthetic images (committed results do not keep
        them): synthesize them again with the cell's own settings when they are missing. None, or the problem."""
        out = self.cell_dir(cell_id)
        synthetic = out / "synthetic"
        if (synthetic / "manifest.json").is_file() or not (out / "metrics.json").is_file():
            return None
        cell = next(c for c in self.suite.cells if c.id == cell_id)
        config = self._config(cell)
        if config.get("synthetic"):  # that cell read its images from elsewhere
            return None
        if float((config.get("synth_options") or {}).get("adi_scale", 0) or 0) > 0:
            return (f"the images of {cell_id} were made against its student during distillation and are not kept "
                    f"in the results; delete {self.rel(out / 'metrics.json')} and re-run to make them again")
        stored = self._stored_bench(out)
        if stored.get("iterations") is not None:
            config["iterations"] = stored["iterations"]
        names = {o.name for o in SYNTHESIZE_FIELDS}
        synth_config = {k: v for k, v in config.items() if k in names or k == "synth_options"}
        args = ["synthesize", *run_args(synth_config, self.rel(synthetic))[:-1]]  # no --json
        logger.info("the images of %s are missing; making them again: %s", cell_id,
                    shell_line(self.launcher + ["-q", *args]))
        rc = self._launch(args, out / "bench.log")
        if rc == 130:
            raise Interrupted(f"re-making the images of {cell_id} was interrupted (state saved)",
                              resume_hint=f"dfcompress bench {self.suite.path}")
        if rc != 0 or not (synthetic / "manifest.json").is_file():
            return f"re-making the images of {cell_id} failed (exit {rc}; see {self.rel(out / 'bench.log')})"
        return None

    def _run_cell(self, plan: CellPlan) -> str:
        cell, out = plan.cell, plan.out_dir
        out.mkdir(parents=True, exist_ok=True)
        bench = self._stored_bench(out) or {
            "cell": cell.id, "suite": cell.suite, "method": cell.method, "task": cell.task,
            "budget": plan.budget_info, "budget_id": cell.budget_id, "model": cell.model, "seed": cell.seed,
            "iterations": plan.iterations, "iterations_rule": plan.iterations_rule,
            "command": shell_line(["dfcompress", *plan.argv]), "attempts": [],
        }
        resumed = plan.status == "resume"
        logger.info("%s %s", "resuming" if resumed else "running", cell.id)
        start = time.perf_counter()
        rc = self._launch(plan.argv, out / "bench.log")
        wall = round(time.perf_counter() - start, 2)
        bench["attempts"].append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "resumed": resumed, "exit_code": rc, "wall_s": wall})
        atomic_write_text(out / "bench.json", json.dumps(bench, indent=1))
        if rc == 130:
            raise Interrupted(f"cell {cell.id} was interrupted (state saved)",
                              resume_hint=f"dfcompress bench {self.suite.path} (finished cells are kept)")
        if rc == 0 and (out / "metrics.json").is_file():
            logger.info("%s finished in %.0f s", cell.id, wall)
            return "ok"
        logger.error("%s failed (exit %s) after %.0f s; see %s", cell.id, rc, wall, self.rel(out / "bench.log"))
        return "failed"

    # results --------------------------------------------------------------------------------------------
    def csv_path(self) -> Path:
        return self.results_dir.parent / f"{self.suite.name}.csv"

    def collect(self) -> list[dict]:
        """One row per cell (finished or not), per teacher row, per reference-code and published number."""
        csv_dir = self.csv_path().parent
        rows = [self._cell_row(cell, csv_dir) for cell in self.suite.cells]
        rows += self._teacher_rows(rows)
        rows += self._reference_rows(csv_dir)
        rows += self._published_rows()
        return rows

    def _link(self, path: Path, csv_dir: Path) -> str:
        return os.path.relpath(path.resolve(), csv_dir.resolve())

    def _cell_row(self, cell: Cell, csv_dir: Path) -> dict:
        out = self.cell_dir(cell)
        bench = self._stored_bench(out)
        row: dict[str, Any] = {
            "suite": self.suite.name, "cell": cell.id, "kind": cell.kind, "method": cell.method,
            "method_label": cell.method_label, "task": cell.task, "task_label": cell.task_label,
            "budget": cell.budget_id, "budget_label": cell.budget.label if cell.budget else "",
            "model": cell.model or "", "seed": cell.seed, "real_images": cell.real_images, "note": cell.note,
        }
        metrics_path = out / "metrics.json"
        attempts = bench.get("attempts", [])
        if metrics_path.is_file():
            row["status"] = "ok"
        elif attempts and attempts[-1].get("exit_code") not in (0, 130):
            row["status"] = "failed"
            row["reason"] = f"exit {attempts[-1].get('exit_code')}"
        else:
            reason = self.suite.missing_requirements(cell)
            row["status"], row["reason"] = ("skipped", reason) if reason else ("pending", "")
        row["iterations"] = bench.get("iterations", cell.budget.iterations if cell.budget else None)
        row["iterations_rule"] = bench.get("iterations_rule", "")
        for key, value in (bench.get("budget") or {}).items():
            row[f"bench.{key}"] = value
        config = self._config(cell)
        if (out / "config.toml").is_file():
            try:
                config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError:
                logger.warning("unreadable %s", out / "config.toml")
        row["config_hash"] = cell.config_hash(row["iterations"])
        row.update(flatten(config, "config"))
        if metrics_path.is_file():
            try:
                metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                metrics = {}
                row["status"], row["reason"] = "failed", "unreadable metrics.json"
            row.update(flatten(metrics))
        task_type = config.get("task")
        model_key = {"distill": "student", "prune": "final"}.get(task_type, "student")
        row["top1"] = row.get(f"models.{model_key}.top1")
        env = {}
        if (out / "env.json").is_file():
            try:
                env = json.loads((out / "env.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                env = {}
        row.update({"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": env.get("torch_threads"),
                    "torch_version": env.get("torch"), "python_version": env.get("python"),
                    "dfcompress_version": env.get("dfcompress"),
                    "wall_s": round(sum(a.get("wall_s", 0) for a in attempts), 2) if attempts else None})
        row["config"] = self._link(out / "config.toml", csv_dir) if (out / "config.toml").is_file() else ""
        log = out / "log.txt" if (out / "log.txt").is_file() else out / "bench.log"
        row["log"] = self._link(log, csv_dir) if log.is_file() else ""
        return row

    def _teacher_rows(self, rows: list[dict]) -> list[dict]:
        result = []
        for method_id, label, model in self.suite.teacher_rows:
            source = next((r for r in rows if r["status"] == "ok" and r["model"] == (model or "")
                           and r.get("models.teacher.top1") is not None), None)
            row = {"suite": self.suite.name, "cell": method_id + (f"--{model}" if model else ""), "kind": "teacher",
                   "method": method_id, "method_label": label, "task": "", "task_label": "", "budget": "",
                   "budget_label": "", "model": model or "", "seed": "", "real_images": 0,
                   "status": "ok" if source else "pending"}
            if source:
                for key, value in source.items():
                    if key.startswith("models.teacher.") or key in ("config.teacher", "config.weights", "config.eval_data",
                                                                     "cpu_model", "torch_version", "torch_threads",
                                                                     "config", "log"):
                        row[key] = value
                row["top1"] = source.get("models.teacher.top1")
                row["note"] = f"measured in cell {source['cell']}"
            result.append(row)
        return result

    def _reference_rows(self, csv_dir: Path) -> list[dict]:
        ref = self.suite.reference
        if not ref:
            return []
        path = self.root / ref["file"]
        if not path.is_file():
            logger.warning("reference file %s is absent; no reference-code rows", path)
            return []
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        setting = (data.get("settings") or {}).get(ref.get("setting", ""))
        if setting is None:
            raise SuiteError(f"{path} has no [settings.{ref.get('setting')}]")
        source = data.get("source", {})
        budget = ref.get("budget", "")
        rows = []
        for item in setting.get("rows", []):
            has_budget = item.get("iterations") is not None
            rows.append({
                "suite": self.suite.name, "cell": f"reference:{item['method']}", "kind": "reference-code",
                "method": item["method"], "method_label": item.get("label", item["method"]),
                "task": item.get("task", ""), "task_label": item.get("task", ""),
                "budget": budget if has_budget else "",
                "budget_label": self.suite.labels["budgets"].get(budget, "") if has_budget else "",
                "model": "", "seed": item.get("seed", ""), "status": "ok", "top1": item["top1"],
                "config.task": item.get("task", ""),
                "iterations": item.get("iterations"), "real_images": item.get("real_images", 0),
                "note": "; ".join(x for x in (item.get("note", ""), setting.get("note", ""),
                                              "reference code, measured separately") if x),
                "source": source.get("title", ""), "config": self._link(path, csv_dir),
                "log": source.get("path", ""),
            })
        return rows

    def _published_rows(self) -> list[dict]:
        published = self.suite.published
        source = published.get("source", "")
        rows = []
        for key, item in published.items():
            if key == "source":
                continue
            rows.append({
                "suite": self.suite.name, "cell": f"published:{key}", "kind": "published",
                "method": item.get("method", key), "method_label": item.get("label", key),
                "task": item.get("task", ""), "task_label": item.get("task", ""), "budget": item.get("budget", ""),
                "budget_label": self.suite.labels["budgets"].get(item.get("budget", ""), ""), "model": "",
                "seed": "", "status": "ok", "top1": item["top1"], "config.ratio": item.get("ratio"),
                "config.task": item.get("task", ""),
                "real_images": 0, "note": f"published: {item.get('source', source)}", "source": item.get("source", source),
            })
        return rows

    def write_csv(self, rows: list[dict] | None = None) -> Path:
        import pandas as pd

        rows = rows if rows is not None else self.collect()
        path = self.csv_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows)
        atomic_write_text(path, frame.to_csv(index=False))
        return path


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a.b.c`` keys; lists become JSON text."""
    result: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            result.update(flatten(value, name))
    elif isinstance(data, (list, tuple)):
        result[prefix] = json.dumps(data, default=str)
    else:
        result[prefix] = data
    return result
