"""KD step (teacher forward + student forward/backward, ResNet-20, batch 128) and synthesis step (teacher forward +
backward w.r.t. the input, batch 256) in the contiguous and channels-last layouts, and with torch.compile, in one process.

    python benchmarks/speed/memory_format_speed.py kd eager cl compile cl-compile
    python benchmarks/speed/memory_format_speed.py synth
"""
import sys
import time

import torch
import torch.nn.functional as F
from dfcompress.models.base import create_model
torch.manual_seed(0)
def bench(variant, bs=128, n=12):
    s,_ = create_model("cifar:resnet20", num_classes=10); t,_ = create_model("cifar:resnet20", num_classes=10); t.eval()
    x = torch.randn(bs,3,32,32)
    if "cl" in variant:
        s = s.to(memory_format=torch.channels_last); t = t.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(s.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sf, tf = s, t
    if "compile" in variant:
        sf = torch.compile(s); tf = torch.compile(t)
    def step():
        with torch.no_grad(): tl = tf(x)
        sl = sf(x)
        loss = F.kl_div(F.log_softmax(sl/4,1), F.softmax(tl/4,1), reduction="batchmean")
        opt.zero_grad(); loss.backward(); opt.step()
    t0=time.perf_counter()
    for _ in range(3): step()
    warm=time.perf_counter()-t0
    t0=time.perf_counter()
    for _ in range(n): step()
    dt=(time.perf_counter()-t0)/n
    print(f"{variant:12s} bs={bs} warm {warm:.1f}s  {dt*1000:.0f} ms/step  {bs/dt:.0f} img/s", flush=True)

def run(name, model_cl, input_cl, bs=256, n=8):
    t,_ = create_model("cifar:resnet20", num_classes=10); t.eval()
    if model_cl: t = t.to(memory_format=torch.channels_last)
    x = torch.randn(bs,3,32,32)
    if input_cl: x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    def step():
        out = t(x); loss = out.logsumexp(1).mean(); loss.backward()
    for _ in range(2): step()
    t0=time.perf_counter()
    for _ in range(n): step()
    dt=(time.perf_counter()-t0)/n
    print(f"{name:20s} {dt*1000:.0f} ms", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["synth"]:
        run("contig", False, False)
        run("model cl", True, False)
        run("model+input cl", True, True)
    else:
        for v in sys.argv[2:]:
            bench(v)
