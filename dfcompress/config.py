"""The run configuration: one dataclass from which `dfcompress run` flags, config files and docs derive."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError
from .options import as_dict, build, options_of, to_toml


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.I)
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``90s``, ``1h30m``, ``1.5h`` or ``45`` (seconds)."""
    value = str(text).strip()
    pos, total, parts = 0, 0.0, 0
    while pos < len(value):
        match = _DURATION.match(value, pos)
        if match is None or match.end() == pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2).lower() if match.group(2) else None]
        pos, parts = match.end(), parts + 1
        while pos < len(value) and value[pos] == " ":
            pos += 1
    if not value or pos != len(value) or parts == 0 or total <= 0:
        raise ConfigError(f"--time-budget {text!r} is not a positive duration; use e.g. 30m, 90s, 1h30m or 1.5h")
    return total


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


#: the component option tables of a config file: table -> (the RunConfig field naming the component, its registry
#: kind, the short ``dfcompress run`` flag of one option)
COMPONENTS = {
    "synth_options": ("synth", "synthesizers", "-s"),
    "distill_options": ("distiller", "distillers", "-d"),
    "prune_options": ("pruner", "pruners", "-p"),
    "quant_options": ("quantizer", "quantizers", "-Q"),
}
#: table -> the RunConfig field naming the component
COMPONENT_TABLES = {table: name for table, (name, _, _) in COMPONENTS.items()}


@dataclass(frozen=True)
class RunConfig:
    teacher: str = _opt("demo", "teacher model spec: demo, cifar:resnet56, timm:resnet18, torchvision:resnet18")
    weights: Optional[str] = _opt(None, "teacher weights (.pt/.pth/.th state dict or .safetensors)")
    trust_weights: bool = _opt(False, "allow a weights file that needs full unpickling (runs code: trusted files only)")
    num_classes: Optional[int] = _opt(None, "classes of the teacher (and student) for model specs whose source allows "
                                      "it, e.g. timm/torchvision specs with a 10-class head (default: the source's)")
    image_size: Optional[int] = _opt(None, "input height = width of the teacher (and student) in pixels, for sources "
                                     "that allow it (default: the source's)")
    fuse_bn: bool = _opt(False, "fold the teacher's BatchNorm layers into its convolutions first, as deployed models "
                         "often are (methods that need BatchNorm statistics then refuse it; seeded and imagine work)")
    task: str = _opt("prune", "what to do with the synthetic images (see `dfcompress plugins`)")
    synth: str = _opt("natural", "synthesizer (model inversion method)")
    student: Optional[str] = _opt(None, "student model spec for --task distill (default: the teacher's architecture)")
    pruner: str = _opt("l1", "pruning criterion for --task prune")
    distiller: str = _opt("kd", "how the student / pruned model learns from the teacher")
    quantizer: str = _opt("x86", "post-training quantization backend for --task quantize and --then quantize")
    then: Optional[str] = _opt(None, "a task that takes the compressed model further, on the same synthetic images: "
                               "--task prune --then quantize prunes, fine-tunes, then quantizes to int8")
    ratio: float = _opt(0.5, "fraction removed by pruning, in (0, 1)")
    ratio_of: str = _opt("channels", "what --ratio counts", choices=("channels", "params", "macs"))
    num_images: int = _opt(1024, "number of synthetic images")
    batch_size: int = _opt(256, "synthesis batch size (BatchNorm statistics are matched per batch)")
    labels: str = _opt("balanced", "target labels: balanced, random, or a comma list of class indices")
    iterations: Optional[int] = _opt(None, "synthesis iterations per batch (default: the synthesizer's own)")
    epochs: Optional[int] = _opt(None, "training epochs of the distiller (default: the task's own)")
    schedule: Optional[str] = _opt(None, "offline (synthesize every image, then train) or online (rounds of synthesis "
                                   "against the current student, each followed by training); default: the "
                                   "synthesizer's own", choices=("offline", "online"))
    time_budget: Optional[str] = _opt(None, "total wall time for synthesis + training, e.g. 30m, 90s, 1h30m; the run "
                                      "stops there, evaluates and reports (default: no limit)")
    round_batches: int = _opt(1, "online: synthesis batches per round")
    round_steps: int = _opt(50, "online: training steps over the whole pool per round (and per training-only round "
                                "of a time-bounded run)")
    warmup_rounds: int = _opt(0, "online: first rounds that only synthesize (no training, no student term)")
    eval_every: int = _opt(0, "online: evaluate on the real data every this many rounds (a learning curve); 0: never")
    synthesis_share: float = _opt(0.5, "offline with --time-budget: the share of the budget spent synthesizing")
    synthetic: Optional[str] = _opt(None, "reuse a synthetic data set directory instead of synthesizing")
    eval_data: Optional[str] = _opt(None, "real evaluation data: a folder, a .tar.gz, digits, cifar10:PATH")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N, mps")
    precision: str = _opt("32-true", "numeric precision", choices=("32-true", "bf16-mixed", "16-mixed"))
    memory_format: str = _opt("auto", "memory layout of the models: channels_last (faster for conv nets on CPU and "
                              "GPU), contiguous, or auto (channels_last for models with 2-d convolutions)",
                              choices=("auto", "channels_last", "contiguous"))
    seed: int = _opt(0, "random seed (runs are reproducible on the same machine)")
    out: Optional[str] = _opt(None, "run directory (default: runs/<time>-<synth>-<task>)")
    synth_options: dict = field(default_factory=dict, metadata={"help": "synthesizer options (key=value)"})
    distill_options: dict = field(default_factory=dict, metadata={"help": "distiller options (key=value)"})
    prune_options: dict = field(default_factory=dict, metadata={"help": "pruner options (key=value)"})
    quant_options: dict = field(default_factory=dict, metadata={"help": "quantizer options (key=value)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"--num-classes must be at least 2, got {self.num_classes}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image-size must be at least 8 pixels, got {self.image_size}")
        if self.num_images < 1:
            raise ConfigError(f"--num-images must be at least 1, got {self.num_images}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"--iterations must be at least 1, got {self.iterations}")
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError(f"--epochs must be at least 0, got {self.epochs}")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        for name in ("round_batches", "round_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_rounds", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        if not 0.0 < self.synthesis_share < 1.0:
            raise ConfigError(f"--synthesis-share must be in (0, 1), got {self.synthesis_share}")

    @property
    def budget_seconds(self) -> float | None:
        """``time_budget`` in seconds, or None."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def to_dict(self) -> dict:
        data = {k: v for k, v in as_dict(self).items() if k not in COMPONENT_TABLES}
        for table in COMPONENT_TABLES:
            data[table] = dict(getattr(self, table))
        return data

    def to_toml(self) -> str:
        return to_toml(self.to_dict())


SCALAR_FIELDS = [o for o in options_of(RunConfig) if o.name not in COMPONENT_TABLES]
#: the run settings that decide a synthetic data set (the options of ``dfcompress synthesize``)
SYNTHESIZE_FIELDS = [o for o in SCALAR_FIELDS if o.name in {
    "teacher", "weights", "trust_weights", "num_classes", "image_size", "fuse_bn", "synth", "num_images", "batch_size", "labels", "iterations", "device",
    "precision", "memory_format", "seed"}]


def read_config_file(path: str | Path) -> dict:
    """Read a TOML run configuration; unknown keys and wrong types are a ConfigError listing the valid keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    valid = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    for table in COMPONENT_TABLES:
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(f"config file {path}: [{table}] must be a table of key = value")
    return data


def make_run_config(*layers: dict) -> RunConfig:
    """Merge layers (lowest precedence first): scalars replace, component option tables merge key by key."""
    merged: dict[str, Any] = {}
    tables: dict[str, dict] = {t: {} for t in COMPONENT_TABLES}
    for layer in layers:
        for key, value in layer.items():
            if key in COMPONENT_TABLES:
                tables[key].update(value or {})
            elif value is not None:
                merged[key] = value
    config = build(RunConfig, merged, owner="run")
    return replace(config, **tables)
