"""Benchmarks: suite files (a grid of cells), a resumable runner with one subprocess per cell, result CSVs
and the leaderboard (Markdown tables and plots).

* :mod:`~dfcompress.bench.suite` parses and validates a suite TOML file into cells (torch-free);
* :mod:`~dfcompress.bench.runner` runs prerequisites and cells (``python -m dfcompress run ...``), calibrates
  equal-wall-clock budgets and writes ``benchmarks/results/<suite>.csv``;
* :mod:`~dfcompress.bench.leaderboard` renders ``benchmarks/LEADERBOARD.md``, a CSV and PNG plots;
* :mod:`~dfcompress.bench.importing` writes real images in the synthetic-data format (``dfcompress data import``).
"""
from .suite import Cell, Suite, SuiteError, load_suite

__all__ = ["Cell", "Suite", "SuiteError", "load_suite"]
