"""Result rows as the leaderboard and its plots read them (pandas frames of a suite's CSV): percentages,
method labels with their marks, the task type."""
from __future__ import annotations

from typing import Any

#: the kinds of row a suite measures itself (the others are reference-code and published numbers)
OURS = ("synthetic", "real", "teacher")
#: the kinds of row that are cells of the suite (a teacher row is read from a cell)
CELL_KINDS = ("synthetic", "real")
MARKS = {"reference-code": " (reference code, measured separately)", "published": " (published)"}


def pct(value: Any) -> float | None:
    """A fraction as a percentage; None when not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if v != v else 100.0 * v


def label(row: Any) -> str:
    """A row's method label, marked when the number is not ours."""
    return str(row["method_label"]) + MARKS.get(row["kind"], "")


def task_type(frame: Any) -> Any:
    """Each row's task type (distill, prune, ...): the run config's, else the task id."""
    return frame.get("config.task", frame["task"]).fillna("")
