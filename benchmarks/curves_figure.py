"""Learning curves of time-budget cells side by side: student top-1 against minutes and against KD steps.

Reads the ``distill.curve`` of each cell's committed ``metrics.json`` (written by ``dfcompress run --eval-every``);
no model runs. Cells of one method over several seeds (``NAME--s0``, ``--s1`` ...) can be named one by one.

Run from the repository root::

    .venv/bin/python benchmarks/curves_figure.py --suite cifar10-cpu-time \\
        fast2--distill--s0 fast2-b64--distill--s0 fast2-b32--distill--s0 --out docs/images/fast2-30m-curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(cell_dir: Path) -> list[dict]:
    metrics = json.loads((cell_dir / "metrics.json").read_text())
    return metrics["distill"]["curve"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="+", help="cell ids under benchmarks/results/SUITE/")
    parser.add_argument("--suite", default="cifar10-cpu-time")
    parser.add_argument("--results", default="benchmarks/results", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for cell in args.cells:
        points = curve(args.results / args.suite / cell)
        minutes = [p["seconds"] / 60 for p in points]
        steps = [p["steps"] for p in points]
        top1 = [100 * p["top1"] for p in points]
        by_time.plot(minutes, top1, marker="o", markersize=3, label=cell)
        by_steps.plot(steps, top1, marker="o", markersize=3, label=cell)
    by_time.set_xlabel("minutes (synthesis + training)")
    by_steps.set_xlabel("KD steps (batch 128)")
    by_time.set_ylabel("student top-1 %")
    for ax in (by_time, by_steps):
        ax.grid(alpha=0.3)
    by_steps.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
