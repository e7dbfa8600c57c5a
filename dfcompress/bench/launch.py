"""The subprocesses of a suite: ``dfcompress`` command lines for a cell's config, their check against the
command line interface, and their runs (prerequisites, cells), one subprocess each in the repository root."""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import COMPONENTS, SCALAR_FIELDS
from ..errors import Interrupted
from ..io import atomic_write_text
from .suite import Cell
from .workspace import Workspace

if TYPE_CHECKING:
    from .plan import CellPlan

logger = logging.getLogger(__name__)

#: how a dfcompress command is started; tests replace it with a fake script
DEFAULT_LAUNCHER = (sys.executable, "-m", "dfcompress")
COMPONENT_FLAGS = {table: flag for table, (_, _, flag) in COMPONENTS.items()}


# --- command lines ---------------------------------------------------------------------------------------


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
    return " ".join(shlex.quote(a) for a in argv)


def current_cli() -> Any:
    """The root command of the command line running now (the ``dfcompress`` group that called the bench
    command, with the plugins' commands), or None outside a command line."""
    import click

    ctx = click.get_current_context(silent=True)
    return ctx.find_root().command if ctx is not None else None


def validate_command(argv: list[str], cli: Any) -> str | None:
    """Parse a dfcompress command line with the command line interface ``cli`` (a click group: options and
    sub-commands); the error, or None."""
    import click

    group: click.Command = cli
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


# --- subprocesses ----------------------------------------------------------------------------------------


class Launcher:
    """Runs ``dfcompress -q ARGS`` (``launcher``: how dfcompress is started) in the repository ``root``."""

    def __init__(self, root: Path, launcher: tuple[str, ...] | list[str] | None = None) -> None:
        self.root = root
        self.argv = list(launcher or DEFAULT_LAUNCHER)

    def line(self, args: list[str]) -> str:
        """The command line that :meth:`__call__` runs, for logs."""
        return shell_line([*self.argv, "-q", *args])

    def __call__(self, args: list[str], log_path: Path) -> int:
        """Run ``dfcompress -q ARGS``, stderr appended to ``log_path``; the exit code.

        SIGTERM to the runner is passed on to the child (which saves its state and exits 130); on Ctrl-C
        the child, which got the signal too, is given time to save its state."""
        argv = [*self.argv, "-q", *args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {shell_line(argv)}\n")
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(argv, cwd=self.root, stdout=subprocess.DEVNULL, stderr=log, env=env)
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
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_prerequisites(ws: Workspace, launch: Launcher, cells: list[Cell]) -> dict[str, str | None]:
    """Run the prerequisites the cells need (once: a done marker is kept); id -> failure or None."""
    suite = ws.suite
    status: dict[str, str | None] = {}
    for pid in dict.fromkeys(p for c in cells for p in c.prerequisites):
        prereq = suite.prerequisites[pid]
        marker = ws.results_dir / "_prereq" / f"{pid}.done.json"
        if marker.is_file() and ws.path(prereq.out).exists():
            status[pid] = None
            continue
        if marker.is_file():  # committed results keep the marker, not the (git-ignored) output
            logger.info("prerequisite %s: %s is missing, making it again", pid, prereq.out)
        if prereq.missing or any(not (ws.root / r).exists() for r in prereq.requires):
            status[pid] = "requirements absent"
            continue
        command = [ws.relocate(a) for a in prereq.command]
        logger.info("prerequisite %s: %s", pid, launch.line(command))
        start = time.perf_counter()
        rc = launch(command, ws.results_dir / "_prereq" / f"{pid}.log")
        if rc == 130:
            raise Interrupted(f"prerequisite {pid} was interrupted", resume_hint=f"dfcompress bench {suite.path}")
        if rc != 0:
            status[pid] = f"prerequisite {pid} failed (exit {rc}; see {ws.rel(marker.with_suffix('').with_suffix('.log'))})"
            logger.error("%s", status[pid])
            continue
        atomic_write_text(marker, json.dumps({"command": command, "wall_s": round(time.perf_counter() - start, 2),
                                              "finished": _now()}, indent=1))
        status[pid] = None
    return status


def run_cell(ws: Workspace, launch: Launcher, plan: CellPlan) -> str:
    """Run (or resume) a planned cell, recording the attempt in its ``bench.json``; ok | failed.

    The attempt is recorded before it starts (``exit_code`` null until it ends), so that one killed with the
    runner (kill -9, a machine restart) leaves its record and the cell's command behind; ``command`` is always
    the suite's command for the cell, never the ``--resume`` line that finished it."""
    cell, out = plan.cell, plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    bench = ws.stored_bench(cell) or {
        "cell": cell.id, "suite": cell.suite, "method": cell.method, "task": cell.task,
        "budget": plan.budget_info, "budget_id": cell.budget_id, "model": cell.model, "seed": cell.seed,
        "iterations": plan.iterations, "iterations_rule": plan.iterations_rule,
        "command": plan.command or shell_line(["dfcompress", *plan.argv]), "attempts": [],
    }
    resumed = plan.status == "resume"
    logger.info("%s %s", "resuming" if resumed else "running", cell.id)
    started, start = _now(), time.perf_counter()
    attempt = {"started": started, "resumed": resumed, "exit_code": None, "wall_s": None}
    bench["attempts"].append(attempt)
    atomic_write_text(out / "bench.json", json.dumps(bench, indent=1))
    rc = launch(plan.argv, out / "bench.log")
    attempt.update(exit_code=rc, wall_s=round(time.perf_counter() - start, 2))
    wall = attempt["wall_s"]
    atomic_write_text(out / "bench.json", json.dumps(bench, indent=1))
    if rc == 130:
        raise Interrupted(f"cell {cell.id} was interrupted (state saved)",
                          resume_hint=f"dfcompress bench {ws.suite.path} (finished cells are kept)")
    if rc == 0 and (out / "metrics.json").is_file():
        logger.info("%s finished in %.0f s", cell.id, wall)
        return "ok"
    logger.error("%s failed (exit %s) after %.0f s; see %s", cell.id, rc, wall, ws.rel(out / "bench.log"))
    return "failed"
