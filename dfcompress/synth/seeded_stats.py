"""Class-conditional feature statistics for the ``seeded`` synthesizer ("You Get What You Sow", Sec. 3.3).

For each class y and hooked layer l the file holds the per-channel mean mu_{l,y} and (biased) variance
sigma^2_{l,y} of that layer's OUTPUT, pooled over every image of class y and every spatial position
(dims 0, 2, 3), accumulated in float64. Sources ("scenarios"):

* A -- the training set (metadata released with the model);
* B -- a folder of seed images, any number per class;
* C -- one seed image, expanded to several views by random crop and flip as IMAGINE does (``augment``).

Files are ``.safetensors``: tensors ``mean/<layer>`` and ``var/<layer>`` (K x C float32) and ``counts``
(K, images per class including augmented views), with metadata ``teacher``, ``input_spec``, ``layers``,
``counts_per_class``, ``augment`` and ``format``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..components import Teacher
from ..errors import ConfigError, DataError

FORMAT = "dfcompress-class-stats/1"
DEFAULT_LAYER_TYPES = ("Conv2d",)


@dataclass
class ClassStats:
    """Per-class, per-layer channel mean and variance of a teacher's feature maps."""

    layers: list[str]
    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]
    counts: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.counts.numel())

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file (atomically: a temporary file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"counts": self.counts.to(torch.int64).contiguous()}
        for name in self.layers:
            tensors[f"mean/{name}"] = self.mean[name].float().contiguous()
            tensors[f"var/{name}"] = self.var[name].float().contiguous()
        meta = dict(self.metadata)
        meta.update(format=FORMAT, layers=self.layers, counts_per_class=[int(c) for c in self.counts])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClassStats":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"statistics file {path} does not exist; make one with "
                "'dfcompress stats collect --teacher SPEC --data DIR --out stats.safetensors'"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                raw = handle.metadata() or {}
                meta = {k: json.loads(v) for k, v in raw.items()}
                if meta.get("format") != FORMAT:
                    raise DataError(f"{path} is not a dfcompress class-statistics file (format {meta.get('format')!r})")
                layers = list(meta["layers"])
                mean = {n: handle.get_tensor(f"mean/{n}") for n in layers}
                var = {n: handle.get_tensor(f"var/{n}") for n in layers}
                counts = handle.get_tensor("counts")
        except DataError:
            raise
        except Exception as exc:  # corrupt or foreign file
            raise DataError(f"cannot read statistics file {path}: {exc}") from exc
        return cls(layers, mean, var, counts, meta)


def select_layers(model: nn.Module, layers: str | Sequence[str] = DEFAULT_LAYER_TYPES) -> list[str]:
    """Names of the layers to hook. ``layers`` is a sequence of class names (``("Conv2d",)``), or a string:
    comma-separated class names (``"Conv2d,Linear"``) or ``re:PATTERN``, a regular expression matched
    against module names (``"re:layer[0-9]$"``)."""
    if isinstance(layers, str) and layers.startswith("re:"):
        pattern = re.compile(layers[3:])
        names = [n for n, _ in model.named_modules() if n and pattern.search(n)]
    else:
        types = [t.strip() for t in (layers.split(",") if isinstance(layers, str) else layers) if t.strip()]
        names = [n for n, m in model.named_modules() if n and type(m).__name__ in types]
    if not names:
        raise ConfigError(f"no layer of the teacher matches {layers!r}; give class names (Conv2d) or re:PATTERN")
    return names


class OutputCapture:
    """Forward hooks keeping the latest output of each named module (removed by :meth:`remove`)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"the teacher has no layer(s) {missing[:5]}; the statistics were collected on another model")
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._make_hook(n)) for n in names]

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}


def augment_views(pixels: torch.Tensor, views: int, generator: torch.Generator, min_side: float = 0.75) -> torch.Tensor:
    """``views`` random crops (side in [min_side, 1] of the image, bilinear-resized back) each flipped
    with probability 1/2, per image: (N * views) x C x H x W, image-major."""
    n, _, height, width = pixels.shape
    out = []
    for i in range(n):
        for _ in range(views):
            side = float(torch.empty(()).uniform_(min_side, 1.0, generator=generator))
            h, w = max(1, round(height * side)), max(1, round(width * side))
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            crop = pixels[i : i + 1, :, top : top + h, left : left + w]
            crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
            if bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(3)
            out.append(crop)
    return torch.cat(out) if out else pixels[:0]


def collect_stats(
    teacher: Teacher,
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: str | Sequence[str] = DEFAULT_LAYER_TYPES,
    augment: int = 0,
    *,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ClassStats:
    """Class-conditional statistics of ``teacher``'s layer outputs on labelled images.

    ``images`` are pixels: uint8 (0-255) or float in [0, 1], N x C x H x W at the teacher's input size.
    ``augment`` = K > 0 adds K random-crop/flip views of every image (scenario C: one seed image).
    Per class, channel means and biased variances are pooled over all images and positions."""
    spec = teacher.input
    if images.dim() != 4 or images.shape[0] != labels.shape[0]:
        raise DataError(f"expected N x C x H x W images and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise DataError("no images to collect statistics from")
    if tuple(images.shape[1:]) != (spec.channels, *spec.image_size):
        raise DataError(
            f"images are {tuple(images.shape[1:])}, the teacher expects {(spec.channels, *spec.image_size)}"
        )
    labels = labels.long().cpu()
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(f"labels must be in 0..{spec.num_classes - 1}")
    if device is None:
        device = next((p.device for p in teacher.model.parameters()), torch.device("cpu"))
    names = select_layers(teacher.model, layers)
    k = spec.num_classes
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    positions: dict[str, int] = {}  # values per channel per image, for each layer
    counts = torch.zeros(k, dtype=torch.int64)
    generator = torch.Generator().manual_seed(int(seed))
    capture = OutputCapture(teacher.model, names)
    try:
        for begin in range(0, images.shape[0], batch_size):
            pixels = images[begin : begin + batch_size]
            pixels = pixels.float().div(255.0) if not pixels.is_floating_point() else pixels.float()
            batch_labels = labels[begin : begin + batch_size]
            if augment > 0:
                pixels = torch.cat([pixels, augment_views(pixels, augment, generator)])
                batch_labels = torch.cat([batch_labels, batch_labels.repeat_interleave(augment)])
            capture.outputs = {}
            with torch.no_grad():
                teacher.model(spec.normalize(pixels.to(device)))
            for name in names:
                out = capture.outputs[name].double().cpu()
                if out.dim() < 2:
                    raise DataError(f"layer {name} outputs a {out.dim()}-D tensor; choose layers with N x C (x ...) outputs")
                dims = tuple(range(2, out.dim()))
                per_image = out.sum(dim=dims) if dims else out
                per_image_sq = (out * out).sum(dim=dims) if dims else out * out
                if name not in sums:
                    sums[name] = torch.zeros(k, out.shape[1], dtype=torch.float64)
                    squares[name] = torch.zeros(k, out.shape[1], dtype=torch.float64)
                sums[name].index_add_(0, batch_labels, per_image)
                squares[name].index_add_(0, batch_labels, per_image_sq)
                positions[name] = int(out[0, 0].numel())
            counts += torch.bincount(batch_labels, minlength=k)
    finally:
        capture.remove()
    mean, var = {}, {}
    for name in names:
        n_values = (counts.double() * positions[name]).clamp_min(1.0).unsqueeze(1)
        m = sums[name] / n_values
        mean[name] = m.float()
        var[name] = (squares[name] / n_values - m * m).clamp_min(0.0).float()
    metadata = {"teacher": teacher.spec, "input_spec": spec.as_dict(), "augment": int(augment), "source_images": int(images.shape[0])}
    return ClassStats(names, mean, var, counts, metadata)


def class_conditional_loss(
    features: dict[str, torch.Tensor], stats: ClassStats, labels: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """R_CC = sum_l mean_{y in classes} ( ||Mean(x_l | y) - mu_{l,y}||_2 + ||Var(x_l | y) - sigma^2_{l,y}||_2 )
    (Eq. 4 and 7 with equal layer weights, averaged over the classes of the batch that have statistics).

    Mean and Var of class y pool the batch images labelled y over all positions, like the targets.
    ``classes`` are the distinct labels of the batch that have statistics (computed once per batch)."""
    device = labels.device
    weights = (labels.unsqueeze(0) == classes.unsqueeze(1)).float()  # K' x B membership
    weights = weights / weights.sum(dim=1, keepdim=True)
    total = torch.zeros((), device=device)
    for name in stats.layers:
        x = features[name].float()
        dims = tuple(range(2, x.dim()))
        per_image_mean = x.mean(dim=dims) if dims else x
        class_mean = weights @ per_image_mean  # K' x C
        member_mean = class_mean.index_select(0, _class_slot(labels, classes))
        centred = x - member_mean.view(*member_mean.shape, *([1] * len(dims)))
        per_image_var = (centred * centred).mean(dim=dims) if dims else centred * centred
        class_var = weights @ per_image_var
        target_mean = stats.mean[name].to(device).index_select(0, classes)
        target_var = stats.var[name].to(device).index_select(0, classes)
        distance = torch.linalg.vector_norm(class_mean - target_mean, dim=1) + torch.linalg.vector_norm(class_var - target_var, dim=1)
        total = total + distance.mean()
    return total


def _class_slot(labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """For each label, its row in ``classes`` (labels without statistics map to row 0 and get weight 0)."""
    match = labels.unsqueeze(1) == classes.unsqueeze(0)
    return match.float().argmax(dim=1)
