"""The GPU speed table: every synthesizer's step against the bare teacher step, in float32 and bf16, plus one
KD epoch, in ONE process; a JSON of every sample and a Markdown table.

    bash benchmarks/gpu/run.sh                      # a GPU: sized for under 8 minutes on one GPU (not yet run on one)
    bash benchmarks/gpu/run.sh --tiny               # the CPU, in seconds: tiny batches (tests/test_precision.py runs it)
    python benchmarks/gpu/gpu_speed.py --device cpu --cases cifar:resnet20@32x256 --precisions 32-true

Cases (``--cases``, ``SPEC@SIZExBATCH[,BATCH...]``): by default timm ``resnet50`` at 224 px with batches 64 and 128
(1,000 classes) and the CIFAR ResNet-20 at 32 px with batch 256 (10 classes); random weights (speed does not depend
on them) and nothing downloaded. ``--tiny``: the CIFAR ResNet-20 at 32 px, batch 8.

Timing is as in ``benchmarks/speed/synth_speed.py``: the bare step is the frozen teacher's forward + backward
w.r.t. the input (cross-entropy), under the same autocast and memory format as the synthesizers; a synthesizer's
time per iteration is (T(1 + k iterations) - T(1 iteration)) / k for one batch (for ``fast``, whose iterations are
its generator steps, ``g_steps``), so the per-batch set-up and the final evaluation drop out. The device is
synchronised around every timed region. Each quantity is the median of ``--repeats`` round-robin samples. Every
batch is checked for NaN and inf (images and loss terms), and the table says whether any appeared.

The KD row is one epoch of ``kd`` (the built-in distiller: KL at temperature 4, SGD, augmentation) of a fresh
student of the teacher's architecture on ``--kd-batches`` batches of random images, in images per second.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))
from synth_speed import machine, make_synth, write_json  # noqa: E402  (the shared helpers of the CPU table)

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = ("timm:resnet50@224x64,128", "cifar:resnet20@32x256")
TINY_CASES = ("cifar:resnet20@32x8",)
DEFAULT_SYNTHS = ("deepinversion", "natural", "seeded", "fast")
#: the synthesizers' option that says how many steps one batch takes, for the difference timing
STEP_OPTION = {"fast": "g_steps"}


@dataclasses.dataclass(frozen=True)
class Case:
    spec: str
    size: int
    batches: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "Case":
        spec, _, rest = text.partition("@")
        size, _, batches = rest.partition("x")
        try:
            return cls(spec, int(size), tuple(int(b) for b in batches.split(",")))
        except ValueError:
            raise SystemExit(f"gpu_speed: case {text!r} is not SPEC@SIZExBATCH[,BATCH...], e.g. cifar:resnet20@32x256")

    @property
    def classes(self) -> int:
        return 10 if self.size <= 64 else 1000


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def timed(device: torch.device, fn) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def finite_batch(batch) -> bool:
    return bool(torch.isfinite(batch.images).all()) and all(math.isfinite(v) for v in batch.metrics.values())


def with_steps(synth, n: int):
    option = synth.iterations_option or STEP_OPTION.get(synth.name)
    if option is not None:
        synth.config = dataclasses.replace(synth.config, **{option: n})
    return option


def measure_case(case: Case, batch: int, precision: str, args, device: torch.device) -> dict:
    from dfcompress.components import Teacher
    from dfcompress.context import RunContext
    from dfcompress.errors import DFCompressError
    from dfcompress.models import RANDOM_WEIGHTS, load_teacher
    from dfcompress.synth.labels import make_labels
    from dfcompress.synth.seeded_stats import collect_stats

    ctx = RunContext(device=device, precision=precision, memory_format=args.memory_format, log_every=10**9)
    teacher: Teacher = load_teacher(case.spec, weights=RANDOM_WEIGHTS, device=device, num_classes=case.classes,
                                    image_size=case.size)
    ctx.layout(teacher.model)
    shape = (teacher.input.channels, *teacher.input.image_size)
    labels = make_labels(batch, teacher.input.num_classes).to(device)
    x = torch.randn(batch, *shape, device=device, requires_grad=True)

    def bare() -> None:
        with ctx.autocast():
            out = teacher.model(x)
        torch.autograd.grad(torch.nn.functional.cross_entropy(out.float(), labels), [x])

    stats_path = None
    if "seeded" in args.synths:  # class statistics of random images: timing only
        seeds = torch.rand(4 * teacher.input.num_classes, *shape, generator=torch.Generator().manual_seed(0))
        stats_path = str(Path(args.out) / f"stats-{case.spec.replace(':', '-')}-{case.size}.safetensors")
        collect_stats(teacher, seeds, make_labels(len(seeds), teacher.input.num_classes), device=device).save(stats_path)
    synths, skipped = {}, {}
    for name in args.synths:
        try:
            synths[name] = make_synth(name, ctx, teacher, stats_path)
        except DFCompressError as exc:  # e.g. a generator without a layout for this input size
            skipped[name] = str(exc)
            print(f"  {name} skipped: {exc}", flush=True)
    samples: dict[str, list[float]] = {k: [] for k in ["bare", *synths]}
    finite = {k: True for k in synths}

    def batch_time(synth, n: int) -> float:
        result = {}

        def go() -> None:
            with_steps(synth, n)
            result["batch"] = synth.synthesize_batch(labels, generator=ctx.generator(0))
        seconds = timed(device, go)
        finite[synth.name] = finite[synth.name] and finite_batch(result["batch"])
        return seconds

    bare()
    for synth in synths.values():
        batch_time(synth, 1)  # warm-up (kernels, autotuning, allocator)
    for _ in range(args.repeats):
        samples["bare"].append(timed(device, lambda: [bare() for _ in range(args.k)]) / args.k)
        for name, synth in synths.items():
            one = batch_time(synth, 1)
            samples[name].append((batch_time(synth, 1 + args.k) - one) / args.k)
    row = {"teacher": case.spec, "image_size": case.size, "batch": batch, "precision": precision,
           "memory_format": args.memory_format, "samples": samples, "skipped": skipped,
           "median_s": {k: statistics.median(v) for k, v in samples.items()}, "finite": finite}
    row["kd"] = kd_epoch(ctx, teacher, case, batch, args) if args.kd_batches else None
    return row


def kd_epoch(ctx, teacher, case: Case, batch: int, args) -> dict:
    from dfcompress.distill.kd import KnowledgeDistillation
    from dfcompress.models import create_model

    student, _ = create_model(case.spec, num_classes=case.classes, image_size=case.size)
    ctx.layout(student.to(ctx.device))
    n = batch * args.kd_batches
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, teacher.input.channels, case.size, case.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, case.classes, (n,), generator=g)
    kd = KnowledgeDistillation(KnowledgeDistillation.Config(epochs=1, batch_size=batch), ctx)
    result: dict = {}
    seconds = timed(ctx.device, lambda: result.update(kd.fit(student, teacher, images, labels)))
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds,
            "finite": all(math.isfinite(float(v)) for v in result.values() if isinstance(v, (int, float)))}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return machine()["cpu"]


def markdown(payload: dict) -> str:
    lines = [f"# GPU speed table ({payload['device_name']})", "",
             f"Measured {payload['measured_at']} with `{payload['command']}` (torch {payload['torch']}, "
             f"memory format {payload['memory_format']}, median of {payload['repeats']}).",
             "Step: seconds per iteration; x bare: over the bare teacher forward + backward on the same batch and "
             "precision; KD: one epoch of `kd`, images per second.", "",
             "| teacher | batch | precision | bare s | " + " | ".join(f"{s} s (x bare)" for s in payload["synths"])
             + " | KD img/s | NaN/inf |",
             "|---|---|---|---|" + "---|" * len(payload["synths"]) + "---|---|"]
    for row in payload["rows"]:
        med = row["median_s"]
        cells = [f"{med[s]:.4f} ({med[s] / med['bare']:.2f}x)" if s in med else "skipped" for s in payload["synths"]]
        kd = row["kd"]
        bad = [s for s, ok in row["finite"].items() if not ok] + ([] if kd is None or kd["finite"] else ["kd"])
        kd_cell = f"{kd['images_per_s']:.0f}" if kd else "-"
        lines.append(f"| {row['teacher']} @{row['image_size']} | {row['batch']} | {row['precision']} | {med['bare']:.4f} | "
                     + " | ".join(cells) + f" | {kd_cell} | {', '.join(bad) if bad else 'none'} |")
    speedups = bf16_speedups(payload["rows"], payload["synths"])
    if speedups:
        lines += ["", "bf16-mixed against 32-true (same teacher and batch, time per step):", ""]
        lines += [f"- {key}: " + ", ".join(f"{s} {v:.2f}x" for s, v in values.items()) for key, values in speedups.items()]
    return "\n".join(lines) + "\n"


def bf16_speedups(rows: list[dict], synths: list[str]) -> dict[str, dict[str, float]]:
    by_key = {(r["teacher"], r["image_size"], r["batch"], r["precision"]): r for r in rows}
    out = {}
    for (teacher, size, batch, precision), row in by_key.items():
        ref = by_key.get((teacher, size, batch, "32-true"))
        if precision == "bf16-mixed" and ref is not None:
            out[f"{teacher} @{size}, batch {batch}"] = {s: ref["median_s"][s] / row["median_s"][s] for s in ["bare", *synths]
                                                      if s in row["median_s"] and s in ref["median_s"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny batches on any device (a CPU smoke run)")
    parser.add_argument("--cases", default=None, help=f"cases separated by ';' (default: {'; '.join(DEFAULT_CASES)})")
    parser.add_argument("--synths", default=",".join(DEFAULT_SYNTHS))
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=3, help="extra iterations in the difference timing")
    parser.add_argument("--kd-batches", type=int, default=None, help="batches of the KD epoch (default 20; --tiny 2; 0: none)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory of gpu-speed[-tiny].json and .md")
    args = parser.parse_args(argv)
    from dfcompress.context import resolve_device
    from dfcompress.errors import DFCompressError

    try:
        device = resolve_device(args.device)
    except DFCompressError as exc:
        parser.error(str(exc))
    cases = [Case.parse(c) for c in (args.cases.split(";") if args.cases else TINY_CASES if args.tiny else DEFAULT_CASES)]
    args.synths = [s for s in args.synths.split(",") if s]
    if args.kd_batches is None:
        args.kd_batches = 2 if args.tiny else 20
    if args.tiny:
        args.repeats, args.k = min(args.repeats, 1), min(args.k, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        for batch in case.batches:
            for precision in args.precisions.split(","):
                row = measure_case(case, batch, precision, args, device)
                rows.append(row)
                med = row["median_s"]
                print(f"{case.spec}@{case.size} batch {batch} {precision}: bare {med['bare']:.4f}s "
                      + " ".join(f"{s} {med[s] / med['bare']:.2f}x" for s in args.synths if s in med), flush=True)
    payload = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
               "machine": machine(), "memory_format": args.memory_format, "repeats": args.repeats, "k": args.k,
               "synths": args.synths,
               "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join(["bash", "benchmarks/gpu/run.sh", *(sys.argv[1:] if argv is None else argv)]),
               "rows": rows}
    stem = "gpu-speed-tiny" if args.tiny else "gpu-speed"
    write_json(str(Path(args.out) / f"{stem}.json"), payload)
    (Path(args.out) / f"{stem}.md").write_text(markdown(payload))
    print(f"wrote {Path(args.out) / stem}.json and .md")
    bad = [r for r in rows if not all(r["finite"].values()) or (r["kd"] and not r["kd"]["finite"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
