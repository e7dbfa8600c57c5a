"""Benchmarks: suite files (a grid of cells), a resumable runner with one subprocess per cell, result CSVs
and the leaderboard (Markdown tables and plots).

* :mod:`~dfcompress.bench.suite` parses and validates a suite TOML file into cells (torch-free);
* :mod:`~dfcompress.bench.runner` runs prerequisites and cells (``python -m dfcompress run ...``) from the parts:
  :mod:`~dfcompress.bench.workspace` (the results directory), :mod:`~dfcompress.bench.plan` (what each cell
  needs, and its check), :mod:`~dfcompress.bench.calibrate` (equal-wall-clock budgets),
  :mod:`~dfcompress.bench.launch` (command lines and subprocesses), :mod:`~dfcompress.bench.capabilities` (what a
  synthesizer declares it does) and :mod:`~dfcompress.bench.results` (``benchmarks/results/<suite>.csv``, and
  images that committed results do not keep);
* :mod:`~dfcompress.bench.leaderboard` renders ``benchmarks/LEADERBOARD.md`` and a CSV, with the PNG plots of
  :mod:`~dfcompress.bench.plots` (both read the rows through :mod:`~dfcompress.bench.rows`);
* :mod:`~dfcompress.bench.importing` writes real images in the synthetic-data format (``dfcompress data import``).
"""
from .suite import Cell, Suite, SuiteError, load_suite

__all__ = ["Cell", "Suite", "SuiteError", "load_suite"]
