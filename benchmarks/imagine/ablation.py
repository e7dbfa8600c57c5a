"""IMAGINE's ablation (supplement Table 3) on a CIFAR ResNet: baseline, +D, +H, full.

For each variant, each of ``--targets`` real images (one per class, drawn from the CIFAR-10 training split with
``--seed``) gets its own optimisation of ``--outputs`` images (the paper's setting: one target, one discriminator),
then the outputs of all targets are measured with the teacher only (no Inception weights can be downloaded):

- teacher-feature Frechet distance of all outputs to ``--real`` real test images (lower: closer to real images);
- diversity: mean pairwise cosine distance of the teacher's penultimate features between the outputs of one
  target, and mean pairwise RMS pixel distance, averaged over the targets;
- fidelity: mean cosine similarity of each output's features to its target's;
- agreement: the teacher's agreement with y* on the outputs; seconds per iteration.

    python benchmarks/imagine/ablation.py --teacher cifar:resnet56 --weights ../shared/models/resnet56-4bfd9763.th \\
        --data ../shared/data/cifar10-jpeg.tar.gz --iterations 300 --out benchmarks/imagine/results/r56

writes ``ablation.json``, ``ablation.md`` and ``grid-<variant>.png`` (per row: the target, then its outputs).
Runs on the CPU; one variant at a time, resumable (a finished variant is kept in ``<variant>.pt``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # supplement Table 3
    "baseline": {"feature_matching": False, "discriminator": False},
    "baseline+D": {"feature_matching": False, "discriminator": True},
    "baseline+H": {"feature_matching": True, "discriminator": False},
    "full": {"feature_matching": True, "discriminator": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="cifar:resnet56")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG archive (../shared/data/cifar10-jpeg.tar.gz)")
    parser.add_argument("--targets", type=int, default=10, help="target images, one per class")
    parser.add_argument("--outputs", type=int, default=8, help="outputs per target")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--real", type=int, default=2000, help="real test images for the Frechet distance")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--option", "-s", action="append", default=[], help="an imagine option KEY=VALUE for all variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchvision.utils import save_image

    from dfcompress.commands.imagine import photo_report
    from dfcompress.context import RunContext
    from dfcompress.data.real import load_data
    from dfcompress.metrics.frechet import feature_frechet_distance
    from dfcompress.models import load_teacher
    from dfcompress.options import build, parse_assignments
    from dfcompress.synth.imagine import Imagine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(args.teacher, weights=args.weights)
    train = load_data(f"cifar10:{args.data}:train", teacher.input).subset_per_class(1, args.seed)
    targets = train.images[: args.targets]
    real = load_data(f"cifar10:{args.data}:test", teacher.input).subset_per_class(args.real // 10, args.seed).images
    common = parse_assignments(args.option, flag="--option")
    rows = []
    for name in args.variants.split(","):
        saved = out / f"{name}.pt"
        if saved.is_file():
            result = torch.load(saved, weights_only=True)
        else:
            options = {**common, **VARIANTS[name], "iterations": args.iterations, "guides": "<targets>"}
            synth = Imagine(build(Imagine.Config, options, owner="imagine"), RunContext())
            synth.teacher = teacher
            guides = synth.use_guides(targets)
            outputs, seconds = [], 0.0
            for k in range(len(targets)):
                y_star = int(synth.cross_entropy_targets(torch.tensor([k]), guides.labels[k:k + 1])[0])
                generator = torch.Generator().manual_seed(args.seed * 100003 + k)
                started = time.perf_counter()
                batch = synth.imagine(torch.full((args.outputs,), k, dtype=torch.long),
                                      torch.full((args.outputs,), y_star, dtype=torch.long), generator)
                seconds += time.perf_counter() - started
                outputs.append(batch.images.mul(255).round().to(torch.uint8))
                print(f"{name}: target {k + 1}/{len(targets)}, {time.perf_counter() - started:.0f} s", flush=True)
            result = {"outputs": torch.stack(outputs), "seconds": torch.tensor(seconds)}
            torch.save(result, saved)
        outputs = result["outputs"]  # targets x outputs x C x H x W
        reports = [photo_report(teacher, targets[k], outputs[k], int(teacher.model(
            teacher.input.normalize(targets[k:k + 1].float() / 255)).argmax())) for k in range(len(targets))]
        mean = lambda key: round(sum(r[key] for r in reports) / len(reports), 4)  # noqa: E731
        rows.append({
            "variant": name, "fd": round(feature_frechet_distance(teacher, outputs.flatten(0, 1), real), 3),
            "diversity_features": mean("diversity_features"), "diversity_pixels": mean("diversity_pixels"),
            "fidelity": mean("fidelity"), "agreement": mean("agreement"),
            "seconds_per_iteration": round(float(result["seconds"]) / (len(targets) * args.iterations), 3),
        })
        grid = torch.cat([torch.cat([targets[k:k + 1], outputs[k]]) for k in range(len(targets))]).float() / 255
        save_image(grid, str(out / f"grid-{name}.png"), nrow=args.outputs + 1, padding=1)
        print(json.dumps(rows[-1]), flush=True)
    (out / "ablation.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = ["| variant | feature FD to real (lower better) | diversity (features) | diversity (pixels) | fidelity | "
             "agreement | s / iteration |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['fd']} | {r['diversity_features']} | {r['diversity_pixels']} | {r['fidelity']} | "
              f"{r['agreement']} | {r['seconds_per_iteration']} |" for r in rows]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
