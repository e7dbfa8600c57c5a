"""The leaderboard's PNG plots (matplotlib, Agg): student top-1 per method and budget, and top-1 against the
pruning ratio per method."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .rows import label as _label
from .rows import pct as _pct
from .rows import task_type as _task_type

#: one line style per budget in the pruning plot
LINE_STYLES = ("-", "--", ":", "-.")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finished(frame: Any, task_type: str) -> tuple[Any, Any]:
    """The finished rows of a task type, and the teacher's top-1 values."""
    ok = frame["status"] == "ok"
    return frame[ok & (_task_type(frame) == task_type)], frame[ok & (frame["kind"] == "teacher")]["top1"].dropna()


def plot_distill(frame: Any, path: Path, title: str) -> Path | None:
    """Horizontal bars: student top-1 per method, one bar per budget; the teacher as a dashed line."""
    rows, teacher = _finished(frame, "distill")
    if rows.empty:
        return None
    plt = _pyplot()
    row_labels = rows.apply(_label, axis=1)
    row_budgets = rows["budget_label"].fillna("").replace("", "no synthesis budget")
    labels, budgets = list(dict.fromkeys(row_labels)), list(dict.fromkeys(row_budgets))
    height = 0.8 / max(1, len(budgets))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) * max(1, len(budgets)) ** 0.5 + 1.5))
    seeds_shown = False
    for j, budget in enumerate(budgets):
        ys, xs = [], []
        for i, label in enumerate(labels):
            sub = rows[(row_labels == label) & (row_budgets == budget)]
            values = [p for p in (_pct(v) for v in sub["top1"]) if p is not None]
            if not values:
                continue
            y = i + (j - (len(budgets) - 1) / 2) * height
            ys.append(y)
            xs.append(statistics.mean(values))
            if len(values) > 1:  # several seeds: the bar is their mean, the dots the runs, the line +-1 std
                ax.errorbar(xs[-1], y, xerr=statistics.stdev(values), fmt="none", ecolor="black", capsize=3,
                            zorder=3)
                ax.plot(values, [y] * len(values), "o", color="black", markersize=3, zorder=4,
                        label=None if seeds_shown else "a seed's run (bar: mean, line: ±1 std)")
                seeds_shown = True
        ax.barh(ys, xs, height=height, label=budget)
    for k, value in enumerate(teacher):
        ax.axvline(100 * float(value), color="black", linestyle="--", linewidth=1, label=None if k else "teacher")
    ax.set_yticks(range(len(labels)), [_wrap(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("student top-1 on real test images (%)")
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    return _save(fig, path)


def plot_prune(frame: Any, path: Path, title: str) -> Path | None:
    """Top-1 after fine-tuning against the pruning ratio, one line per method (and budget); the teacher at 0."""
    rows, teacher = _finished(frame, "prune")
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, Any] = {}
    styles: dict[str, str] = {}
    for (method_label, budget), sub in rows.groupby([rows.apply(_label, axis=1), rows["budget_label"].fillna("")],
                                                    sort=False):
        points = sub.groupby(sub["config.ratio"].astype(float))["top1"].apply(
            lambda s: sum(_pct(v) for v in s) / len(s)).sort_index()
        x, y = list(points.index), list(points.values)
        if not teacher.empty:
            x, y = [0.0, *x], [100 * float(teacher.iloc[0]), *y]
        # one colour per method, one line style per budget
        colour = colours.setdefault(method_label, f"C{len(colours) % 10}")
        style = styles.setdefault(budget, LINE_STYLES[len(styles) % len(LINE_STYLES)]) if budget else "-"
        ax.plot(x, y, marker="o", color=colour, linestyle=style,
                label=_wrap(f"{method_label}" + (f" [{budget}]" if budget else ""), 60))
    ax.set_xlabel("pruning ratio (0 = unpruned teacher)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _wrap(label: str, width: int = 45) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
