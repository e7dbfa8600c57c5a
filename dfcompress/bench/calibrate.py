"""Equal-wall-clock budgets: seconds per synthesis iteration of each method, and the iteration count that
gives every method the time the reference method needs.

Seconds per iteration are read from the finished cells of another budget (``calibration.from_budget``) or
measured by short probe runs, the reference method probed again beside each probed method so that the count
rests on a ratio measured in one session; they are stored in ``calibration.json`` so that re-runs give every
cell the same iteration count.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ..errors import Interrupted
from ..io import atomic_write_text
from .launch import Launcher, run_args
from .suite import Cell
from .workspace import Workspace

logger = logging.getLogger(__name__)


def seconds_per_iteration(synthetic_dir: Path) -> tuple[float, int] | None:
    """Mean synthesis seconds per iteration over the finished shards of a data set (and the iterations
    counted), from the per-shard metrics in its manifest; None when there is nothing to measure."""
    path = synthetic_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return None
    seconds = iterations = 0.0
    for shard in manifest.get("shards", []):
        metrics = shard.get("metrics", {})
        its = float(metrics.get("iterations", 0) or 0)
        if its > 0 and "seconds" in metrics:
            seconds += float(metrics["seconds"])
            iterations += its
    if iterations <= 0:
        return None
    return seconds / iterations, int(iterations)


def calibration_key(method: str, model: str | None) -> str:
    return f"{method}|{model or ''}"


class Calibrator:
    """Seconds per iteration per method (``calibration.json`` in the results directory) and equal-time counts."""

    def __init__(self, ws: Workspace, launch: Launcher) -> None:
        self.ws = ws
        self.launch = launch
        self.path = ws.results_dir / "calibration.json"

    def load(self) -> dict:
        if self.path.is_file():
            try:
                return json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                logger.warning("ignoring the unreadable %s", self.path)
        return {}

    def seconds_per_iter(self, cell: Cell, method: str, *, measure: bool, reference: str | None = None,
                         fresh: dict[str, dict | None] | None = None) -> dict | None:
        """Seconds per synthesis iteration of ``method`` (with ``cell``'s model): stored in calibration.json,
        else read from a finished cell of the budget named by ``calibration.from_budget``, else (``measure``)
        measured by a probe run. Only with ``measure`` (a real run, not a dry run) is a new value stored.

        A method probed for an equal-time budget has its ``reference`` method probed in the same session too
        (``reference_seconds_per_iter``): the machine's speed drifts between sessions (10-20 % seen here), so
        its iteration count is taken from the ratio of two timings made side by side, not from a reference
        timing made hours or days before. ``fresh`` holds the probes made in this call chain, to reuse."""
        key = calibration_key(method, cell.model)
        data = self.load()
        if key in data:
            return data[key]
        entry = self._from_cells(cell, method)
        fresh = {} if fresh is None else fresh
        if entry is None and measure:
            entry = fresh[method] = fresh[method] if method in fresh else self._probe(cell, method)
            if entry is not None and reference is not None and reference != method:
                paired = fresh[reference] = (fresh[reference] if reference in fresh
                                             else self._probe(cell, reference, beside=method))
                if paired is None:
                    return None
                entry = {**entry, "reference": reference, "reference_seconds_per_iter": paired["seconds_per_iter"],
                         "source": f"{entry['source']}; {reference} probed in the same session: {paired['source']}"}
        if entry is None or not measure:
            return entry
        entry["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        data = self.load()
        data[key] = entry
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        logger.info("calibration %s: %.4f s per iteration (%s)", key, entry["seconds_per_iter"], entry["source"])
        return entry

    def _from_cells(self, cell: Cell, method: str) -> dict | None:
        """Seconds per iteration of ``method`` from its finished cell in the budget ``calibration.from_budget``."""
        budget = cell.budget
        if budget is None or not budget.calibrate_from:
            return None
        for other in self.ws.suite.cells:
            if (other.method == method and other.model == cell.model and other.budget_id == budget.calibrate_from
                    and other.depends_on is None):
                measured = seconds_per_iteration(self.ws.cell_dir(other) / "synthetic")
                if measured and (self.ws.cell_dir(other) / "metrics.json").is_file():
                    return {"seconds_per_iter": round(measured[0], 6), "iterations_measured": measured[1],
                            "source": f"cell {other.id}"}
        return None

    def _probe_config(self, cell: Cell, method: str) -> dict:
        template = next(c for c in self.ws.suite.cells if c.method == method and c.model == cell.model
                        and c.budget_id == cell.budget_id and c.seed == cell.seed)
        config = self.ws.cell_config(template)
        for key in ("synthetic", "eval_data"):  # the probe times synthesis only
            config.pop(key, None)
        batch = int(config.get("batch_size") or 256)
        config.update(task="distill", num_images=batch)
        config["distill_options"] = {**config.get("distill_options", {}), "epochs": 1}
        return config

    def _probe(self, cell: Cell, method: str, *, beside: str | None = None) -> dict | None:
        """Measure steady-state seconds per iteration with two short runs of one batch, ``probe_iterations``
        and 3 x ``probe_iterations`` iterations: the difference of their synthesis times over the difference of
        their iterations, so that the fixed cost of a batch (the first, slow iterations) is not counted per
        iteration (with one run of 20 iterations it inflated DeepInversion's 0.50 s per iteration to 0.74 s).
        ``beside``: the method this probe is paired with (it names the probe's directory). A probe always starts
        from an empty directory: an earlier probe's finished shard would be resumed, not timed again."""
        name = method + (f"--{cell.model}" if cell.model else "")
        short = cell.budget.probe_iterations
        timed = []
        for iterations in (short, 3 * short):
            out = self.ws.results_dir / "_calibration" / f"{name}--it{iterations}{f'--beside-{beside}' if beside else ''}"
            shutil.rmtree(out, ignore_errors=True)
            config = {**self._probe_config(cell, method), "iterations": iterations}
            args = ["run", *run_args(config, self.ws.rel(out))]
            logger.info("calibrating %s: %s", name, self.launch.line(args))
            log = out.with_name(out.name + ".log")
            rc = self.launch(args, log)
            if rc == 130:
                raise Interrupted("the calibration run was interrupted",
                                  resume_hint=f"dfcompress bench {self.ws.suite.path}")
            measured = seconds_per_iteration(out / "synthetic")
            if rc != 0 or measured is None:
                logger.error("calibration run for %s failed (exit %s); see %s", name, rc, log)
                return None
            timed.append((measured[0] * measured[1], measured[1]))
        (t_short, n_short), (t_long, n_long) = timed
        per_iter = (t_long - t_short) / (n_long - n_short)
        source = f"probe runs of {n_short} and {n_long} iterations, difference ({self.ws.rel(out.parent)})"
        if per_iter <= 0:  # timing noise larger than the extra iterations: fall back to the longer run's mean
            per_iter, source = t_long / n_long, f"probe run of {n_long} iterations ({self.ws.rel(out.parent)})"
        return {"seconds_per_iter": round(per_iter, 6), "iterations_measured": n_long, "source": source}

    def iterations(self, cell: Cell, *, measure: bool) -> tuple[int | None, str, dict]:
        """Iterations per batch for ``cell`` (None: none, or not calibrated yet), the rule, and budget details."""
        budget = cell.budget
        if budget is None:
            return None, "", {}
        if cell.depends_on:  # the images were synthesized by the cell it reuses them from
            stored = self.ws.stored_bench(cell.depends_on)
            if stored.get("iterations") is not None:
                return stored["iterations"], stored.get("iterations_rule", ""), stored.get("budget", {})
        if budget.iterations is not None:
            return budget.iterations, f"fixed: {budget.iterations} per batch", {}
        ref_method, ref_iters = budget.equal_time
        ref_label = self.ws.suite.labels["methods"].get(ref_method, ref_method)
        fresh: dict[str, dict | None] = {}
        ref = self.seconds_per_iter(cell, ref_method, measure=measure, fresh=fresh)
        if cell.method == ref_method:
            info = {}
            if ref:
                info = {"seconds_per_iter": ref["seconds_per_iter"],
                        "target_seconds_per_batch": round(ref_iters * ref["seconds_per_iter"], 2)}
            return ref_iters, f"equal time: reference ({ref_iters} iterations of {ref_label})", info
        own = self.seconds_per_iter(cell, cell.method, measure=measure, reference=ref_method, fresh=fresh)
        if ref is None or own is None:
            return None, f"equal time as {ref_iters} iterations of {ref_label}: calibrated at run time", {}
        paired = "reference_seconds_per_iter" in own
        per_ref = own["reference_seconds_per_iter"] if paired else ref["seconds_per_iter"]
        target = ref_iters * per_ref
        n = max(1, math.floor(target / own["seconds_per_iter"]))
        rule = (f"equal time: {target:.1f} s per batch ({ref_iters} x {per_ref:.3f} s of {ref_label}"
                f"{', measured in the same session' if paired else ''}) / {own['seconds_per_iter']:.3f} s per iteration")
        info = {"seconds_per_iter": own["seconds_per_iter"], "target_seconds_per_batch": round(target, 2),
                "reference_seconds_per_iter": per_ref}
        return n, rule, info
