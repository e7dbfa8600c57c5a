"""The check behind docs/quantization.md, "Why 7-bit activations without VNNI": CIFAR ResNet-20 calibrated on 512
real training images, agreement with the float model on the first 2,000 JPEG test images, for 8- and 7-bit
activations, through the reference (float) kernels and through the compiled int8 program.

    python benchmarks/quantize/reduce_range_check.py CALIBRATION_DIR
CALIBRATION_DIR: a data set from `dfcompress data import cifar10:../shared/data/cifar10-jpeg.tar.gz:train
--per-class 52 --teacher cifar:resnet20 --out DIR` (the cifar10-quantize suite's real-512 prerequisite)."""
import sys

import torch

from dfcompress import options as opts
from dfcompress.data import synthetic
from dfcompress.data.real import load_data
from dfcompress.models import load_teacher
from dfcompress.quantize.x86 import X86InductorPTQ


def main(calibration: str) -> None:
    teacher = load_teacher("cifar:resnet20", weights="../shared/models/resnet20-12fca82f.th")
    spec = teacher.input
    calib = synthetic.load(calibration)
    xs = spec.normalize(calib.images[:512].float() / 255)
    batches = [xs[i:i + 64] for i in range(0, 512, 64)]
    test = load_data("cifar10:../shared/data/cifar10-jpeg.tar.gz:test", spec)
    x, y = spec.normalize(test.images[:2000].float() / 255), test.labels[:2000]
    with torch.no_grad():
        fp32 = teacher.model.cpu().eval()(x).argmax(1)
    print(f"cpu vnni: {torch.cpu._is_vnni_supported()}; float top-1 {fp32.eq(y).float().mean():.4f}")
    for reduce_range in ("false", "true"):
        for lower in (False, True):
            q = X86InductorPTQ(opts.build(X86InductorPTQ.Config, {"lower": lower, "reduce_range": reduce_range},
                                          owner="quantizer x86"))
            pred = q.quantize(teacher.model, spec, batches=batches).model(x).argmax(1)
            print(f"reduce_range={reduce_range} lowered={lower}: agrees with float {pred.eq(fp32).float().mean():.4f}, "
                  f"top-1 {pred.eq(y).float().mean():.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
