"""The leaderboard: ``benchmarks/LEADERBOARD.md`` (pandas tables as Markdown via tabulate), a combined CSV, and
PNG plots (matplotlib, Agg) from the suites' result CSVs ``benchmarks/results/<suite>.csv``.

Per suite: student top-1 per method and budget (like NaturalInversion's Table 5), top-1 against the pruning
ratio per method (like its Figure 6), and every cell with its key metrics. Each of our rows links to its
config.toml and log; reference-code rows (measured separately) and published numbers are marked as such.
"""
from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path
from typing import Any

from ..errors import DFCompressError
from ..io import atomic_write_text

logger = logging.getLogger(__name__)

OURS = ("synthetic", "real", "teacher")
MARKS = {"reference-code": " (reference code, measured separately)", "published": " (published)"}
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


def _pct(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if v != v else 100.0 * v


def _fmt_runs(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def _links(rows: Any, link_base: Path, csv_dir: Path) -> str:
    """``[config](...) · [log](...)`` per row (prefixed by the cell id when there are several), relative to
    ``link_base``; a target that does not exist beside the CSV is shown as given."""
    parts = []
    for _, r in rows.iterrows():
        links = []
        for key in ("config", "log"):
            target = r.get(key)
            if isinstance(target, str) and target:
                local = csv_dir / target
                path = os.path.relpath(local.resolve(), link_base.resolve()) if local.exists() else target
                links.append(f"[{key}]({path})")
        if links:
            parts.append((f"{r['cell']}: " if len(rows) > 1 else "") + " · ".join(links))
    return "<br>".join(parts)


def _source(rows: Any, link_base: Path, csv_dir: Path) -> str:
    """Reference-code and published rows: their note and, when it exists, a link to their source file."""
    r = rows.iloc[0]
    text = str(r.get("note") or "")
    target = r.get("config")
    if isinstance(target, str) and target and (csv_dir / target).exists():
        text += f" ([source]({os.path.relpath((csv_dir / target).resolve(), link_base.resolve())}))"
    return text


def _label(row: Any) -> str:
    return str(row["method_label"]) + MARKS.get(row["kind"], "")


def _task_type(frame: Any) -> Any:
    return frame.get("config.task", frame["task"]).fillna("")


def distill_table(frame: Any, link_base: Path, csv_dir: Path) -> Any:
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
        entry = {"Method": _label(sub.iloc[0])}
        for b in budgets:
            entry[b] = _fmt_runs([_pct(v) for v in sub[sub["budget_label"].fillna("") == b]["top1"]])
        entry["no synthesis budget"] = _fmt_runs([_pct(v) for v in sub[sub["budget_label"].fillna("") == ""]["top1"]])
        real = sub["real_images"].fillna(0).max() if "real_images" in sub else 0
        entry["real images used"] = f"{int(real):,}" if real else "0"
        entry["Config / log"] = _links(sub, link_base, csv_dir) if kind in OURS else _source(sub, link_base, csv_dir)
        out.append(entry)
    table = pd.DataFrame(out)
    if (table["no synthesis budget"] == "").all():
        table = table.drop(columns=["no synthesis budget"])
    return table


def prune_table(frame: Any, link_base: Path, csv_dir: Path) -> Any:
    """Method x budget rows, one column per pruning ratio: top-1 % after fine-tuning."""
    import pandas as pd

    rows = frame[(frame["status"] == "ok") & (_task_type(frame) == "prune")]
    if rows.empty:
        return pd.DataFrame()
    ratios = sorted({float(r) for r in rows["config.ratio"].dropna()})
    out = []
    for (kind, method, budget), sub in rows.groupby(["kind", "method", rows["budget_label"].fillna("")], sort=False):
        entry = {"Method": _label(sub.iloc[0]), "Budget": budget or "–"}
        for ratio in ratios:
            at = sub[sub["config.ratio"].astype(float) == ratio]
            entry[f"ratio {ratio:g}"] = _fmt_runs([_pct(v) for v in at["top1"]])
            if "models.pruned.top1" in at and kind in OURS:
                before = _fmt_runs([_pct(v) for v in at["models.pruned.top1"]])
                if before:
                    entry[f"ratio {ratio:g}"] += f" (before fine-tuning {before})"
        entry["Config / log"] = _links(sub, link_base, csv_dir) if kind in OURS else _source(sub, link_base, csv_dir)
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

    rows = frame[frame["kind"].isin(["synthetic", "real"])]
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
        entry["config / log"] = _links(pd.DataFrame([r]), link_base, csv_dir)
        out.append(entry)
    return pd.DataFrame(out)


# --- plots -----------------------------------------------------------------------------------------------


def plot_distill(frame: Any, path: Path, title: str) -> Path | None:
    """Horizontal bars: student top-1 per method, one bar per budget; the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[(frame["status"] == "ok") & (_task_type(frame) == "distill")]
    if rows.empty:
        return None
    teacher = frame[(frame["status"] == "ok") & (frame["kind"] == "teacher")]["top1"].dropna()
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[(frame["status"] == "ok") & (_task_type(frame) == "prune")]
    if rows.empty:
        return None
    teacher = frame[(frame["status"] == "ok") & (frame["kind"] == "teacher")]["top1"].dropna()
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


LINE_STYLES = ("-", "--", ":", "-.")


def _wrap(label: str, width: int = 45) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


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
        done = int((frame["kind"].isin(["synthetic", "real"]) & (frame["status"] == "ok")).sum())
        total = int(frame["kind"].isin(["synthetic", "real"]).sum())
        suite_file, description, suite_notes = suite_texts(out_dir / "suites", suite)
        if suite_file is not None:
            rel = os.path.relpath(suite_file, out_dir)
            parts += [f"Suite [`{rel}`]({rel})" + (f": {description}." if description else "."), ""]
        parts += [f"{done} of {total} cells finished" + (f"; {hardware}" if hardware else "") +
                  f". Data: [`{os.path.relpath(csv_path, out_dir)}`]({os.path.relpath(csv_path, out_dir)}).", ""]
        if suite_notes:
            parts += [f"- {n}" for n in suite_notes] + [""]
        table = distill_table(frame, out_dir, csv_dir)
        if not table.empty:
            parts += ["### Knowledge distillation: student top-1 (%)", "", table.to_markdown(index=False, disable_numparse=True), ""]
            png = plot_distill(frame, out_dir / "plots" / f"{suite}-distill.png", f"{suite}: student top-1 per method")
            if png:
                written[f"{suite}-distill"] = png
                parts += [f"![student top-1 per method]({os.path.relpath(png, out_dir)})", ""]
        table = prune_table(frame, out_dir, csv_dir)
        if not table.empty:
            parts += ["### Pruning and fine-tuning: top-1 (%) against the pruning ratio", "",
                      table.to_markdown(index=False, disable_numparse=True), ""]
            png = plot_prune(frame, out_dir / "plots" / f"{suite}-prune.png", f"{suite}: top-1 against pruning ratio")
            if png:
                written[f"{suite}-prune"] = png
                parts += [f"![top-1 against pruning ratio]({os.path.relpath(png, out_dir)})", ""]
        table = cells_table(frame, out_dir, csv_dir)
        if not table.empty:
            parts += ["### Every cell", "", table.to_markdown(index=False, disable_numparse=True), ""]
        notes = [n for n in dict.fromkeys(frame.loc[frame["kind"].isin(["synthetic", "real"]), "note"]) if n]
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
