"""Plans: what each cell of a suite needs (done, resume, run, skip), its command line and iteration count,
and the problems that would make it fail at once (bad config, unknown component or option, bad command)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import options as opts
from ..config import COMPONENTS, make_run_config
from ..errors import DFCompressError
from .calibrate import Calibrator
from .capabilities import registry_or_default, wants_student
from .launch import current_cli, run_args, shell_line, validate_command
from .suite import Cell
from .workspace import Workspace

logger = logging.getLogger(__name__)


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
    #: the suite's own command for the cell (``dfcompress run ...``), also when ``argv`` resumes it: what
    #: ``bench.json`` records and what the staleness check compares
    command: str = ""
    problems: list[str] = field(default_factory=list)


def registry_problems(config: Any, registry: Any) -> list[str]:
    """Check component names (and their options, when the component loads) against the registry."""
    problems = []
    checks = [("tasks", config.task, None), *[(kind, getattr(config, name), table)
                                              for table, (name, kind, _) in COMPONENTS.items()]]
    if config.then is not None:
        checks.append(("tasks", config.then, None))
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
        if kind == "synthesizers" and config.iterations is not None and cls.iterations_option is None:
            problems.append(f"synthesizer {name} has no iterations option; give the method budgets = []")
        try:
            opts.build(cls.Config, dict(getattr(config, table)), owner=f"{kind[:-1]} {name}")
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


class Planner:
    """Plans the cells of a suite in a results directory."""

    def __init__(self, ws: Workspace, calibrator: Calibrator, registry: Any = None) -> None:
        self.ws = ws
        self.calibrator = calibrator
        self._registry = registry

    @property
    def registry(self) -> Any:
        self._registry = registry_or_default(self._registry)
        return self._registry

    def plan(self, cells: list[Cell] | None = None, *, validate: bool = False, measure: bool = False) -> list[CellPlan]:
        """One plan per cell (default: every cell of the suite); ``measure``: calibrate equal-time budgets by
        probe runs where needed; ``validate``: fill each plan's problems."""
        plans = []
        for cell in cells if cells is not None else self.ws.suite.cells:
            out = self.ws.cell_dir(cell)
            p = CellPlan(cell, out, "run")
            reason = self.ws.suite.missing_requirements(cell)
            if (out / "metrics.json").is_file():
                p.status = "done"
            elif reason:
                p.status, p.reason = "skip", reason
            elif (out / "config.toml").is_file():
                p.status = "resume"
            stored = self.ws.stored_bench(cell)
            if p.status in ("done", "resume") and "iterations" in stored:
                p.iterations, p.iterations_rule = stored["iterations"], stored.get("iterations_rule", "")
                p.budget_info = stored.get("budget", {})
            elif p.status != "skip" or validate:
                p.iterations, p.iterations_rule, p.budget_info = self.calibrator.iterations(cell, measure=measure)
            if p.status == "done":
                p.reason = self.staleness(cell, stored, p.iterations)
            if p.status in ("run", "resume"):
                run = self.run_argv(cell, p.iterations)
                p.command = shell_line(["dfcompress", *run])
                p.argv = run if p.status == "run" else ["run", "--resume", self.ws.rel(out), "--json"]
            if validate:
                p.problems = self.validate(cell, p.iterations)
            plans.append(p)
        return plans

    def run_argv(self, cell: Cell, iterations: int | None) -> list[str]:
        """``run ...``: the command line the suite gives ``cell`` now (without the ``dfcompress`` in front)."""
        config = self.ws.cell_config(cell)
        if iterations is not None:
            config["iterations"] = iterations
        elif cell.budget is not None:  # shown by --dry-run; run() calibrates before launching
            config["iterations"] = "<calibrated at run time>"
        return ["run", *run_args(config, self.ws.rel(self.ws.cell_dir(cell)))]

    def staleness(self, cell: Cell, stored: dict, iterations: int | None) -> str:
        """'' when a finished cell ran the command the suite gives it now, else why its results are stale (they
        are kept: a finished cell is never re-run by itself)."""
        recorded = stored.get("command")
        if not recorded:
            return ""
        now = shell_line(["dfcompress", *self.run_argv(cell, iterations)])
        if now == recorded:
            return ""
        return (f"stale: the suite's settings for this cell changed since it ran; its results are kept (delete "
                f"{self.ws.rel(self.ws.cell_dir(cell))} to run it again)")

    def validate(self, cell: Cell, iterations: int | None) -> list[str]:
        """Problems that would make ``cell`` fail at once (bad config, unknown component or option)."""
        config = self.ws.cell_config(cell)
        if cell.budget is not None:
            config["iterations"] = iterations if iterations is not None else 1
        try:
            run_config = make_run_config(config)
        except DFCompressError as exc:
            return [str(exc)]
        problems = registry_problems(run_config, self.registry)
        if (run_config.task == "distill" and cell.kind == "synthetic" and cell.depends_on is None
                and run_config.synthetic and self._wants_student(run_config)):
            problems.append("ADI needs synthesis against the student: do not reuse a synthetic set")
        return problems

    def _wants_student(self, run_config: Any) -> bool:
        try:
            return wants_student(run_config.synth, run_config.synth_options, self.registry)
        except DFCompressError:  # reported by registry_problems
            return False

    def validate_prerequisites(self, cells: list[Cell], cli: Any = None) -> dict[str, str | None]:
        """The prerequisites the cells need, each with the problem its command has, or None; ``cli``: the
        command line interface to check them with (default: the one running, see
        :func:`~dfcompress.bench.launch.current_cli`; outside a command line they are not checked)."""
        needed = list(dict.fromkeys(p for c in cells for p in c.prerequisites))
        cli = cli if cli is not None else current_cli()
        if cli is None:
            logger.debug("no command line to check the prerequisites' commands with")
            return dict.fromkeys(needed)
        return {pid: validate_command(self.ws.suite.prerequisites[pid].command, cli) for pid in needed}
