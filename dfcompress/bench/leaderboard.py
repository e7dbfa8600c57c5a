"""The leaderboard: ``benchmarks/LEADERBOARD.md`` (pandas tables as Markdown via tabulate), a combined CSV, and
PNG plots (matplotlib, Agg) from the suites' result CSVs ``benchmarks/results/<suite>.csv``.

Per suite: student top-1 per method and budget (like NaturalInversion's Table 5), top-1 against the pruning
ratio per method (like its Figure 6), and every cell with its key metrics and links to its config.toml and
log. Reference-code rows (measured separately) and published numbers are marked as such, their sources in
notes under the table. The plots are drawn by :mod:`~dfcompress.bench.plots`.
"""
from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path
from typing import Any

from ..errors import DFCompressError
from ..io import atomic_write_text
from .rows import CELL_KINDS, OURS
from .rows import label as _label
from .rows import pct as _pct
from .rows import task_type as _task_type

logger = logging.getLogger(__name__)

KIND_ORDER = {"teacher": 0, "real": 1, "synthetic": 2, "reference-code": 3, "published": 4}


def find_csvs(results_dir: Path, suites: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The result CSVs to render: each argument a suite name or a CSV path; none means every CSV."""
    if not suites:
        paths = sorted(results_dir.glob("*.csv"))
        if not paths:
            raise DFCompressError(f"no result CSVs in {results_dir}; run `dfcompress bench SUITE` first")
        return paths
    paths = []
    for name in suites:
        path = Path(name)
        if path.suffix == ".toml":
            path = results_dir / f"{path.stem}.csv"
        elif path.suffix != ".csv":
            path = results_dir / f"{name}.csv"
        if not path.is_file():
            raise DFCompressError(f"no results for suite {name}: {path} does not exist")
        paths.append(path)
    return paths


def _fmt_runs(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _links(row: Any, link_base: Path, csv_dir: Path) -> str:
    """``[config](...) · [log](...)`` of a cell, relative to ``link_base``; a target that does not exist beside
    the CSV is shown as given."""
    links = []
    for key in ("config", "log"):
        target = row.get(key)
        if isinstance(target, str) and target:
            local = csv_dir / target
            path = os.path.relpath(local.resolve(), link_base.resolve()) if local.exists() else target
            links.append(f"[{key}]({path})")
    return " · ".join(links)


def _source(r: Any, link_base: Path, csv_dir: Path) -> str:
    """A row's note and, when it exists, a link to its source file (a reference file, the teacher's cell)."""
    text = str(r.get("note") or "")
    target = r.get("config")
    if isinstance(target, str) and target and (csv_dir / target).exists():
        text += f" ([source]({os.path.relpath((csv_dir / target).resolve(), link_base.resolve())}))"
    return text


class Notes:
    """The notes under a main table: where its teacher, reference-code and published numbers come from (our
    cells' configs and logs are linked from the "Every cell" table instead). Rows with the same note share it."""

    def __init__(self, link_base: Path, csv_dir: Path) -> None:
        self.link_base, self.csv_dir = link_base, csv_dir
        self.texts: list[str] = []

    def method(self, rows: Any) -> str:
        """The Method cell of ``rows`` (one method's rows): its label and, for a number not from our cells, the
        number of its note."""
        first = rows.iloc[0]
        text = _source(first, self.link_base, self.csv_dir).strip() if first["kind"] not in CELL_KINDS else ""
        if not text:
            return _label(first)
        if text not in self.texts:
            self.texts.append(text)
        return f"{_label(first)} [{self.texts.index(text) + 1}]"

    def markdown(self) -> list[str]:
        """The notes as Markdown lines (none when there are none)."""
        return [f"- [{i}] {text}" for i, text in enumerate(self.texts, 1)] + ([""] if self.texts else [])


def distill_table(frame: Any, notes: Notes) -> Any:
    """Method x budget: student top-1 % (teacher: its own top-1; budget-free rows in their own column)."""
    import pandas as pd

    rows = frame[(frame["status"] == "ok") & ((_task_type(frame) == "distill") | (frame["kind"] == "teacher"))]
    if rows.empty:
        return pd.DataFrame()
    budgets = [b for b in dict.fromkeys(rows["budget_label"].fillna("")) if b]
    out = []
    keys = list(dict.fromkeys(zip(rows["kind"], rows["method"])))
    keys.sort(key=lambda k: KIND_ORDER.get(k[0], 9))
    for kind, method in keys:
        sub = rows[(rows["kind"] == kind) & (rows["method"] == method)]
        entry = {"Method": notes.method(sub)}
        for b in budgets:
            entry[b] = _fmt_runs([_pct(v) for v in sub[sub["budget_label"].fillna("") == b]["top1"]])
        entry["no synthesis budget"] = _fmt_runs([_pct(v) for v in sub[sub["budget_label"].fillna("") == ""]["top1"]])
        real = sub["real_images"].fillna(0).max() if "real_images" in sub else 0
        entry["real images used"] = f"{int(real):,}" if real else "0"
        out.append(entry)
    table = pd.DataFrame(out)
    if (table["no synthesis budget"] == "").all():
        table = table.drop(columns=["no synthesis budget"])
    return table


WORK_PREFIX = "distill.work_images."


def time_table(frame: Any, notes: Notes) -> Any:
    """Time-budget cells (``--time-budget``): per method and task, the images made, seconds of synthesis and
    training, the KD steps taken, the machine-independent work count and the top-1 (mean ± std over seeds).
    Steps and work tell apart a better method from a faster machine: cells of one suite may run on different
    machines."""
    import pandas as pd

    if "distill.time_budget_s" not in frame:
        return pd.DataFrame()
    rows = frame[(frame["status"] == "ok") & frame["distill.time_budget_s"].notna()]
    if rows.empty:
        return pd.DataFrame()
    work_columns = [c for c in rows.columns if c.startswith(WORK_PREFIX)]
    out = []
    for (method, task), sub in rows.groupby(["method", "task"], sort=False):
        def mean(column: str) -> str:
            values = [float(v) for v in sub[column].dropna()] if column in sub else []
            return f"{statistics.mean(values):,.0f}" if values else ""

        work = sub[work_columns].fillna(0).sum(axis=1) if work_columns else None
        out.append({
            "Method": notes.method(sub), "task": str(sub["task_label"].iloc[0]),
            "schedule": str(sub["distill.schedule"].iloc[0]) if "distill.schedule" in sub else "",
            "budget s": mean("distill.time_budget_s"), "images made": mean("distill.images"),
            "synthesis s": mean("distill.synthesis_s"), "training s": mean("distill.training_s"),
            "KD steps": mean("distill.steps"), "total s": mean("distill.total_s"),
            "work (M images through a model)": f"{work.mean() / 1e6:.2f}" if work is not None else "",
            "top-1 %": _fmt_runs([_pct(v) for v in sub["top1"]]),
        })
    return pd.DataFrame(out)


def time_curves(frame: Any) -> dict[str, list[dict]]:
    """The learning curves of the time-budget cells, by cell label (seed 0 of each method and task)."""
    import json

    if "distill.curve" not in frame:
        return {}
    rows = frame[(frame["status"] == "ok") & frame["distill.curve"].notna()]
    curves = {}
    for _, row in rows.iterrows():
        label = f"{row['method_label']} ({row['task']})"
        if label not in curves:
            curves[label] = json.loads(row["distill.curve"])
    return curves


def prune_table(frame: Any, notes: Notes) -> Any:
    """Method x budget rows, one column per pruning ratio: top-1 % after fine-tuning."""
    import pandas as pd

    rows = frame[(frame["status"] == "ok") & (_task_type(frame) == "prune")]
    if rows.empty:
        return pd.DataFrame()
    ratios = sorted({float(r) for r in rows["config.ratio"].dropna()})
    out = []
    for (kind, method, budget), sub in rows.groupby(["kind", "method", rows["budget_label"].fillna("")], sort=False):
        entry = {"Method": notes.method(sub), "Budget": budget or "–"}
        for ratio in ratios:
            at = sub[sub["config.ratio"].astype(float) == ratio]
            entry[f"ratio {ratio:g}"] = _fmt_runs([_pct(v) for v in at["top1"]])
            if "models.pruned.top1" in at and kind in OURS:
                before = _fmt_runs([_pct(v) for v in at["models.pruned.top1"]])
                if before:
                    entry[f"ratio {ratio:g}"] += f" (before fine-tuning {before})"
        out.append(entry)
    return pd.DataFrame(out)


#: (CSV column, or columns of which the first set one counts; title; format) of the "Every cell" table. The
#: model columns are the student's for distillation and the pruned + fine-tuned model's for pruning.
CELL_COLUMNS = [
    ("cell", "cell", None), ("status", "status", None), ("top1", "top-1 %", "pct"),
    (("models.student.agreement", "models.final.agreement"), "agrees with teacher %", "pct"),
    (("models.student.params", "models.final.params"), "params M", "mega"),
    (("models.student.macs", "models.final.macs"), "MACs M", "mega"),
    ("iterations", "iterations / batch", "int"),
    ("synthetic.teacher_accuracy", "teacher acc. on images %", "pct"), ("synthetic.diversity", "diversity", "float"),
    ("synthetic.feature_fd", "feature FD", "float"),
    ("timings_s.synthesize", "synthesis s", "int"), (("timings_s.distill", "timings_s.fine-tune"), "training s", "int"),
    ("wall_s", "wall s", "int"),
]


def _first_set(row: Any, keys: str | tuple[str, ...]) -> Any:
    for key in (keys,) if isinstance(keys, str) else keys:
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and v != v) and v != "":
            return v
    return None


def cells_table(frame: Any, link_base: Path, csv_dir: Path) -> Any:
    import pandas as pd

    rows = frame[frame["kind"].isin(CELL_KINDS)]
    out = []
    for _, r in rows.iterrows():
        entry = {}
        for key, title, fmt in CELL_COLUMNS:
            if not any(k in frame for k in ((key,) if isinstance(key, str) else key)):
                continue
            v = _first_set(r, key)
            if fmt == "pct":
                p = _pct(v)
                entry[title] = f"{p:.2f}" if p is not None else ""
            elif fmt in ("int", "float", "mega"):
                try:
                    f = float(v)
                    entry[title] = "" if f != f else (f"{f:.0f}" if fmt == "int" else f"{f / 1e6:.3f}" if fmt == "mega"
                                                      else f"{f:.3g}")
                except (TypeError, ValueError):
                    entry[title] = ""
            else:
                entry[title] = "" if v is None or (isinstance(v, float) and v != v) else str(v)
        if r.get("status") != "ok" and isinstance(r.get("reason"), str) and r["reason"].strip():
            entry["status"] += f" ({r['reason']})"
        entry["config / log"] = _links(r, link_base, csv_dir)
        out.append(entry)
    return pd.DataFrame(out)


# --- document --------------------------------------------------------------------------------------------


def _hardware(frame: Any) -> str:
    ours = frame[frame["kind"].isin(OURS) & (frame["status"] == "ok")]
    parts = []
    for key, name in (("cpu_model", "CPU"), ("torch_threads", "torch threads"), ("torch_version", "torch")):
        if key in ours:
            values = sorted({str(v).removesuffix(".0") for v in ours[key].dropna()})
            if values:
                parts.append(f"{name} {', '.join(values)}")
    return "; ".join(parts)


def suite_texts(suites_dir: Path, name: str) -> tuple[Path | None, str, list[str]]:
    """The file, description and notes of the suite called ``name`` among ``suites_dir/*.toml`` (None, "", [] when
    none is)."""
    import tomllib

    from .suite import SuiteError, load_suite

    for path in sorted(suites_dir.glob("*.toml")):
        try:
            head = tomllib.loads(path.read_text(encoding="utf-8")).get("suite", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
            continue
        if isinstance(head, dict) and str(head.get("name", path.stem)) == name:
            try:
                suite = load_suite(path)
            except SuiteError as exc:
                logger.warning("suite %s: %s", path, exc)
                return path, "", []
            return path, suite.description, list(suite.notes)
    return None, "", []


def render(csv_paths: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write ``LEADERBOARD.md``, ``leaderboard.csv`` and ``plots/*.png`` into ``out_dir``; return what was written."""
    import pandas as pd

    from .plots import plot_distill, plot_prune

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    parts = ["# Leaderboard", "",
             "Generated by `dfcompress leaderboard` from the result CSVs in `results/` (one row per cell, written by "
             "`dfcompress bench SUITE`). Top-1 is measured on real test images the methods never see. Rows marked "
             "*reference code, measured separately* come from `reference/`; rows marked *published* are numbers "
             "printed in papers, shown only where the suite reproduces the paper's setting.", ""]
    frames = []
    for csv_path in csv_paths:
        frame = pd.read_csv(csv_path)
        if frame.empty:
            continue
        for column in ("budget_label", "note", "reason", "config", "log", "model", "method_label"):
            if column in frame:
                frame[column] = frame[column].astype("object").where(frame[column].notna(), "")
        frames.append(frame)
        suite = str(frame["suite"].iloc[0])
        csv_dir = csv_path.parent
        parts += [f"## {suite}", ""]
        hardware = _hardware(frame)
        done = int((frame["kind"].isin(CELL_KINDS) & (frame["status"] == "ok")).sum())
        total = int(frame["kind"].isin(CELL_KINDS).sum())
        suite_file, description, suite_notes = suite_texts(out_dir / "suites", suite)
        if suite_file is not None:
            rel = os.path.relpath(suite_file, out_dir)
            parts += [f"Suite [`{rel}`]({rel})" + (f": {description}." if description else "."), ""]
        parts += [f"{done} of {total} cells finished" + (f"; {hardware}" if hardware else "") +
                  f". Data: [`{os.path.relpath(csv_path, out_dir)}`]({os.path.relpath(csv_path, out_dir)}).", ""]
        if suite_notes:
            parts += [f"- {n}" for n in suite_notes] + [""]
        notes = Notes(out_dir, csv_dir)
        table = distill_table(frame, notes)
        if not table.empty:
            parts += ["### Knowledge distillation: student top-1 (%)", "", table.to_markdown(index=False, disable_numparse=True), "",
                      *notes.markdown()]
            png = plot_distill(frame, out_dir / "plots" / f"{suite}-distill.png", f"{suite}: student top-1 per method")
            if png:
                written[f"{suite}-distill"] = png
                parts += [f"![student top-1 per method]({os.path.relpath(png, out_dir)})", ""]
        notes = Notes(out_dir, csv_dir)
        table = time_table(frame, notes)
        if not table.empty:
            from ..schedule import plot_curve

            parts += ["### Time budget: synthesis + training within the same wall time", "",
                      table.to_markdown(index=False, disable_numparse=True), "", *notes.markdown()]
            png = plot_curve(time_curves(frame), out_dir / "plots" / f"{suite}-curves.png",
                             title=f"{suite}: student top-1 against wall time")
            if png:
                written[f"{suite}-curves"] = png
                parts += [f"![top-1 against minutes]({os.path.relpath(png, out_dir)})", ""]
        notes = Notes(out_dir, csv_dir)
        table = prune_table(frame, notes)
        if not table.empty:
            parts += ["### Pruning and fine-tuning: top-1 (%) against the pruning ratio", "",
                      table.to_markdown(index=False, disable_numparse=True), "", *notes.markdown()]
            png = plot_prune(frame, out_dir / "plots" / f"{suite}-prune.png", f"{suite}: top-1 against pruning ratio")
            if png:
                written[f"{suite}-prune"] = png
                parts += [f"![top-1 against pruning ratio]({os.path.relpath(png, out_dir)})", ""]
        table = cells_table(frame, out_dir, csv_dir)
        if not table.empty:
            parts += ["### Every cell", "", table.to_markdown(index=False, disable_numparse=True), ""]
        notes = [n for n in dict.fromkeys(frame.loc[frame["kind"].isin(CELL_KINDS), "note"]) if n]
        if notes:
            parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    if not frames:
        raise DFCompressError("the result CSVs hold no rows")
    md = out_dir / "LEADERBOARD.md"
    atomic_write_text(md, "\n".join(parts))
    written["markdown"] = md
    combined = out_dir / "leaderboard.csv"
    atomic_write_text(combined, pd.concat(frames, ignore_index=True).to_csv(index=False))
    written["csv"] = combined
    logger.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return written
