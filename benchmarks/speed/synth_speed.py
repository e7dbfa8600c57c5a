"""Seconds per iteration of the synthesizers against the bare teacher, in ONE process per teacher/batch.

    python benchmarks/speed/synth_speed.py --teacher resnet20 --batch 256
    python benchmarks/speed/synth_speed.py --teacher resnet56 --batch 64 --synths deepinversion,natural,natural:generator_width=128
    python benchmarks/speed/synth_speed.py --teacher resnet20 --quality-iterations 200 --quality-batch 100 --cross resnet56
    python benchmarks/speed/synth_speed.py --teacher timm:mobilenetv3_large_100 --batch 64 --synths noise,deepinversion,natural,seeded --json out.json

Teachers: ``resnet20`` / ``resnet56`` (or ``cifar:resnet20`` / ``cifar:resnet56``) are the CIFAR-10 ResNets with
their pretrained weights from ../shared/models; ``demo`` is the demo teacher with its own weights (trained on
first use); any other dfcompress model spec (``torchvision:resnet18``, ``timm:<name>``, ``cifar:resnet110``) is
built through ``dfcompress.models.load_teacher`` with random weights (speed does not depend on them), 10 classes
and a 32x32 input.

Timing: the bare step is the frozen teacher's forward + backward w.r.t. the input (cross-entropy loss).
A synthesizer's time per iteration is (T(1 + k iterations) - T(1 iteration)) / k for one batch, which
removes the per-batch set-up and the final evaluation. Every quantity is measured ``--repeats`` times,
round-robin (so a load change on a shared machine hits all of them), and the median is reported, both
as wall time and as this process's CPU time (``time.process_time``, robust to other processes on the
machine). Ratios use the same clock for both sides. A synthesizer without an ``iterations`` option
(``noise``) has no per-iteration time: its row is its time per batch. ``--json OUT`` writes every
sample, the medians, T(1 iteration) and the machine to OUT (read by speed_table.py).

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
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[3] / "shared" / "models"
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
#: input of the randomly initialised teachers (torchvision/timm specs): CIFAR-10 sized
RANDOM_NUM_CLASSES = 10
RANDOM_IMAGE_SIZE = 32
# (teacher, batch) -> (reference s/iter, reference overhead x bare) from peer-baselines.md section 2
REF_NI = {("resnet20", 256): (3.727, 10.0), ("resnet20", 64): (0.842, 11.5), ("resnet56", 256): (6.599, 6.12), ("resnet56", 64): (1.413, 6.51)}
REF_DI = {("resnet20", 256): (0.733, 1.97), ("resnet20", 64): (0.188, 2.57), ("resnet56", 256): (2.167, 2.01), ("resnet56", 64): (0.558, 2.57)}


def short_name(teacher: str) -> str:
    """``cifar:resnet20`` -> ``resnet20`` when it has pretrained weights here; other specs unchanged."""
    name = teacher.removeprefix("cifar:")
    return name if name in WEIGHTS else teacher


def resolve(teacher: str) -> tuple[str, Path | None]:
    """The dfcompress model spec of ``teacher`` and its pretrained weights (None: random initialisation)."""
    from dfcompress.models.base import parse_spec

    name = short_name(teacher)
    if name in WEIGHTS:
        return f"cifar:{name}", SHARED / WEIGHTS[name]
    source, model_name = parse_spec(teacher)
    return teacher, source.default_weights(model_name)  # the demo teacher's own (trained on first use), else None


def load(teacher: str, device: str = "cpu"):
    from dfcompress.models import RANDOM_WEIGHTS, load_teacher

    spec, weights = resolve(teacher)
    if weights is not None:
        return load_teacher(spec, weights=str(weights), device=device)
    return load_teacher(spec, weights=RANDOM_WEIGHTS, device=device,
                        num_classes=RANDOM_NUM_CLASSES, image_size=RANDOM_IMAGE_SIZE)


def paper_iterations(spec: str) -> int | None:
    """The default of the option the synthesizer declares as its iterations (None: not iterative)."""
    from dfcompress.plugins import get_registry

    cls = get_registry().get("synthesizers", spec.partition(":")[0])
    if cls.iterations_option is None:  # a declared capability, not a guess from the option names
        return None
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    return int(fields[cls.iterations_option].default)


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
    if synth.iterations_option is not None:
        synth.config = dataclasses.replace(synth.config, **{synth.iterations_option: n})
    return synth.synthesize_batch(labels, generator=ctx.generator(0))


def machine() -> dict:
    """CPU model, logical CPUs and library versions, for the table header."""
    import dfcompress

    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "dfcompress": dfcompress.__version__}


def write_json(path: str, payload: dict) -> None:
    """Write atomically, so an interrupted run never leaves a half-written result behind."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet20",
                        help=f"{' or '.join(sorted(WEIGHTS))} (pretrained, ../shared/models) or any model spec, e.g. "
                             "torchvision:resnet18 or timm:mobilenetv3_large_100 (random weights, 10 classes, 32x32)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--synths", default="deepinversion,natural",
                        help="synthesizers, comma-separated; NAME:KEY=VALUE,... items separated by semicolons")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=3, help="extra iterations in the difference timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-iterations", type=int, default=0)
    parser.add_argument("--quality-batch", type=int, default=100)
    parser.add_argument("--cross", default=None, choices=sorted(WEIGHTS))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--stats", default=None, help="class statistics for seeded (default: statistics of random images)")
    parser.add_argument("--grid", default=None, help="save each quality batch as DIR/<synth>-<teacher>-<N>it.png (one column per class)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the timing samples, medians and machine to OUT")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from dfcompress.context import RunContext
    from dfcompress.errors import DFCompressError
    from dfcompress.synth.labels import make_labels
    from dfcompress.synth.seeded_stats import collect_stats

    ctx = RunContext(log_every=10**9)
    try:
        teacher = load(args.teacher)
    except DFCompressError as exc:
        parser.error(f"--teacher {args.teacher}: {exc}")
    spec, weights = resolve(args.teacher)
    shape = (teacher.input.channels, *teacher.input.image_size)
    classes = teacher.input.num_classes
    stats_path, stats_note = None, None
    if args.stats:
        stats_path, stats_note = args.stats, args.stats
    elif any(s.startswith("seeded") for s in args.synths.split(";" if ";" in args.synths else ",")):
        # timing/quality only: statistics of random 'seed' images (no data set is shipped here)
        g = torch.Generator().manual_seed(0)
        seeds = torch.rand(200, *shape, generator=g)
        stats_path = str(Path("/tmp") / f"synth_speed_{re.sub(r'[^A-Za-z0-9_.-]', '-', args.teacher)}.safetensors")
        stats_note = "200 uniform random images, balanced labels (timing only)"
        collect_stats(teacher, seeds, make_labels(200, classes)).save(stats_path)
    specs = [s for s in args.synths.split(";" if ";" in args.synths else ",") if s]
    print(f"# teacher {args.teacher} ({spec}, {'weights ' + weights.name if weights else 'random weights'}), "
          f"input {shape}, batch {args.batch}, threads {torch.get_num_threads()}, torch {torch.__version__}")

    if not args.skip_timing:
        labels = make_labels(args.batch, classes)
        x = torch.randn(args.batch, *shape, requires_grad=True)

        def bare_step() -> None:
            out = teacher.model(x)
            torch.autograd.grad(torch.nn.functional.cross_entropy(out, labels), [x])

        synths = {s: make_synth(s, ctx, teacher, stats_path) for s in specs}
        bare_step()
        for synth in synths.values():
            run_iterations(synth, labels, ctx, 1)  # warm-up
        wall: dict[str, list[float]] = {k: [] for k in ["bare", *synths]}
        cpu: dict[str, list[float]] = {k: [] for k in ["bare", *synths]}
        first: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in synths}  # T(1 iteration): wall, cpu
        iterative = {key: paper_iterations(key) is not None for key in synths}  # else: seconds per batch
        for _ in range(args.repeats):
            w, c = timed(lambda: [bare_step() for _ in range(args.k)])
            wall["bare"].append(w / args.k)
            cpu["bare"].append(c / args.k)
            for key, synth in synths.items():
                w1, c1 = timed(lambda: run_iterations(synth, labels, ctx, 1))
                first[key][0].append(w1)
                first[key][1].append(c1)
                if not iterative[key]:
                    wall[key].append(w1)
                    cpu[key].append(c1)
                    continue
                w2, c2 = timed(lambda: run_iterations(synth, labels, ctx, 1 + args.k))
                wall[key].append((w2 - w1) / args.k)
                cpu[key].append((c2 - c1) / args.k)
        mw = {k: statistics.median(v) for k, v in wall.items()}
        mc = {k: statistics.median(v) for k, v in cpu.items()}
        print("\n| step | wall s/iter | CPU s/iter | x bare (wall) | x bare (CPU) | reference s/iter (x its bare) | ours / reference, normalised by bare |")
        print("|---|---|---|---|---|---|---|")
        for key in wall:
            ref = (REF_NI if key.startswith("natural") else REF_DI if key.startswith("deepinversion") else {}).get((short_name(args.teacher), args.batch))
            ref_txt = f"{ref[0]:.3f} ({ref[1]:.2f}x)" if ref else "-"
            norm = f"{(mc[key] / mc['bare']) / ref[1]:.2f}" if ref else "-"
            step = key if iterative.get(key, True) else f"{key} (s/batch)"
            print(f"| {step} | {mw[key]:.3f} | {mc[key]:.3f} | {mw[key] / mw['bare']:.2f} | {mc[key] / mc['bare']:.2f} | {ref_txt} | {norm} |")
        print("\nall wall samples:", {k: [round(v, 3) for v in vs] for k, vs in wall.items()})
        if args.json:
            results = {}
            for key in wall:
                entry = {"wall": wall[key], "cpu": cpu[key], "wall_median": mw[key], "cpu_median": mc[key]}
                if key in first:
                    entry.update(per="iteration" if iterative[key] else "batch",
                                 paper_iterations=paper_iterations(key), batch_wall=first[key][0], batch_cpu=first[key][1],
                                 batch_wall_median=statistics.median(first[key][0]),
                                 batch_cpu_median=statistics.median(first[key][1]))
                results[key] = entry
            write_json(args.json, {
                "teacher": args.teacher, "spec": spec, "weights": weights.name if weights else "random",
                "input": teacher.input.as_dict(), "batch": args.batch, "repeats": args.repeats, "k": args.k,
                "synths": specs, "seeded_stats": stats_note, "machine": machine(),
                "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join(["python", "benchmarks/speed/synth_speed.py",
                                       *(sys.argv[1:] if argv is None else argv)]),
                "results": results,
            })
            print(f"wrote {args.json}")

    if args.quality_iterations:
        if weights is None:
            print(f"\n# note: {args.teacher} has random weights; its agreement figures mean nothing")
        cross = load(args.cross) if args.cross else None
        labels = make_labels(args.quality_batch, classes)
        print(f"\n| synthesizer | iterations | images | teacher agreement | {args.cross or '-'} agreement | final loss_bn | seconds |")
        print("|---|---|---|---|---|---|---|")
        for spec_ in specs:
            synth = make_synth(spec_, ctx, teacher, stats_path)
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
                tag = spec_.replace(":", "-").replace(",", "-").replace("=", "")
                teacher_tag = args.teacher.replace(":", "-")
                save_image(batch.images, str(Path(args.grid) / f"{tag}-{teacher_tag}-{args.quality_iterations}it.png"), nrow=10, padding=1)
            print(f"| {spec_} | {args.quality_iterations} | {args.quality_batch} | {batch.metrics['teacher_acc']:.3f} | "
                  f"{cross_acc} | {batch.metrics.get('loss_bn', float('nan')):.2f} | {batch.metrics['seconds']:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
