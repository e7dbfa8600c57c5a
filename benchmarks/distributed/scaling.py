"""Synthesis and KD with N processes against one process, through the CLI, one command per setting.

Each setting is one ``dfcompress run --task distill`` (synthesis, then KD on the images it made); its metrics.json
gives the seconds of each stage. Synthesis images/s and seconds per KD epoch are compared with the first setting.

    # this 2-core CPU: 1 process x 1 thread against 2 processes x 1 thread (gloo)
    python benchmarks/distributed/scaling.py --procs 1,2 --threads 1 --out benchmarks/distributed/results/cpu
    # a GPU machine: a plain run against torchrun with one process (the per-process overhead), then 1 and N GPUs
    python benchmarks/distributed/scaling.py --device cuda --procs plain,1,8 --num-images 4096 --batch-size 256 \\
        --out benchmarks/distributed/results/gpu

A setting ``plain`` runs ``python -m dfcompress`` without torchrun; a number N runs
``python -m torch.distributed.run --standalone --nproc-per-node N -m dfcompress``. Writes ``scaling.json`` and
``scaling.md``; a finished setting is kept (its run directory under ``runs/``) and not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", default="1,2", help="settings: plain, or a process count for torchrun")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default="cifar:resnet20")
    parser.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    parser.add_argument("--synth", default="deepinversion")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="synthesis batch (one shard)")
    parser.add_argument("--kd-batch", type=int, default=32, help="global KD batch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    rows = []
    for setting in args.procs.split(","):
        run_dir = out / "runs" / f"run-{setting}"  # runs/ is git-ignored
        if not (run_dir / "metrics.json").is_file():
            launcher = [sys.executable, "-m"] if setting == "plain" else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={setting}", "-m"]
            command = [*launcher, "dfcompress", "-q", "run", "--task", "distill", "--teacher", args.teacher,
                       "--weights", args.weights, "--synth", args.synth, "--iterations", str(args.iterations),
                       "--num-images", str(args.num_images), "--batch-size", str(args.batch_size), "--epochs",
                       str(args.epochs), "-d", f"batch_size={args.kd_batch}", "--device", args.device,
                       "--out", str(run_dir)]
            print(" ".join(command[1:]), flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True, env=env)
            (run_dir / "wall_s.txt").write_text(f"{time.perf_counter() - started:.2f}\n")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        timings = metrics["timings_s"]
        rows.append({"setting": setting, "synthesis_s": timings["synthesize"], "distill_s": timings["distill"],
                     "images_per_s": round(args.num_images / timings["synthesize"], 2),
                     "kd_epoch_s": round(timings["distill"] / args.epochs, 3),
                     "wall_s": float((run_dir / "wall_s.txt").read_text())})
    base = rows[0]
    for row in rows:
        row["synthesis_speedup"] = round(row["images_per_s"] / base["images_per_s"], 3)
        row["kd_speedup"] = round(base["kd_epoch_s"] / row["kd_epoch_s"], 3)
    (out / "scaling.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = [(f"{args.teacher}, {args.synth} {args.iterations} iterations, {args.num_images} images in shards of "
              f"{args.batch_size}, KD {args.epochs} epochs at global batch {args.kd_batch}, {args.threads} thread(s) "
              f"per process, device {args.device}"), "",
             "| processes | synthesis s | images / s | synthesis speed-up | KD s / epoch | KD speed-up | command wall s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['synthesis_s']} | {r['images_per_s']} | {r['synthesis_speedup']}x | "
              f"{r['kd_epoch_s']} | {r['kd_speedup']}x | {r['wall_s']:.1f} |" for r in rows]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
