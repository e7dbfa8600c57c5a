"""Run reports: ``metrics.json`` for machines, ``report.md`` and a summary table for people. Torch-free."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import atomic_write_text

COLUMNS = (
    ("top1", "top-1 %", lambda v: f"{100 * v:.2f}"),
    ("top5", "top-5 %", lambda v: f"{100 * v:.2f}"),
    ("agreement", "agrees with teacher %", lambda v: f"{100 * v:.2f}"),
    ("params", "params", lambda v: f"{v / 1e6:.3f} M"),
    ("macs", "MACs", lambda v: f"{v / 1e6:.2f} M"),
    ("size_mb", "file MB", lambda v: f"{v:.2f}"),
    ("latency_b1_ms", "latency b1 ms", lambda v: f"{v:.2f}"),
    ("latency_b64_ms", "latency b64 ms", lambda v: f"{v:.1f}"),
)


def summary_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the model table (one row per evaluated model)."""
    models: dict[str, dict] = metrics.get("models", {})
    used = [c for c in COLUMNS if any(c[0] in m for m in models.values())]
    header = ["model", *[c[1] for c in used]]
    rows = [[name, *[c[2](m[c[0]]) if m.get(c[0]) is not None else "" for c in used]] for name, m in models.items()]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def latency_section(table: dict[str, Any]) -> list[str]:
    """Lines of the latency table (milliseconds per call, one column per batch size) and how it was measured."""
    batches = [k for k in table if k.startswith("b") and isinstance(table[k], dict)]
    variants = list(table[batches[0]]) if batches else []
    rows = [[v, *[f"{table[b][v]:.2f}" for b in batches]] for v in variants]
    header = ["model", *[f"batch {b[1:]} ms" for b in batches]]
    return [markdown_table(header, rows), "",
            f"Median of round medians, variants interleaved, one process; {table.get('threads')} threads, load "
            f"average {table.get('load_avg')} when it ended.", ""]


def _kv_table(data: dict[str, Any]) -> str:
    rows = [[k, _fmt(v)] for k, v in data.items() if not isinstance(v, (dict, list))]
    return markdown_table(["metric", "value"], rows) if rows else ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(out_dir: Path, config_toml: str, metrics: dict, timings: dict, artifacts: dict) -> None:
    """Write ``metrics.json`` and ``report.md`` into the run directory."""
    payload = {**metrics, "timings_s": timings, "artifacts": artifacts}
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=1, default=str))
    header, rows = summary_rows(metrics)
    parts = [f"# dfcompress run: {out_dir.name}", "", "## Models", "", markdown_table(header, rows), ""]
    for section, title in (("prune", "Pruning"), ("distill", "Training"), ("quantize", "Quantization"),
                           ("synthetic", "Synthetic data")):
        if isinstance(metrics.get(section), dict):
            parts += [f"## {title}", "", _kv_table(metrics[section]), ""]
            notes = metrics[section].get("notes")
            if notes:
                parts += [f"- {n}" for n in notes] + [""]
            if isinstance(metrics[section].get("latency"), dict):
                parts += latency_section(metrics[section]["latency"])
    if "grid" in artifacts:
        parts += ["## Synthetic images", "", f"![synthetic images]({artifacts['grid']})", ""]
    parts += ["## Time per stage", "", markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]), ""]
    parts += ["## Configuration", "", "Re-run with `dfcompress run --config config.toml`.", "", "```toml", config_toml.strip(), "```", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(parts))
