"""The speed table: synth_speed.py once per (teacher, batch), rendered as benchmarks/SPEED.md and speed.csv.

    python benchmarks/speed/speed_table.py                      # measure what is missing, then render
    python benchmarks/speed/speed_table.py --render-only        # re-render from the committed JSON files
    python benchmarks/speed/speed_table.py --teachers resnet20 --batches 64 --force   # measure one again

Every (teacher, batch) runs as ONE subprocess (``synth_speed.py --json``), so the bare teacher step and
the synthesizers are timed on the same clock in the same process. Its JSON goes to
``<out-dir>/speed/results/<teacher>-b<batch>.json``; a combination whose JSON holds every requested
synthesizer is not measured again unless ``--force`` (re-run the same command to finish an interrupted
table). The JSON files are committed, so the table can be re-rendered without measuring.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "benchmarks"
SCRIPT = Path(__file__).resolve().parent / "synth_speed.py"
TEACHERS = "resnet20,resnet56,torchvision:resnet18,timm:mobilenetv3_large_100"
BATCHES = "64,256"
SYNTHS = "noise,deepinversion,natural,seeded"
COLUMNS = ["teacher", "spec", "weights", "batch", "synthesizer", "per", "s_wall", "s_cpu", "bare_s_wall", "bare_s_cpu",
           "x_bare_wall", "x_bare_cpu", "paper_iterations", "images_per_s", "repeats", "k", "threads", "measured_at"]


def split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def result_path(results: Path, teacher: str, batch: int) -> Path:
    return results / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', teacher)}-b{batch}.json"


def load_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished(path: Path, synths: list[str]) -> bool:
    data = load_result(path)
    return data is not None and all(key in data.get("results", {}) for key in ["bare", *synths])


def measure(teacher: str, batch: int, path: Path, args: argparse.Namespace) -> bool:
    cmd = [sys.executable, str(SCRIPT), "--teacher", teacher, "--batch", str(batch), "--synths", args.synths,
           "--repeats", str(args.repeats), "--k", str(args.k), "--threads", str(args.threads), "--json", str(path)]
    print(f"== {teacher} batch {batch}: {shlex.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode == 0


def rows(data: dict, synths: list[str]) -> list[dict]:
    """One CSV row per synthesizer of one (teacher, batch) result."""
    res, batch = data["results"], data["batch"]
    bare_w, bare_c = res["bare"]["wall_median"], res["bare"]["cpu_median"]
    out = []
    for synth in synths:
        r = res[synth]
        per_iter = r.get("per", "iteration") == "iteration"
        iters = r.get("paper_iterations")
        seconds = r["wall_median"] * iters if per_iter and iters else r["wall_median"]  # one batch, wall
        out.append({
            "teacher": data["teacher"], "spec": data["spec"], "weights": data["weights"], "batch": batch,
            "synthesizer": synth, "per": r.get("per", "iteration"), "s_wall": r["wall_median"], "s_cpu": r["cpu_median"],
            "bare_s_wall": bare_w, "bare_s_cpu": bare_c,
            "x_bare_wall": r["wall_median"] / bare_w if per_iter else None,
            "x_bare_cpu": r["cpu_median"] / bare_c if per_iter else None,
            "paper_iterations": iters if per_iter else None,
            "images_per_s": batch / seconds if seconds > 0 else None,
            "repeats": data["repeats"], "k": data["k"], "threads": data["machine"]["torch_threads"],
            "measured_at": data["measured_at"],
        })
    return out


def fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def one_or_all(values: list) -> str:
    distinct = list(dict.fromkeys(str(v) for v in values))
    return distinct[0] if len(distinct) == 1 else " / ".join(distinct)


def shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render(results: list[dict], table: list[dict], missing: list[str], args: argparse.Namespace) -> str:
    machines = [r["machine"] for r in results]
    dates = sorted(r["measured_at"] for r in results)
    repeats, ks = one_or_all([r["repeats"] for r in results]), one_or_all([r["k"] for r in results])
    threads = one_or_all([m["torch_threads"] for m in machines])
    command = shlex.join(["python", "benchmarks/speed/speed_table.py", "--teachers", ",".join(args.teachers),
                          "--batches", ",".join(map(str, args.batches)), "--synths", ",".join(args.synth_list),
                          "--repeats", repeats, "--k", ks, "--threads", threads]
                         + (["--out-dir", shown(args.out_dir)] if args.out_dir.resolve() != DEFAULT_OUT else []))
    stats = one_or_all([r.get("seeded_stats") or "-" for r in results if "seeded" in r["results"]] or ["-"])
    lines = [
        "# Synthesis speed",
        "",
        f"Seconds per synthesis iteration of each synthesizer against its teacher's bare forward + backward, "
        f"measured {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
        + f" (rendered {datetime.date.today().isoformat()}) by",
        "",
        f"    {command}",
        "",
        f"- **Machine**: {one_or_all([m['cpu'] for m in machines])}, {one_or_all([m['logical_cpus'] for m in machines])} "
        f"logical CPUs, torch threads: {threads}; torch {one_or_all([m['torch'] for m in machines])}, "
        f"Python {one_or_all([m['python'] for m in machines])}, dfcompress {one_or_all([m['dfcompress'] for m in machines])}.",
        "- **One process per (teacher, batch)** (`benchmarks/speed/synth_speed.py --json`, results in "
        f"`{shown(args.results_dir)}/`): the bare step and every synthesizer are timed in the same process on the same clocks.",
        "- **Bare step**: the frozen teacher's forward + backward w.r.t. a random input batch (cross-entropy): "
        "the floor no inversion method can beat, since each iteration needs at least that.",
        f"- **Difference timing**: s/iter = (T(1 + k iterations) - T(1 iteration)) / k for one batch, k = {ks}, which "
        "removes the per-batch set-up and final evaluation; the bare step is timed over k steps.",
        f"- **Medians of {repeats} repeats**, round-robin over the bare step and the synthesizers (a load change hits all "
        "of them). s/iter and bare step: wall clock; x bare: the ratio of the medians on the wall clock and on this "
        "process's CPU time (`time.process_time`, robust to other processes).",
        "- **images/s** = batch / (s/iter x paper iterations), the synthesizer's default `iterations` (its paper's "
        "count; the per-batch set-up is left out). `noise` is not iterative: its s/iter column is seconds per batch.",
        "- **Teachers**: `resnet20`, `resnet56` are the pretrained CIFAR-10 ResNets (`../shared/models`); the "
        "`torchvision:`/`timm:` teachers keep random weights (speed does not depend on them), built by "
        "`dfcompress.models.load_teacher` with 10 classes and a 3x32x32 input.",
        f"- **seeded** needs class statistics; here they come from {stats}, which costs the same per iteration as "
        "statistics of real images.",
    ]
    if missing:
        lines.append(f"- **Not measured** (no result file): {', '.join(missing)}.")
    lines += ["", "| teacher | batch | synthesizer | s/iter (wall) | x bare (wall) | x bare (CPU) | paper iterations "
              "| images/s at paper iterations | bare step s (wall) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        s_iter = fmt(row["s_wall"]) + (" per batch" if row["per"] == "batch" else "")
        lines.append(f"| {row['teacher']} | {row['batch']} | {row['synthesizer']} | {s_iter} | {fmt(row['x_bare_wall'], '.2f')} "
                     f"| {fmt(row['x_bare_cpu'], '.2f')} | {row['paper_iterations'] or '-'} | {fmt_rate(row['images_per_s'])} "
                     f"| {fmt(row['bare_s_wall'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teachers", default=TEACHERS, help="comma list: resnet20, resnet56 or model specs")
    parser.add_argument("--batches", default=BATCHES, help="comma list of batch sizes")
    parser.add_argument("--synths", default=SYNTHS, help="comma list of synthesizers (no student)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=3, help="extra iterations in the difference timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where SPEED.md and speed.csv go")
    parser.add_argument("--results-dir", type=Path, default=None, help="per-combination JSON (default: OUT_DIR/speed/results)")
    parser.add_argument("--force", action="store_true", help="measure again combinations that have a result")
    parser.add_argument("--render-only", action="store_true", help="measure nothing; render the existing results")
    args = parser.parse_args(argv)
    args.teachers, args.synth_list = split(args.teachers), split(args.synths)
    args.batches = [int(b) for b in split(args.batches)]
    results_dir = args.results_dir = args.results_dir or args.out_dir / "speed" / "results"

    failed = []
    if not args.render_only:
        for teacher in args.teachers:
            for batch in args.batches:
                path = result_path(results_dir, teacher, batch)
                if finished(path, args.synth_list) and not args.force:
                    print(f"== {teacher} batch {batch}: done ({path})")
                elif not measure(teacher, batch, path, args):
                    failed.append(f"{teacher} b{batch}")

    results, table, missing = [], [], []
    for teacher in args.teachers:
        for batch in args.batches:
            data = load_result(result_path(results_dir, teacher, batch))
            if data is None or not finished(result_path(results_dir, teacher, batch), args.synth_list):
                missing.append(f"{teacher} batch {batch}")
                continue
            results.append(data)
            table += rows(data, args.synth_list)
    if not results:
        print(f"no results in {results_dir}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "SPEED.md").write_text(render(results, table, missing, args))
    with open(args.out_dir / "speed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in table)
    print(f"wrote {args.out_dir / 'SPEED.md'} and {args.out_dir / 'speed.csv'} ({len(table)} rows"
          + (f"; missing: {', '.join(missing)}" if missing else "") + ")")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
