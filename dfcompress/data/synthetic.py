"""Synthetic data sets on disk: shards of uint8 images + labels, and a manifest with checksums.

Layout of a data set directory::

    manifest.json              what was asked for (teacher, synthesizer, options, seed, counts) and
                               every finished shard with its sha256, seed, count and batch metrics
    shard-00000.safetensors    images (uint8, N x C x H x W), labels (int64), confidence (float32)

Shards are written atomically (temporary file, fsync, rename) and only then recorded in the manifest, so
a run killed at any moment loses at most the shard it was writing; re-running the same command continues
after the last recorded shard. Shard ``i`` is synthesized from a seed derived from the run seed and ``i``,
which makes a resumed data set identical, image for image, to an uninterrupted one.

Made by several processes (:mod:`dfcompress.distributed`), each rank writes the shards it owns and records each one
in a side file ``record-00003.json`` (the manifest entry); only rank 0 writes the manifest, into which it merges
the records (:meth:`SyntheticWriter.collect`) after the others are done and whenever it reopens the data set, so a
rank killed at any moment loses at most its shard in progress.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import SINGLE, World
from ..errors import DataError
from ..io import atomic_write, atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "dfcompress-synthetic/1"
MANIFEST = "manifest.json"


def shard_seed(run_seed: int, index: int) -> int:
    """The seed of shard ``index``: a hash of the run seed and the index (independent streams per shard)."""
    digest = hashlib.sha256(f"dfcompress:{run_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def options_hash(request: dict) -> str:
    """A short hash of what defines the data set's content (used to refuse resuming a different request)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ShardPlan:
    index: int
    count: int
    seed: int


class SyntheticWriter:
    """Writes a data set shard by shard; opening an existing directory with the same request resumes it."""

    def __init__(self, directory: str | Path, request: dict, *, num_images: int, batch_size: int, seed: int,
                 world: World = SINGLE) -> None:
        self.directory = Path(directory)
        self.request = dict(request, num_images=num_images, batch_size=batch_size, seed=seed)
        self.hash = options_hash(self.request)
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.world = world
        path = self.directory / MANIFEST
        if not path.exists() and not world.is_main:
            raise DataError(f"rank {world.rank} cannot see the data set {self.directory} that rank 0 created: the run "
                            "directory must be on storage every process sees (docs/distributed.md)")
        if path.exists():
            manifest = read_manifest(self.directory)
            if manifest.get("options_hash") != self.hash:
                raise DataError(
                    f"{self.directory} holds a different synthetic data set (other teacher, method, options or "
                    "seed); choose another --out or delete it"
                )
            self.manifest = manifest
            if world.is_main:
                self.collect()
            if self.manifest["shards"]:
                logger.info("resuming %s after %d finished shard(s)", self.directory, len(self.manifest["shards"]))
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT,
                "options_hash": self.hash,
                "request": self.request,
                "complete": False,
                "shards": [],
            }
            self._write_manifest()

    def plan(self) -> list[ShardPlan]:
        """Every shard of the data set, finished or not."""
        plans, remaining, index = [], self.num_images, 0
        while remaining > 0:
            count = min(self.batch_size, remaining)
            plans.append(ShardPlan(index, count, shard_seed(self.seed, index)))
            remaining -= count
            index += 1
        return plans

    def pending(self) -> list[ShardPlan]:
        done = {s["index"] for s in self.manifest["shards"]} | {s["index"] for s in self._records()}
        return [p for p in self.plan() if p.index not in done]

    def _records(self) -> list[dict]:
        """The shards recorded in side files (by ranks other than 0) whose file is intact, not yet in the manifest."""
        found = []
        for path in sorted(self.directory.glob("record-*.json")):
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                shard = self.directory / entry["file"]
                if shard.is_file() and sha256_file(shard) == entry["sha256"]:
                    found.append(entry)
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ignoring the unreadable shard record %s (its shard is made again)", path)
        return found

    def collect(self) -> int:
        """Rank 0: merge the shards other ranks recorded into the manifest; return how many."""
        known = {s["index"] for s in self.manifest["shards"]}
        new = [entry for entry in self._records() if entry["index"] not in known]
        if new:
            self.manifest["shards"] = sorted(self.manifest["shards"] + new, key=lambda s: s["index"])
            self.manifest["complete"] = self.complete
            self._write_manifest()
        for path in self.directory.glob("record-*.json"):
            path.unlink(missing_ok=True)
        return len(new)

    @property
    def complete(self) -> bool:
        return not self.pending()

    def add(self, plan: ShardPlan, images: torch.Tensor, labels: torch.Tensor, *, confidence: torch.Tensor,
            metrics: dict[str, Any]) -> None:
        """Store one finished shard (images in [0, 1] float, or uint8) and record it in the manifest."""
        from safetensors.torch import save_file

        if images.dtype != torch.uint8:
            images = to_uint8(images)
        name = f"shard-{plan.index:05d}.safetensors"
        tensors = {
            "images": images.contiguous().cpu(),
            "labels": labels.to(torch.int64).contiguous().cpu(),
            "confidence": confidence.float().contiguous().cpu(),
        }
        atomic_write(self.directory / name, lambda tmp: save_file(tensors, tmp))
        entry = {
            "index": plan.index,
            "file": name,
            "count": int(labels.numel()),
            "seed": plan.seed,
            "sha256": sha256_file(self.directory / name),
            "mean_confidence": round(float(confidence.float().mean()), 5),
            "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
        }
        if not self.world.is_main:
            atomic_write_text(self.directory / f"record-{plan.index:05d}.json", json.dumps(entry, indent=1))
            return
        self.manifest["shards"].append(entry)
        self.manifest["shards"].sort(key=lambda s: s["index"])
        self.manifest["complete"] = self.complete
        self._write_manifest()

    def truncate(self, count: int) -> None:
        """Forget every shard from index ``count`` on (an online run resumed from an earlier round re-makes them)."""
        dropped = [s for s in self.manifest["shards"] if s["index"] >= count]
        if not dropped:
            return
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["index"] < count]
        self.manifest["complete"] = self.complete
        self.manifest.pop("final", None)
        self._write_manifest()
        for shard in dropped:
            (self.directory / shard["file"]).unlink(missing_ok=True)
        logger.info("%s: dropped %d shard(s) made after the last finished round", self.directory, len(dropped))

    def finalize(self, reason: str) -> None:
        """Mark the data set final with the shards it has (a time-bounded run stopped before making them all),
        so that ``load`` and ``--synthetic`` accept it."""
        self.manifest["final"] = True
        self.manifest["final_reason"] = reason
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.directory / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=False))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixel-space floats in [0, 1] to uint8 (rounded, clamped)."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory} is not a synthetic data set (no {MANIFEST}); create one with dfcompress synthesize")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is corrupt ({exc}); delete the directory and synthesize again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def verify(directory: str | Path) -> list[str]:
    """Check every recorded shard against its checksum; return one problem line per broken shard."""
    directory = Path(directory)
    problems = []
    for shard in read_manifest(directory)["shards"]:
        path = directory / shard["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"{path}: checksum mismatch (corrupt or modified)")
    return problems


@dataclass
class SyntheticData:
    """A loaded synthetic data set: uint8 images (N x C x H x W), labels and per-image teacher confidence."""

    images: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor
    manifest: dict

    def __len__(self) -> int:
        return int(self.labels.numel())


def random_batches(data: SyntheticData, input_spec: Any, *, count: int, batch_size: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` images of ``data`` drawn at random (a seeded permutation), normalised for ``input_spec``, with
    their labels, in CPU batches of ``batch_size``: calibration images for quantization, data-driven pruning
    criteria."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)[:count]
    return [(input_spec.normalize(data.images[idx].float().div(255)), data.labels[idx])
            for idx in (order[start:start + batch_size] for start in range(0, len(order), batch_size))]


def read_shard(directory: str | Path, shard: dict) -> dict[str, torch.Tensor]:
    """The tensors of one manifest entry, checked against its checksum (a DataError naming the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / shard["file"]
    if not path.is_file() or sha256_file(path) != shard["sha256"]:
        raise DataError(f"shard {path} is missing or corrupt (checksum mismatch); run dfcompress data verify {directory}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"shard {path} cannot be read: {exc}") from None


def load(directory: str | Path, *, require_complete: bool = True) -> SyntheticData:
    """Read every shard, checking its checksum: a corrupt shard is a DataError naming the file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if require_complete and not (manifest.get("complete") or manifest.get("final")):
        raise DataError(
            f"{directory} is an unfinished synthetic data set ({len(manifest['shards'])} shard(s)); "
            "re-run the same synthesize command to finish it"
        )
    images, labels, confidence = [], [], []
    for shard in manifest["shards"]:
        tensors = read_shard(directory, shard)
        images.append(tensors["images"])
        labels.append(tensors["labels"])
        confidence.append(tensors["confidence"])
    if not images:
        raise DataError(f"{directory} holds no images")
    return SyntheticData(torch.cat(images), torch.cat(labels), torch.cat(confidence), manifest)


def export_imagefolder(data: SyntheticData, out: str | Path, classes: list[str] | None = None) -> int:
    """Write the images as PNG files in ImageFolder layout (``out/<class>/<index>.png``); returns the count."""
    from PIL import Image

    out = Path(out)
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
        name = classes[label] if classes else f"{label:04d}"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(folder / f"{i:06d}.png")
    return len(data)
