"""The embedded demo teacher: a small BatchNorm CNN trained on first use on scikit-learn's digits.

Input: 1 x 16 x 16 grey images (the 8x8 digits upscaled bilinearly), mean 0.5, std 0.5 (pixels [0, 1] map to
[-1, 1]). Three stages at 16x16, 8x8 and 4x4 (a spatial pyramid for NaturalInversion's feature pyramid), each
``conv3x3 - BatchNorm - ReLU`` blocks (BatchNorm statistics for DeepInversion), global average pool, linear.

The trained weights are cached in ``cache_dir()/demo/`` (safetensors, written atomically under a file lock,
with a JSON of the test accuracy, input spec, seed and library version) and reused afterwards.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..components import InputSpec
from ..io import atomic_write, atomic_write_text, cache_dir

logger = logging.getLogger(__name__)

DEMO_INPUT = InputSpec(image_size=(16, 16), channels=1, mean=(0.5,), std=(0.5,), num_classes=10)
#: bump when the architecture or the training recipe changes: the cache key includes it
RECIPE_VERSION = 1
TRAIN_SEED = 0


@dataclass(frozen=True)
class DemoArch:
    """Channel widths of the three stages and the number of conv blocks in each."""

    widths: tuple[int, int, int]
    depth: int


#: ``demo`` (the teacher) and ``demo:small`` (a narrower, shallower student with the same input)
ARCHS = {"teacher": DemoArch((16, 32, 64), 2), "small": DemoArch((8, 16, 32), 1)}


def conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class DemoNet(nn.Module):
    """``stage1`` (full resolution), ``stage2`` (1/2), ``stage3`` (1/4), then ``pool`` and ``fc``."""

    def __init__(self, arch: DemoArch, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        stages = []
        in_ch = in_chans
        for i, width in enumerate(arch.widths):
            blocks = [conv_bn(in_ch, width, 1 if i == 0 else 2)]
            blocks += [conv_bn(width, width) for _ in range(arch.depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three stage outputs, finest first."""
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        return [f1, f2, self.stage3(f2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.forward_features(x)[-1], 1).flatten(1))


def build_demo(name: str, num_classes: int = 10, in_chans: int = 1) -> DemoNet:
    return DemoNet(ARCHS[name], num_classes=num_classes, in_chans=in_chans)


# --- training --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: random translation of up to this many pixels (at the 16x16 input)
    shift: int = 1
    seed: int = TRAIN_SEED
    #: intra-op threads while training: at this size, more threads only add contention on a shared CPU
    threads: int = 1


def _augment(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels, one offset per image; the border is black background."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=-DEMO_INPUT.mean[0] / DEMO_INPUT.std[0])
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy.view(n, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)).expand(n, x.shape[1], h, w)
    cols = (dx.view(n, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)).expand(n, x.shape[1], h, w)
    index = (rows * padded.shape[-1] + cols).reshape(n, x.shape[1], h * w)
    return padded.flatten(2).gather(2, index).view(n, x.shape[1], h, w)


def _digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.real import DigitsSource

    data = DigitsSource().load(split, DEMO_INPUT)
    return DEMO_INPUT.normalize(data.images.float() / 255.0), data.labels


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(y))


def train_demo_teacher(recipe: TrainRecipe = TrainRecipe()) -> tuple[DemoNet, dict]:
    """Train the demo teacher on the digits train split; returns the model and its metadata.

    Runs with ``recipe.threads`` intra-op threads (restored afterwards): tiny convolutions gain nothing from
    more, and on a busy 2-core machine two threads were 3-7x slower than one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return _train(recipe)
    finally:
        torch.set_num_threads(threads)


def _train(recipe: TrainRecipe) -> tuple[DemoNet, dict]:
    started = time.perf_counter()
    x_train, y_train = _digits_tensors("train")
    x_test, y_test = _digits_tensors("test")
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_demo("teacher")
    steps_per_epoch = (len(y_train) + recipe.batch_size - 1) // recipe.batch_size
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.2
    )
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            xb = _augment(x_train[idx], recipe.shift, generator)
            loss = F.cross_entropy(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        logger.debug("demo teacher epoch %d: loss %.4f", epoch + 1, total / len(y_train))
    model.eval()
    meta = {
        "test_accuracy": accuracy(model, x_test, y_test),
        "train_accuracy": accuracy(model, x_train, y_train),
        "train_seconds": round(time.perf_counter() - started, 2),
        "train_images": len(y_train),
        "test_images": len(y_test),
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "recipe_version": RECIPE_VERSION,
        "input_spec": DEMO_INPUT.as_dict(),
        "eval_data": "digits:test",
        "dfcompress_version": __version__,
        "torch_version": torch.__version__,
    }
    return model, meta


# --- cache -----------------------------------------------------------------------------------------------


def demo_cache_paths() -> tuple[Path, Path]:
    """(weights, metadata) of the cached demo teacher."""
    folder = cache_dir() / "demo"
    stem = f"teacher-r{RECIPE_VERSION}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _cache_is_valid(weights: Path, meta: Path, quiet: bool = False) -> bool:
    """Whether both cache files exist and the weights fit the current architecture (a few ms)."""
    if not (weights.is_file() and meta.is_file()):
        return False
    try:
        from ..weights import apply_state_dict, read_state_dict

        apply_state_dict(build_demo("teacher"), read_state_dict(weights), spec="demo", path=weights)
        json.loads(meta.read_text())
    except Exception as exc:  # a damaged cache is retrained, never trusted
        if not quiet:
            logger.warning("retraining the demo teacher: its cache %s is unusable (%s)", weights, exc)
        return False
    return True


def ensure_demo_teacher() -> Path:
    """The path of the trained demo teacher's weights, training and caching it on first use.

    A file lock makes concurrent first uses train once; the files are written atomically (weights first,
    then the JSON that marks the cache complete)."""
    from filelock import FileLock
    from safetensors.torch import save_file

    weights, meta = demo_cache_paths()
    if _cache_is_valid(weights, meta, quiet=True):
        return weights
    weights.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(weights.parent / ".teacher.lock")):
        if _cache_is_valid(weights, meta):
            return weights
        logger.info("training the demo teacher on scikit-learn's digits (first use; cached in %s)", weights.parent)
        model, info = train_demo_teacher()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"recipe_version": str(RECIPE_VERSION)}))
        atomic_write_text(meta, json.dumps(info, indent=2) + "\n")
        logger.info(
            "demo teacher: %.2f %% on digits:test (%d images), trained in %.1f s",
            100 * info["test_accuracy"], info["test_images"], info["train_seconds"],
        )
    return weights


def demo_teacher_info() -> dict:
    """The metadata JSON of the cached demo teacher (training it first if needed)."""
    ensure_demo_teacher()
    return json.loads(demo_cache_paths()[1].read_text())
