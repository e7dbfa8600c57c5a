"""Real labelled images for evaluation: ImageFolder directories and archives, scikit-learn's digits, CIFAR-10.

Every source returns an :class:`EvalData` of uint8 pixels already at the teacher's input size and channel
count. Decoding is paid once: the decoded tensors of each (folder or archive, split, channels, size) are
cached in ``cache_dir()/data/decoded`` as ``.safetensors`` files. Archives are read as a stream, never
unpacked (writing 60,000 small files took longer than decoding them).
"""
from __future__ import annotations

import abc
import difflib
import hashlib
import io
import json
import logging
import os
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..components import InputSpec
from ..errors import DataError
from ..io import atomic_write, cache_dir

if TYPE_CHECKING:
    from ..registry import Registry

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
#: bump when the decoded-cache format or the resizing changes, so old caches are ignored
DECODE_VERSION = 1
#: the held-out split of scikit-learn's digits shared by DigitsSource and the demo teacher
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class EvalData:
    """Labelled images: ``images`` uint8 N x C x H x W at the teacher's input size, ``labels`` long N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset_per_class(self, k: int, seed: int = 0) -> EvalData:
        """At most ``k`` images of each class, drawn at random with ``seed`` (kept in their original order)."""
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(self), generator=generator)
        picked = []
        for cls in range(self.num_classes):
            members = order[self.labels[order] == cls]
            picked.append(members[:k])
        index = torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)
        return EvalData(self.images[index], self.labels[index], list(self.classes), f"{self.name}[{k}/class]")

    def normalized(self, input_spec: InputSpec, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` as float model input (scaled to [0, 1], then normalised)."""
        return input_spec.normalize(self.images[start:stop].float().div_(255.0))


class DataSource(abc.ABC):
    """A kind of evaluation data, addressed as ``name:arg`` (for example ``digits:test``)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: specs shown by ``dfcompress datasets``
    examples: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def load(self, arg: str, input_spec: InputSpec) -> EvalData:
        """The images named by ``arg``, resized and converted to ``input_spec``'s size and channels."""


# --- pixel conversion ------------------------------------------------------------------------------------


def _pil_mode(channels: int, where: str) -> str:
    modes = {1: "L", 3: "RGB"}
    if channels not in modes:
        raise DataError(f"{where}: images can be converted to 1 or 3 channels, the teacher wants {channels}")
    return modes[channels]


def convert_channels(images: torch.Tensor, channels: int, where: str = "eval data") -> torch.Tensor:
    """uint8 N x C x H x W to ``channels`` (1 <-> 3): replicate grey, or take ITU-R 601 luma of RGB."""
    have = images.shape[1]
    if have == channels:
        return images
    _pil_mode(channels, where)
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if have == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"{where}: cannot convert {have}-channel images to {channels} channels")


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 N x C x H x W; a no-op at the right size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# --- scikit-learn digits ---------------------------------------------------------------------------------


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as uint8 N x 1 x 8 x 8 (0..16 scaled to 0..255) and long labels.

    A fixed stratified split (20 % test, seed 0): the demo teacher trains on ``train`` only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise DataError(f"digits has the splits train and test, not '{split}'; use digits:train or digits:test")
    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(
        index, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    chosen = np.sort(train if split == "train" else test)
    pixels = np.rint(digits.images[chosen] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    labels = torch.from_numpy(digits.target[chosen].astype(np.int64))
    return images, labels


class DigitsSource(DataSource):
    """``digits[:train|test]``: scikit-learn's 8x8 handwritten digits upscaled to the teacher's input."""

    name = "digits"
    summary = "scikit-learn's bundled handwritten digits: digits[:train|test]"
    examples = ("digits:test", "digits:train")

    def load(self, arg: str, input_spec: InputSpec) -> EvalData:
        split = arg or "test"
        images, labels = digits_split(split)
        images = convert_channels(resize_uint8(images, input_spec.image_size), input_spec.channels, "digits")
        return EvalData(images, labels, [str(d) for d in range(10)], f"digits:{split}")


# --- image folders and archives --------------------------------------------------------------------------


def _split_arg(arg: str) -> tuple[str, str | None]:
    """``PATH[:train|test]`` to (PATH, split or None)."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail in SPLITS:
        return head, tail
    return arg, None


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _file_key(path: Path) -> str:
    """sha256 of a file (16 hex digits), memoised on (path, size, mtime) so large archives are hashed once."""
    stat = path.stat()
    memo = cache_dir() / "data" / "hashes" / (
        hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    )
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    key = digest.hexdigest()[:16]
    atomic_write(memo, lambda tmp: Path(tmp).write_text(key))
    return key


#: one image to decode: its file (or its bytes from an archive), its label, and its name for errors
Item = tuple[Path | bytes, int, str]


def _decode(item: Item, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    source, _, where = item
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img = img.convert(mode)
            if img.size != (size[1], size[0]):  # PIL's bilinear filter widens its support when shrinking
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {where} ({exc}); remove or replace it") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_all(items: list[Item], input_spec: InputSpec, where: str) -> torch.Tensor:
    mode = _pil_mode(input_spec.channels, where)
    size = (int(input_spec.image_size[0]), int(input_spec.image_size[1]))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda item: _decode(item, mode, size), items, chunksize=64))
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


def _cached_decode(
    key: str, input_spec: InputSpec, where: str, build: Callable[[], tuple[list[Item], list[str], str]]
) -> tuple[EvalData, str]:
    """The decoded images for ``key`` at ``input_spec``'s size and channels, from the safetensors cache or
    decoded by ``build()`` -> (items, classes, split) and cached atomically; returns them and the split."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    h, w = input_spec.image_size
    cache = cache_dir() / "data" / "decoded" / f"{key}-v{DECODE_VERSION}-{input_spec.channels}x{h}x{w}.safetensors"
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as fh:
                meta = fh.metadata()
                data = EvalData(fh.get_tensor("images"), fh.get_tensor("labels"), json.loads(meta["classes"]), where)
                return data, meta["split"]
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            logger.warning("ignoring damaged decoded-image cache %s (%s)", cache, exc)
    started = time.perf_counter()
    items, classes, split = build()
    images = _decode_all(items, input_spec, where)
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    metadata = {"classes": json.dumps(classes), "split": split}
    atomic_write(cache, lambda tmp: save_file({"images": images, "labels": labels}, tmp, metadata=metadata))
    logger.info("decoded %d images of %s in %.1f s (cached in %s)", len(items), where, time.perf_counter() - started, cache)
    return EvalData(images, labels, classes, where), split


def _group(
    paths: list[tuple[tuple[str, ...], Path | bytes]], where: str, classes: list[str] | None = None
) -> tuple[list[Item], list[str]]:
    """ImageFolder labelling: the first path component is the class (sorted), images may sit deeper.

    A class folder without images is an error (as in torchvision): skipping it would shift every label."""
    paths = [(parts, source) for parts, source in paths if len(parts) >= 2]
    if not paths:
        raise DataError(f"eval data {where} is empty: it holds no images in <class>/<image> folders ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted(classes if classes is not None else {parts[0] for parts, _ in paths})
    index = {c: i for i, c in enumerate(classes)}
    items = [(source, index[parts[0]], f"{where}/{'/'.join(parts)}") for parts, source in sorted(paths, key=lambda p: p[0])]
    empty = sorted(set(classes) - {parts[0] for parts, _ in paths})
    if empty:
        raise DataError(
            f"eval data {where}: class folder(s) {', '.join(empty[:5])} hold no images; remove them or add images"
        )
    return items, classes


# directories


def _folder_images(folder: Path, where: str) -> tuple[list[tuple[tuple[str, ...], Path | bytes]], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"eval data {where} has no class folders; expected an ImageFolder layout: <class>/<image>.png")
    paths: list[tuple[tuple[str, ...], Path | bytes]] = [
        (p.relative_to(folder).parts, p)
        for cls in classes
        for p in (folder / cls).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return paths, classes


def load_image_folder(folder: Path, input_spec: InputSpec, name: str) -> EvalData:
    """Decode an ImageFolder directory at ``input_spec``'s size and channels (cached, keyed by the files'
    names, sizes and modification times, so an edited folder is decoded again)."""
    paths, classes = _folder_images(folder, name)
    digest = hashlib.sha256(json.dumps([str(folder.resolve()), classes]).encode())
    for parts, path in sorted(paths, key=lambda p: p[0]):
        stat = path.stat()  # type: ignore[union-attr]
        digest.update(f"{'/'.join(parts)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    key = f"folder-{digest.hexdigest()[:16]}"
    return _cached_decode(key, input_spec, name, lambda: (*_group(paths, name, classes), ""))[0]


# archives (read straight from the stream: unpacking 60,000 small files costs more than decoding them)


def _read_archive(archive: Path, skip: str | None) -> tuple[dict[tuple[str, ...], bytes], bool]:
    """The image members of ``archive`` by path parts; members under a top-level (or once-wrapped) ``skip``
    folder are not kept. Returns the members and whether any were skipped."""
    members: dict[tuple[str, ...], bytes] = {}
    skipped = False
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("", ".", "/"))
                if (
                    not member.isfile()
                    or not parts
                    or not parts[-1].lower().endswith(IMAGE_SUFFIXES)
                    or any(p.startswith(".") for p in parts)
                ):
                    continue
                if skip is not None and skip in parts[:2]:
                    skipped = True
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    members[parts] = fh.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"archive {archive} is truncated or not a tar archive ({exc}); download it again") from exc
    return members, skipped


def _strip_wrappers(members: dict[tuple[str, ...], bytes]) -> dict[tuple[str, ...], bytes]:
    """Drop folders that wrap everything (``cifar10/test/cat/1.jpg`` -> ``test/cat/1.jpg``)."""
    while members:
        firsts = {parts[0] for parts in members}
        if len(firsts) != 1 or next(iter(firsts)) in SPLITS or any(len(p) < 3 for p in members):
            return members
        members = {parts[1:]: data for parts, data in members.items()}
    return members


def _archive_items(archive: Path, split: str | None, raw: str) -> tuple[list[Item], list[str], str]:
    """(items, classes, the split read or "" for an archive without train/ and test/)."""
    wanted = split or "test"
    other = next(s for s in SPLITS if s != wanted)
    members, skipped = _read_archive(archive, other)
    members = _strip_wrappers(members)
    tops = {parts[0] for parts in members}
    if wanted in tops and (other in tops or skipped):
        chosen = [(parts[1:], data) for parts, data in members.items() if parts[0] == wanted]
        return (*_group(chosen, f"{raw}:{wanted}"), wanted)
    if split is not None:
        raise DataError(f"eval data {archive} has no train/ and test/ folders, so ':{split}' cannot pick one; drop it")
    if skipped:  # a plain ImageFolder with a class folder named like a split: read it whole
        members = _strip_wrappers(_read_archive(archive, None)[0])
    return (*_group(list(members.items()), raw), "")


def load_image_archive(archive: Path, split: str | None, input_spec: InputSpec, raw: str) -> EvalData:
    """Decode the ImageFolder inside a ``.tar.gz`` (split ``train``/``test`` when it has both), cached by
    the archive's sha256."""
    key = f"{_archive_stem(archive)}-{_file_key(archive)}-{split or 'test'}"
    data, found = _cached_decode(key, input_spec, raw, lambda: _archive_items(archive, split, raw))
    if split is not None and found != split:
        raise DataError(f"eval data {archive} has no train/ and test/ folders, so ':{split}' cannot pick one; drop it")
    data.name = f"{raw}:{found}" if found else raw
    return data


class FolderSource(DataSource):
    """``folder:PATH[:train|test]`` or a bare PATH: an ImageFolder directory or a ``.tar.gz`` of one.

    When the folder (or archive) has ``train/`` and ``test/`` at the top, the suffix picks one (default test)."""

    name = "folder"
    summary = "an ImageFolder directory or a .tar.gz of one (also accepted as a bare path)"
    examples = ("folder:path/to/images", "path/to/images.tar.gz:test")

    def load(self, arg: str, input_spec: InputSpec) -> EvalData:
        raw, split = _split_arg(arg)
        if not raw:
            raise DataError(f"{self.name} needs a path: {self.name}:PATH[:train|test]")
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"eval data path {path} does not exist; give an ImageFolder directory or a .tar.gz of one")
        if path.is_file():
            if not _is_archive(path):
                raise DataError(
                    f"eval data {path} is a file but not a .tar.gz/.tgz/.tar archive; "
                    f"give an ImageFolder directory or an archive of one"
                )
            return load_image_archive(path, split, input_spec, raw)
        if all((path / s).is_dir() for s in SPLITS):
            split = split or "test"
            return load_image_folder(path / split, input_spec, f"{raw}:{split}")
        if split is not None:
            raise DataError(f"eval data {path} has no train/ and test/ folders, so ':{split}' cannot pick one; drop it")
        return load_image_folder(path, input_spec, raw)


class Cifar10Source(FolderSource):
    """``cifar10:PATH[:train|test]``: the CIFAR-10 ImageFolder tarball (10 classes, airplane .. truck)."""

    name = "cifar10"
    summary = "CIFAR-10 ImageFolder tarball: cifar10:PATH[:train|test]"
    examples = ("cifar10:../shared/data/cifar10-jpeg.tar.gz:test",)
    CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def load(self, arg: str, input_spec: InputSpec) -> EvalData:
        if not _split_arg(arg)[0]:
            raise DataError("cifar10 needs the path of the CIFAR-10 ImageFolder tarball: cifar10:PATH[:train|test]")
        data = super().load(arg, input_spec)
        if tuple(data.classes) != self.CLASSES:
            raise DataError(
                f"eval data {data.name} is not CIFAR-10: its classes are {', '.join(data.classes[:12])}; "
                f"use folder:PATH for other data"
            )
        data.name = f"cifar10:{data.name}"
        return data


# --- entry point -----------------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith(".") or spec.lower().endswith(ARCHIVE_SUFFIXES)


def resolve_data_source(spec: str, registry: Registry | None = None) -> tuple[DataSource, str]:
    """``source:arg`` (a registered data source) or a bare path (a folder) to (source, arg)."""
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    known = registry.names("datasets")
    head, sep, rest = spec.partition(":")
    if head in known:
        return registry.get("datasets", head)(), rest
    if Path(_split_arg(spec)[0]).expanduser().exists() or _looks_like_path(spec):
        return registry.get("datasets", FolderSource.name)(), spec
    close = difflib.get_close_matches(head, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(
        f"eval data '{spec}' is neither an existing path nor a data source.{hint} "
        f"Known sources: {', '.join(known)}; or give an ImageFolder path"
    )


def load_data(
    spec: str, input_spec: InputSpec, *, registry: Registry | None = None, teacher: str | None = None
) -> EvalData:
    """Load ``spec`` (``digits:test``, ``cifar10:PATH:test``, ``folder:PATH``, or a bare PATH) for ``input_spec``.

    Raises DataError when the data is missing, empty, unreadable or has a different number of classes."""
    source, arg = resolve_data_source(spec, registry)
    data = source.load(arg, input_spec)
    if data.num_classes != input_spec.num_classes:
        who = f"teacher {teacher}" if teacher else "the teacher"
        raise DataError(
            f"eval data {data.name} has {data.num_classes} classes, {who} has {input_spec.num_classes}; "
            f"use data with the teacher's classes"
        )
    return data
