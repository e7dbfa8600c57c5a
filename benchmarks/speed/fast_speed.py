"""Cost of one ``fast`` batch against its floor, in ONE process: g_steps x (teacher forward + backward +
generator forward + backward) on the same batch (issue target: at most 1.3x).

    python benchmarks/speed/fast_speed.py --teacher resnet20 --batch 256 --g-steps 2,5 --width 64,32

Per configuration it times, round-robin over ``--repeats`` (medians reported, wall clock and process CPU):
- ``bare``: the frozen teacher's forward + backward w.r.t. a random input batch (cross-entropy), plus the
  generator's forward + backward on its latent batch (the sum of the two: the floor of one inner step);
- ``fast``: one whole ``synthesize_batch`` with ``g_steps`` inner steps (clone, inner Adam steps, BatchNorm
  statistics with momentum, crop + flip, meta-update), without and with the student's adversarial term.
The ratio is fast / (g_steps x bare). ``--json OUT`` writes every sample.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_speed import load, machine  # noqa: E402


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--g-steps", default="2,5")
    parser.add_argument("--width", default="64,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dfcompress.context import RunContext
    from dfcompress.models import create_model
    from dfcompress.synth.fast import FastConfig, FastSynthesizer
    from dfcompress.synth.fast_nets import FastGenerator

    teacher = load(args.teacher)
    spec = teacher.input
    student, _ = create_model(teacher.spec, num_classes=spec.num_classes, image_size=spec.image_size)
    student.eval()
    labels = torch.arange(args.batch) % spec.num_classes
    ctx = RunContext(device=torch.device("cpu"))
    x = torch.randn(args.batch, spec.channels, *spec.image_size)
    rows, samples = [], {}
    for width in [int(w) for w in args.width.split(",")]:
        generator = FastGenerator(256, spec.channels, spec.image_size, width).train()
        z = torch.randn(args.batch, 256)

        def bare() -> None:
            xi = x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(teacher.model(xi), labels).backward()
            generator.zero_grad(set_to_none=True)
            generator(z).sum().backward()

        for g_steps in [int(g) for g in args.g_steps.split(",")]:
            cases = {}
            for adv in (False, True):
                synth = FastSynthesizer(FastConfig(g_steps=g_steps, generator_width=width), ctx)
                synth.setup(teacher)
                cases[adv] = synth
            bare()
            for adv, synth in cases.items():
                synth.synthesize_batch(labels, generator=ctx.generator(0), student=student if adv else None)
            wall = {"bare": [], "fast": [], "fast+adv": []}
            cpu = {k: [] for k in wall}
            for r in range(args.repeats):
                for key, fn in (("bare", bare),
                                ("fast", lambda: cases[False].synthesize_batch(labels, generator=ctx.generator(r))),
                                ("fast+adv", lambda: cases[True].synthesize_batch(labels, generator=ctx.generator(r),
                                                                                  student=student))):
                    w, c = timed(fn)
                    wall[key].append(w)
                    cpu[key].append(c)
            med = {k: statistics.median(v) for k, v in wall.items()}
            medc = {k: statistics.median(v) for k, v in cpu.items()}
            row = {"width": width, "g_steps": g_steps, "bare_s": med["bare"], "fast_s": med["fast"],
                   "fast_adv_s": med["fast+adv"], "ratio": med["fast"] / (g_steps * med["bare"]),
                   "ratio_cpu": medc["fast"] / (g_steps * medc["bare"]),
                   "ratio_adv": med["fast+adv"] / (g_steps * med["bare"])}
            rows.append(row)
            samples[f"w{width}-g{g_steps}"] = {"wall": wall, "cpu": cpu}
    print(f"teacher {teacher.spec}, batch {args.batch}, {args.threads} threads, median of {args.repeats}")
    print("| generator width | g_steps | bare step s (teacher + generator, fwd+bwd) | fast batch s | x (g_steps x bare) | "
          "x, CPU clock | fast batch with adversarial term s | x (g_steps x bare) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['g_steps']} | {r['bare_s']:.3f} | {r['fast_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['ratio_cpu']:.2f} | {r['fast_adv_s']:.3f} | {r['ratio_adv']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "samples": samples,
                                               "machine": machine()}, indent=1))


if __name__ == "__main__":
    main()
