"""Where a suite's results live: the results directory, each cell's run directory and config, what a cell
stored about itself (``bench.json``), and paths as the subprocesses (run in the repository root) see them.
Torch-free."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .suite import Cell, Suite, results_path


class Workspace:
    """The results directory of a suite (``benchmarks/results/<suite>`` unless another is given)."""

    def __init__(self, suite: Suite, results_dir: str | Path | None = None) -> None:
        self.suite = suite
        self.root = suite.root
        self.results_dir = Path(results_dir) if results_dir is not None else suite.results_dir

    def rel(self, path: Path) -> str:
        """A path as the subprocess (running in the repository root) sees it: relative when inside the root."""
        resolved, root = path.resolve(), self.root.resolve()
        return os.path.relpath(resolved, root) if resolved.is_relative_to(root) else str(resolved)

    def path(self, value: str) -> Path:
        """A suite path (relative to the repository root) as the runner sees it."""
        path = Path(self.relocate(value))
        return path if path.is_absolute() else self.root / path

    def cell_dir(self, cell: Cell | str) -> Path:
        return self.results_dir / (cell if isinstance(cell, str) else cell.id)

    def cell_config(self, cell: Cell) -> dict:
        """The cell's config with suite-relative results paths pointing into this results dir."""
        config = dict(cell.config)
        if cell.depends_on:
            config["synthetic"] = self.rel(self.cell_dir(cell.depends_on) / "synthetic")
        return self.relocate(config)

    def relocate(self, value: Any) -> Any:
        """``value`` (a string, or lists and dicts of them) with the suite's default results directory replaced
        by this one."""
        default = results_path(self.suite.name)
        if self.results_dir.resolve() == (self.root / default).resolve():
            return value
        if isinstance(value, dict):
            return {k: self.relocate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.relocate(v) for v in value]
        if isinstance(value, str) and default in value:
            return value.replace(default, self.rel(self.results_dir))
        return value

    def csv_path(self) -> Path:
        return self.results_dir.parent / f"{self.suite.name}.csv"

    def stored_bench(self, cell: Cell | str) -> dict:
        """What the runner stored about a cell it ran (``bench.json``: iterations, budget, attempts); {} if none."""
        return read_bench(self.cell_dir(cell))


def read_bench(out: Path) -> dict:
    path = out / "bench.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
    return {}
