"""The results of a suite: one CSV row per cell (finished or not), per teacher row, per reference-code and
published number, written to ``benchmarks/results/<suite>.csv``; and the restoring of a finished cell's
synthetic images, which committed results do not keep."""
from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import tomllib

from ..config import SYNTHESIZE_FIELDS, make_run_config
from ..errors import DFCompressError, Interrupted
from ..io import atomic_write_text
from .capabilities import wants_student
from .launch import Launcher, run_args
from .suite import Cell, Suite, SuiteError
from .workspace import Workspace

logger = logging.getLogger(__name__)


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError as exc:
        logger.debug("no /proc/cpuinfo (%s); using the platform's processor string", exc)
    return platform.processor() or platform.machine()


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


# --- rows ------------------------------------------------------------------------------------------------


def collect(ws: Workspace) -> list[dict]:
    """One row per cell (finished or not), per teacher row, per reference-code and published number."""
    csv_dir = ws.csv_path().parent
    rows = [cell_row(ws, cell, csv_dir) for cell in ws.suite.cells]
    rows += teacher_rows(ws.suite, rows)
    rows += reference_rows(ws.suite, csv_dir)
    rows += published_rows(ws.suite)
    return rows


def write_csv(ws: Workspace, rows: list[dict] | None = None) -> Path:
    import pandas as pd

    rows = rows if rows is not None else collect(ws)
    path = ws.csv_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    return path


def _link(path: Path, csv_dir: Path) -> str:
    return os.path.relpath(path.resolve(), csv_dir.resolve())


def _read_json(path: Path) -> dict | None:
    """A JSON file's data: {} when absent, None when unreadable."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _status(ws: Workspace, cell: Cell, attempts: list[dict]) -> dict[str, str]:
    if (ws.cell_dir(cell) / "metrics.json").is_file():
        return {"status": "ok"}
    if attempts and attempts[-1].get("exit_code") not in (0, 130, None):  # None: killed or still running
        return {"status": "failed", "reason": f"exit {attempts[-1].get('exit_code')}"}
    reason = ws.suite.missing_requirements(cell)
    return {"status": "skipped", "reason": reason} if reason else {"status": "pending", "reason": ""}


def cell_row(ws: Workspace, cell: Cell, csv_dir: Path) -> dict:
    out = ws.cell_dir(cell)
    bench = ws.stored_bench(cell)
    row: dict[str, Any] = {
        "suite": ws.suite.name, "cell": cell.id, "kind": cell.kind, "method": cell.method,
        "method_label": cell.method_label, "task": cell.task, "task_label": cell.task_label,
        "budget": cell.budget_id, "budget_label": cell.budget.label if cell.budget else "",
        "model": cell.model or "", "seed": cell.seed, "real_images": cell.real_images, "note": cell.note,
    }
    attempts = bench.get("attempts", [])
    row.update(_status(ws, cell, attempts))
    row["iterations"] = bench.get("iterations", cell.budget.iterations if cell.budget else None)
    row["iterations_rule"] = bench.get("iterations_rule", "")
    for key, value in (bench.get("budget") or {}).items():
        row[f"bench.{key}"] = value
    config = ws.cell_config(cell)
    if (out / "config.toml").is_file():
        try:
            config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError:
            logger.warning("unreadable %s", out / "config.toml")
    row["config_hash"] = cell.config_hash(row["iterations"])
    row.update(flatten(config, "config"))
    metrics = _read_json(out / "metrics.json")
    if metrics is None:
        row["status"], row["reason"] = "failed", "unreadable metrics.json"
    row.update(flatten(metrics or {}))
    # the run names the row of its end result; runs made before it did: the built-in tasks' final rows
    model_key = (metrics or {}).get("result") or {"distill": "student", "prune": "final"}.get(config.get("task"), "student")
    row["top1"] = row.get(f"models.{model_key}.top1")
    env = _read_json(out / "env.json") or {}
    row.update({"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": env.get("torch_threads"),
                "torch_version": env.get("torch"), "python_version": env.get("python"),
                "dfcompress_version": env.get("dfcompress"),
                "wall_s": round(sum(a.get("wall_s") or 0 for a in attempts), 2) if attempts else None})
    row["config"] = _link(out / "config.toml", csv_dir) if (out / "config.toml").is_file() else ""
    log = out / "log.txt" if (out / "log.txt").is_file() else out / "bench.log"
    row["log"] = _link(log, csv_dir) if log.is_file() else ""
    return row


#: what a teacher row takes from the finished cell that measured the teacher
TEACHER_KEYS = ("config.teacher", "config.weights", "config.eval_data", "cpu_model", "torch_version", "torch_threads",
                "config", "log")


def teacher_rows(suite: Suite, rows: list[dict]) -> list[dict]:
    result = []
    for method_id, label, model in suite.teacher_rows:
        source = next((r for r in rows if r["status"] == "ok" and r["model"] == (model or "")
                       and r.get("models.teacher.top1") is not None), None)
        row = {"suite": suite.name, "cell": method_id + (f"--{model}" if model else ""), "kind": "teacher",
               "method": method_id, "method_label": label, "task": "", "task_label": "", "budget": "",
               "budget_label": "", "model": model or "", "seed": "", "real_images": 0,
               "status": "ok" if source else "pending"}
        if source:
            row.update({k: v for k, v in source.items() if k.startswith("models.teacher.") or k in TEACHER_KEYS})
            row["top1"] = source.get("models.teacher.top1")
            row["note"] = f"measured in cell {source['cell']}"
        result.append(row)
    return result


def reference_rows(suite: Suite, csv_dir: Path) -> list[dict]:
    ref = suite.reference
    if not ref:
        return []
    path = suite.root / ref["file"]
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
            "suite": suite.name, "cell": f"reference:{item['method']}", "kind": "reference-code",
            "method": item["method"], "method_label": item.get("label", item["method"]),
            "task": item.get("task", ""), "task_label": item.get("task", ""),
            "budget": budget if has_budget else "",
            "budget_label": suite.labels["budgets"].get(budget, "") if has_budget else "",
            "model": "", "seed": item.get("seed", ""), "status": "ok", "top1": item["top1"],
            "config.task": item.get("task", ""),
            "iterations": item.get("iterations"), "real_images": item.get("real_images", 0),
            "note": "; ".join(x for x in (item.get("note", ""), setting.get("note", ""),
                                          "reference code, measured separately") if x),
            "source": source.get("title", ""), "config": _link(path, csv_dir),
            "log": source.get("path", ""),
        })
    return rows


def published_rows(suite: Suite) -> list[dict]:
    published = suite.published
    source = published.get("source", "")
    rows = []
    for key, item in published.items():
        if key == "source":
            continue
        rows.append({
            "suite": suite.name, "cell": f"published:{key}", "kind": "published",
            "method": item.get("method", key), "method_label": item.get("label", key),
            "task": item.get("task", ""), "task_label": item.get("task", ""), "budget": item.get("budget", ""),
            "budget_label": suite.labels["budgets"].get(item.get("budget", ""), ""), "model": "",
            "seed": "", "status": "ok", "top1": item["top1"], "config.ratio": item.get("ratio"),
            "config.task": item.get("task", ""),
            "real_images": 0, "note": f"published: {item.get('source', source)}", "source": item.get("source", source),
        })
    return rows


# --- restoring -------------------------------------------------------------------------------------------


def restore_images(ws: Workspace, launch: Launcher, cell_id: str, registry: Any = None) -> str | None:
    """Make sure the finished cell ``cell_id`` still has its synthetic images (committed results do not keep
    them): synthesize them again with the cell's own settings when they are missing. None, or the problem."""
    out = ws.cell_dir(cell_id)
    synthetic = out / "synthetic"
    if (synthetic / "manifest.json").is_file() or not (out / "metrics.json").is_file():
        return None
    config = ws.cell_config(ws.suite.cell(cell_id))
    if config.get("synthetic"):  # that cell read its images from elsewhere
        return None
    try:
        run_config = make_run_config(config)
        against_student = wants_student(run_config.synth, run_config.synth_options, registry)
    except DFCompressError as exc:
        return f"cannot make the images of {cell_id} again: {exc}"
    if against_student:
        return (f"the images of {cell_id} were made against its student during distillation and are not kept "
                f"in the results; delete {ws.rel(out / 'metrics.json')} and re-run to make them again")
    stored = ws.stored_bench(cell_id)
    if stored.get("iterations") is not None:
        config["iterations"] = stored["iterations"]
    names = {o.name for o in SYNTHESIZE_FIELDS}
    synth_config = {k: v for k, v in config.items() if k in names or k == "synth_options"}
    args = ["synthesize", *run_args(synth_config, ws.rel(synthetic))[:-1]]  # no --json
    logger.info("the images of %s are missing; making them again: %s", cell_id, launch.line(args))
    rc = launch(args, out / "bench.log")
    if rc == 130:
        raise Interrupted(f"re-making the images of {cell_id} was interrupted (state saved)",
                          resume_hint=f"dfcompress bench {ws.suite.path}")
    if rc != 0 or not (synthetic / "manifest.json").is_file():
        return f"re-making the images of {cell_id} failed (exit {rc}; see {ws.rel(out / 'bench.log')})"
    return None
