"""Run a suite: prerequisites once, then one ``python -m dfcompress run`` subprocess per cell.

A crash costs one row. Re-running finishes the suite: a cell whose run directory has ``metrics.json`` is
skipped, a cell killed mid-way (``config.toml`` but no ``metrics.json``) is continued with
``dfcompress run --resume DIR``. The parts: :mod:`~dfcompress.bench.workspace` (where the results live),
:mod:`~dfcompress.bench.plan` (what each cell needs), :mod:`~dfcompress.bench.calibrate` (equal-wall-clock
budgets), :mod:`~dfcompress.bench.launch` (the subprocesses) and :mod:`~dfcompress.bench.results` (the CSV,
and the restoring of images that committed results do not keep).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import results
from .calibrate import Calibrator
from .launch import Launcher, run_args, run_cell, run_prerequisites, shell_line
from .plan import CellPlan, Planner
from .suite import Cell, Suite
from .workspace import Workspace

__all__ = ["CellPlan", "Runner", "run_args", "shell_line"]

logger = logging.getLogger(__name__)


class Runner:
    """Plans, runs and collects the cells of a suite."""

    def __init__(self, suite: Suite, *, results_dir: str | Path | None = None,
                 launcher: tuple[str, ...] | list[str] | None = None, registry: Any = None) -> None:
        self.suite = suite
        self.workspace = Workspace(suite, results_dir)
        self.launch = Launcher(suite.root, launcher)
        self.calibrator = Calibrator(self.workspace, self.launch)
        self.planner = Planner(self.workspace, self.calibrator, registry)
        self._registry = registry

    @property
    def results_dir(self) -> Path:
        return self.workspace.results_dir

    @property
    def calibration_path(self) -> Path:
        return self.calibrator.path

    def rel(self, path: Path) -> str:
        return self.workspace.rel(path)

    def cell_dir(self, cell: Cell | str) -> Path:
        return self.workspace.cell_dir(cell)

    def plan(self, cells: list[Cell] | None = None, *, validate: bool = False, measure: bool = False) -> list[CellPlan]:
        return self.planner.plan(cells, validate=validate, measure=measure)

    def validate_prerequisites(self, cells: list[Cell], cli: Any = None) -> dict[str, str | None]:
        return self.planner.validate_prerequisites(cells, cli)

    def collect(self) -> list[dict]:
        return results.collect(self.workspace)

    def write_csv(self, rows: list[dict] | None = None) -> Path:
        return results.write_csv(self.workspace, rows)

    def run(self, cells: list[Cell] | None = None, *, on_change: Callable[[], None] | None = None) -> dict[str, str]:
        """Run (or resume) every selected cell not finished yet; cell id -> ok | failed | skipped | blocked."""
        cells = cells if cells is not None else self.suite.cells
        outcome: dict[str, str] = {}
        prereqs = run_prerequisites(self.workspace, self.launch,
                                    [c for c in cells if not (self.cell_dir(c) / "metrics.json").is_file()])
        for cell in cells:
            if (self.cell_dir(cell) / "metrics.json").is_file():
                outcome[cell.id] = "ok"
                stored = self.workspace.stored_bench(cell)
                stale = self.planner.staleness(cell, stored, stored.get("iterations"))
                if stale:
                    logger.warning("%s: %s", cell.id, stale)
                continue
            problem = self._blocker(cell, prereqs, outcome)
            if problem:
                outcome[cell.id], message = problem
                logger.warning("skipping %s: %s", cell.id, message)
                continue
            (plan,) = self.plan([cell], measure=True)
            if plan.status == "run" and cell.budget is not None and plan.iterations is None:
                outcome[cell.id] = "failed"
                logger.error("%s: the equal-time budget could not be calibrated; see %s", cell.id,
                             self.rel(self.results_dir / "_calibration"))
                continue
            outcome[cell.id] = run_cell(self.workspace, self.launch, plan)
            if on_change is not None:
                on_change()
        return outcome

    def _blocker(self, cell: Cell, prereqs: dict[str, str | None], outcome: dict[str, str]) -> tuple[str, str] | None:
        """Why ``cell`` cannot run now, as (skipped | blocked, the reason), or None: a missing requirement, a
        failed prerequisite, or the cell whose images it reuses did not finish or cannot give them again."""
        reason = self.suite.missing_requirements(cell)
        failed_prereq = next((prereqs[p] for p in cell.prerequisites if prereqs.get(p)), None)
        if reason or failed_prereq:
            return "skipped", reason or failed_prereq
        if not cell.depends_on:
            return None
        if outcome.get(cell.depends_on, "ok") != "ok" and not (self.cell_dir(cell.depends_on) / "metrics.json").is_file():
            return "blocked", f"it reuses the images of {cell.depends_on}, which did not finish"
        problem = results.restore_images(self.workspace, self.launch, cell.depends_on, self._registry)
        return ("blocked", problem) if problem else None
