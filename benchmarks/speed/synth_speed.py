"""Seconds per iteration of the synthesizers against the bare teacher, in ONE process per teacher/batch.

    python benchmarks/speed/synth_speed.py --teacher resnet20 --batch 256
    python benchmarks/speed/synth_speed.py --teacher resnet56 --batch 64 --synths deepinversion,natural,natural:generator_width=128
    python benchmarks/speed/synth_speed.py --teacher resnet20 --quality-iterations 200 --quality-batch 100 --cross resnet56

Timing: the bare step is the frozen teacher's forward + backward w.r.t. the input (cross-entropy loss).
A synthesizer's time per iteration is (T(1 + k iterations) - T(1 iteration)) / k for one batch, which
removes the per-batch set-up and the final evaluation. Every quantity is measured ``--repeats`` times,
round-robin (so a load change on a shared machine hits all of them), and the median is reported, both
as wall time and as this process's CPU time (``time.process_time``, robust to other processes on the
machine). Ratios use the same clock for both sides.

Reference figures (kdst-team/NaturalInversion and NVlabs/DeepInversion official loops, same CPU,
2 threads; ../shared/research/peer-baselines.md section 2) are printed next to ours both as absolute
times and normalised by the reference's own bare teacher step.

Quality: with ``--quality-iterations N`` each synthesizer makes one batch of ``--quality-batch`` images
(balanced labels, seed 0) with N iterations; we report the teacher's agreement with the target labels
and, with ``--cross``, the agreement of another pretrained model on the same images.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[3] / "shared" / "models"
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
# (teacher, batch) -> (reference s/iter, reference overhead x bare) from peer-baselines.md section 2
REF_NI = {("resnet20", 256): (3.727, 10.0), ("resnet20", 64): (0.842, 11.5), ("resnet56", 256): (6.599, 6.12), ("resnet56", 64): (1.413, 6.51)}
REF_DI = {("resnet20", 256): (0.733, 1.97), ("resnet20", 64): (0.188, 2.57), ("resnet56", 256): (2.167, 2.01), ("resnet56", 64): (0.558, 2.57)}


def load(arch: str, device: str = "cpu"):
    from dfcompress.models import load_teacher

    return load_teacher(f"cifar:{arch}", weights=str(SHARED / WEIGHTS[arch]), device=device)


def make_synth(spec: str, ctx, teacher, stats_path: str | None):
    from dfcompress.plugins import get_registry

    name, _, opts = spec.partition(":")
    cls = get_registry().get("synthesizers", name)
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kind = type(fields[key].default)
        kwargs[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    if "stats" in fields and "stats" not in kwargs and stats_path:
        kwargs["stats"] = stats_path
    synth = cls(cls.Config(**kwargs), ctx)
    synth.setup(teacher)
    return synth


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def timed(fn) -> tuple[float, float]:
    w0, c0 = clocks()
    fn()
    w1, c1 = clocks()
    return w1 - w0, c1 - c0


def run_iterations(synth, labels, ctx, n: int):
    if any(f.name == "iterations" for f in dataclasses.fields(synth.config)):
        synth.config = dataclasses.replace(synth.config, iterations=n)
    return synth.synthesize_batch(labels, generator=ctx.generator(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet20", choices=sorted(WEIGHTS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--synths", default="deepinversion,natural")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=3, help="extra iterations in the difference timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-iterations", type=int, default=0)
    parser.add_argument("--quality-batch", type=int, default=100)
    parser.add_argument("--cross", default=None, choices=sorted(WEIGHTS))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--stats", default=None, help="class statistics for seeded (default: statistics of random images)")
    parser.add_argument("--grid", default=None, help="save each quality batch as DIR/<synth>-<teacher>-<N>it.png (one column per class)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from dfcompress.context import RunContext
    from dfcompress.synth.labels import make_labels
    from dfcompress.synth.stats import collect_stats

    ctx = RunContext(log_every=10**9)
    teacher = load(args.teacher)
    stats_path = None
    if args.stats:
        stats_path = args.stats
    elif any(s.startswith("seeded") for s in args.synths.split(",")):
        # timing/quality only: statistics of random 'seed' images (no data set is shipped here)
        g = torch.Generator().manual_seed(0)
        seeds = torch.rand(200, 3, 32, 32, generator=g)
        stats_path = str(Path("/tmp") / f"synth_speed_{args.teacher}.safetensors")
        collect_stats(teacher, seeds, make_labels(200, 10)).save(stats_path)
    specs = [s for s in args.synths.split(",") if s]
    print(f"# teacher {args.teacher}, batch {args.batch}, threads {torch.get_num_threads()}, torch {torch.__version__}")

    if not args.skip_timing:
        labels = make_labels(args.batch, 10)
        x = torch.randn(args.batch, 3, 32, 32, requires_grad=True)

        def bare_step() -> None:
            out = teacher.model(x)
            torch.autograd.grad(torch.nn.functional.cross_entropy(out, labels), [x])

        synths = {spec: make_synth(spec, ctx, teacher, stats_path) for spec in specs}
        bare_step()
        for synth in synths.values():
            run_iterations(synth, labels, ctx, 1)  # warm-up
        wall: dict[str, list[float]] = {k: [] for k in ["bare", *synths]}
        cpu: dict[str, list[float]] = {k: [] for k in ["bare", *synths]}
        for _ in range(args.repeats):
            w, c = timed(lambda: [bare_step() for _ in range(args.k)])
            wall["bare"].append(w / args.k)
            cpu["bare"].append(c / args.k)
            for spec, synth in synths.items():
                w1, c1 = timed(lambda: run_iterations(synth, labels, ctx, 1))
                w2, c2 = timed(lambda: run_iterations(synth, labels, ctx, 1 + args.k))
                wall[spec].append((w2 - w1) / args.k)
                cpu[spec].append((c2 - c1) / args.k)
        mw = {k: statistics.median(v) for k, v in wall.items()}
        mc = {k: statistics.median(v) for k, v in cpu.items()}
        print("\n| step | wall s/iter | CPU s/iter | x bare (wall) | x bare (CPU) | reference s/iter (x its bare) | ours / reference, normalised by bare |")
        print("|---|---|---|---|---|---|---|")
        for key in wall:
            ref = (REF_NI if key.startswith("natural") else REF_DI if key.startswith("deepinversion") else {}).get((args.teacher, args.batch))
            ref_txt = f"{ref[0]:.3f} ({ref[1]:.2f}x)" if ref else "-"
            norm = f"{(mc[key] / mc['bare']) / ref[1]:.2f}" if ref else "-"
            print(f"| {key} | {mw[key]:.3f} | {mc[key]:.3f} | {mw[key] / mw['bare']:.2f} | {mc[key] / mc['bare']:.2f} | {ref_txt} | {norm} |")
        print("\nall wall samples:", {k: [round(v, 3) for v in vs] for k, vs in wall.items()})

    if args.quality_iterations:
        cross = load(args.cross) if args.cross else None
        labels = make_labels(args.quality_batch, 10)
        print(f"\n| synthesizer | iterations | images | teacher agreement | {args.cross or '-'} agreement | final loss_bn | seconds |")
        print("|---|---|---|---|---|---|---|")
        for spec in specs:
            synth = make_synth(spec, ctx, teacher, stats_path)
            batch = run_iterations(synth, labels, ctx, args.quality_iterations)
            synth.close()
            cross_acc = "-"
            if cross is not None:
                with torch.no_grad():
                    pred = cross.model(cross.input.normalize(batch.images)).argmax(1)
                cross_acc = f"{float((pred == batch.labels).float().mean()):.3f}"
            if args.grid:
                from torchvision.utils import save_image

                Path(args.grid).mkdir(parents=True, exist_ok=True)
                tag = spec.replace(":", "-").replace(",", "-").replace("=", "")
                save_image(batch.images, str(Path(args.grid) / f"{tag}-{args.teacher}-{args.quality_iterations}it.png"), nrow=10, padding=1)
            print(f"| {spec} | {args.quality_iterations} | {args.quality_batch} | {batch.metrics['teacher_acc']:.3f} | "
                  f"{cross_acc} | {batch.metrics.get('loss_bn', float('nan')):.2f} | {batch.metrics['seconds']:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
