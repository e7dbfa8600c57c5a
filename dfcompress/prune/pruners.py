"""Structural pruners on torch-pruning 1.6: ``tp.pruner.BasePruner`` with one importance criterion per class.

Ratio semantics (``Pruner.prune``):

- ``ratio_of="channels"``: local pruning; every prunable layer keeps ``floor(C * (1 - ratio))`` of its ``C``
  output channels (the NaturalInversion / Liu et al. 2018 setup: the least important channels of each layer
  at the same ratio). One ``pruner.step()``.
- ``ratio_of="params"`` / ``"macs"``: that fraction of the whole model's parameters / MACs is removed by
  progressive pruning: the same local pruning (one ratio for every layer) with the channel ratio raised
  step by step, re-scoring channels after each step, stopping at the step closest to ``ratio``; the
  achieved value is reported (``PruneResult.params_removed`` / ``macs_removed`` and a note).

The classifier head (and any other head with as many outputs, e.g. DeiT's distillation head) keeps its output
classes, and layers whose output channels are tied through a channel zero-pad (the CIFAR ResNets' option-A
shortcut, see :mod:`.coupling`) keep all their outputs. Architecture-specific knowledge (attention heads,
auxiliary heads, blocks that cannot be pruned) lives in :mod:`.adapters`; the pruned model is checked to run in
eval and train mode before it is returned.
"""
from __future__ import annotations

import abc
import contextlib
import copy
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from ..components import InputSpec, Pruner, PruneResult
from ..errors import ConfigError, DFCompressError
from ..metrics.cost import count_macs, count_params
from ..metrics.features import find_classifier, forward_with_hooks, model_device
from .adapters import PrunePlan, check_supported, plan_pruning
from .coupling import find_channel_pad_coupling, torch_pruning_warnings_logged

logger = logging.getLogger(__name__)

RATIO_OF = ("channels", "params", "macs")
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PruneOptions:
    """Options shared by every torch-pruning based pruner."""

    progressive_step: float = field(default=0.002, metadata={
        "help": "params/macs targets: smallest rise of the per-layer channel ratio between progressive steps"})
    max_channel_ratio: float = field(default=0.95, metadata={
        "help": "never remove more than this fraction of any layer's channels"})
    round_to: Optional[int] = field(default=None, metadata={
        "help": "keep channel counts a multiple of this (e.g. 8 for tensor cores); None keeps exact counts"})


@dataclass(frozen=True)
class MagnitudeOptions(PruneOptions):
    group_reduction: str = field(default="first", metadata={
        "help": "first: the filter's own norm (Li et al. 2017); mean/sum/max: over all layers of the coupled group",
        "choices": ("first", "mean", "sum", "max")})


@dataclass(frozen=True)
class TaylorOptions(PruneOptions):
    max_batches: int = field(default=8, metadata={
        "help": "at most this many synthetic batches accumulate gradients before each pruning step"})


@dataclass(frozen=True)
class RandomOptions(PruneOptions):
    seed: int = field(default=0, metadata={"help": "seed of the random channel scores"})


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random channel scores from a seeded generator (torch-pruning's RandomImportance draws from
    the global RNG, which would make the baseline depend on whatever ran before)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: tp.Group) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


@contextlib.contextmanager
def _torch_pruning_errors(model: nn.Module, what: str) -> Iterator[None]:
    """torch-pruning failures (tracing, index mapping, a pruning step) as one line naming the architecture."""
    try:
        yield
    except DFCompressError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise DFCompressError(f"torch-pruning 1.6 cannot {what} {type(model).__name__}: {type(exc).__name__}: "
                              f"{message}. Report the architecture; meanwhile prune another one") from exc


def _check_ratio_of_plan(model: nn.Module, plan: PrunePlan, ratio_of: str) -> None:
    """Blocks pruned one by one (ShuffleNetV2) take a channel ratio only."""
    if plan.isolated and ratio_of != "channels":
        raise ConfigError(f"{type(model).__name__} is pruned block by block (channel shuffle); a {ratio_of} target "
                          "is not supported for it: use --ratio-of channels")


def _heads(model: nn.Module, classifier: nn.Module) -> list[nn.Module]:
    """The classifier and every other layer of its type and output width (DeiT's ``head_dist``, ...)."""
    width = classifier.weight.shape[0]
    return [classifier] + [m for m in model.modules() if m is not classifier and type(m) is type(classifier)
                           and getattr(m, "weight", None) is not None and m.weight.shape[0] == width]


def _check_ratio(ratio: float, ratio_of: str) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"pruning ratio must be in (0, 1) (the fraction removed), got {ratio!r}")
    if ratio_of not in RATIO_OF:
        raise ConfigError(f"ratio_of must be one of {', '.join(RATIO_OF)}, got {ratio_of!r}")


class TorchPruningPruner(Pruner):
    """Base class: local structural pruning with ``tp.pruner.BasePruner``; subclasses choose the importance."""

    Config: ClassVar[type] = PruneOptions

    @abc.abstractmethod
    def importance(self) -> tp.importance.Importance:
        """The torch-pruning importance criterion that ranks the channels of each group."""

    def prepare_step(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called before the first pruning step and, in progressive pruning, after every step (each removes
        channels); data-driven criteria (Taylor) compute what they need here."""

    def calibration(self, batches: Batches | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches kept for :meth:`prepare_step` (none for data-free criteria)."""
        return []

    # -- the pruning run ----------------------------------------------------------------------------------
    def prune(self, model: nn.Module, input_spec: InputSpec, *, ratio: float, ratio_of: str = "channels",
              batches: Batches | None = None) -> PruneResult:
        _check_ratio(ratio, ratio_of)
        calibration = self.calibration(batches)
        was_training = model.training
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        model.eval()
        plan = plan_pruning(model, ratio=float(ratio))  # refuses unsupported blocks; may drop auxiliary heads
        example = input_spec.example_input(1, model_device(model))
        with torch.no_grad():
            out_shape = model(example).shape
        params_before, macs_before = count_params(model), count_macs(model, input_spec)

        classifier = find_classifier(model, input_spec)
        names = {m: n for n, m in model.named_modules()}
        heads = _heads(model, classifier)
        ignored: list[nn.Module] = [*heads, *plan.ignored]
        several = len(heads) > 1
        notes = [(f"classifier head{'s' if several else ''} {', '.join(repr(names[h]) for h in heads)} "
                  f"keep{'' if several else 's'} {'their' if several else 'its'} {out_shape[1]} outputs"), *plan.notes]
        self.check_criterion(model, notes)
        _check_ratio_of_plan(model, plan, ratio_of)
        if plan.isolated:
            self._isolated(model, example, float(ratio), calibration, plan)
            notes.append(f"local pruning: each prunable layer inside those blocks lost {ratio:.0%} of its output "
                         "channels (floor)")
            return self._finish(model, input_spec, frozen, was_training, example, out_shape, params_before,
                                macs_before, notes, ratio, ratio_of)
        with _torch_pruning_errors(model, "trace"), plan.traced():
            coupling = find_channel_pad_coupling(model, example, ignored)
        if coupling:
            ignored.extend(coupling.tied_layers.values())
            notes.append(coupling.note())

        if ratio_of == "channels":
            self._one_shot(model, example, ignored, float(ratio), calibration, plan)
            notes.append(f"local pruning: each prunable layer lost {ratio:.0%} of its output channels (floor)")
        else:
            measures: dict[str, Callable[[nn.Module], int]] = {
                "params": count_params, "macs": lambda m: count_macs(m, input_spec)}
            notes.append(self._progressive(model, example, ignored, float(ratio), ratio_of, measures[ratio_of],
                                           calibration, plan))
        return self._finish(model, input_spec, frozen, was_training, example, out_shape, params_before, macs_before,
                            notes, ratio, ratio_of)

    def _finish(self, model: nn.Module, input_spec: InputSpec, frozen: set[str], was_training: bool,
                example: torch.Tensor, out_shape: torch.Size, params_before: int, macs_before: int, notes: list[str],
                ratio: float, ratio_of: str) -> PruneResult:
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
        self._verify(model, example, out_shape)
        model.train(was_training)
        result = PruneResult(model, params_before, count_params(model), macs_before, count_macs(model, input_spec),
                             notes)
        logger.info("%s pruning (%s %.3f): params %d -> %d (%.1f%% removed), MACs %d -> %d (%.1f%% removed)",
                    self.name, ratio_of, ratio, result.params_before, result.params_after,
                    100 * result.params_removed, result.macs_before, result.macs_after, 100 * result.macs_removed)
        return result

    def check_model(self, model: nn.Module, input_spec: InputSpec, *, ratio: float, ratio_of: str = "channels",
                    label: str = "") -> None:
        """A trial on a copy of ``model`` (one-shot local pruning by filter magnitude at ``ratio`` of the
        channels, or half of them for a params/MACs target): an unsupported architecture fails here, in one line
        and in seconds, before any synthesis. The copy is discarded."""
        _check_ratio(ratio, ratio_of)
        check_supported(model)
        trial = copy.deepcopy(model)
        self.check_criterion(trial, [])
        _check_ratio_of_plan(trial, plan_pruning(copy.deepcopy(trial), ratio=float(ratio)), ratio_of)
        shared = {f.name: getattr(self.config, f.name) for f in fields(PruneOptions)}
        trial_pruner = L1Pruner(MagnitudeOptions(**shared), ctx=self.ctx)
        trial_pruner.prune(trial, input_spec, ratio=min(float(ratio) if ratio_of == "channels" else 0.5,
                                                        self.config.max_channel_ratio))
        del trial

    def check_criterion(self, model: nn.Module, notes: list[str]) -> None:
        """Raise ConfigError when this criterion cannot rank ``model``'s channels (default: any model can)."""

    def _pruner(self, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], ratio: float,
                steps: int, plan: PrunePlan,
                scheduler: Callable[[float, int], list[float]] | None = None) -> tp.pruner.BasePruner:
        round_to = math.lcm(self.config.round_to or 1, plan.round_to or 1)
        with torch_pruning_warnings_logged(), _torch_pruning_errors(model, "trace"), plan.traced():
            # fresh dicts: BasePruner's defaults are shared mutable dicts it writes into
            return tp.pruner.BasePruner(
                model, example, importance=self.importance(), global_pruning=False, pruning_ratio=ratio,
                max_pruning_ratio=self.config.max_channel_ratio, iterative_steps=steps, ignored_layers=ignored,
                round_to=round_to if round_to > 1 else None,
                iterative_pruning_ratio_scheduler=scheduler or linear_scheduler,
                in_channel_groups={}, out_channel_groups=dict(plan.out_channel_groups),
                num_heads=dict(plan.num_heads), prune_num_heads=plan.prune_num_heads,
                prune_head_dims=not plan.prune_num_heads, head_pruning_ratio=ratio if plan.prune_num_heads else 0.0,
                channel_groups={},
            )

    def _isolated(self, model: nn.Module, example: torch.Tensor, ratio: float,
                  calibration: list[tuple[torch.Tensor, torch.Tensor]], plan: PrunePlan) -> None:
        """Prune each of ``plan.isolated``'s blocks on its own, from the input it sees in a forward of ``model``."""
        if ratio > self.config.max_channel_ratio:
            raise ConfigError(f"channel ratio {ratio} exceeds max_channel_ratio {self.config.max_channel_ratio}")
        inputs: dict[nn.Module, torch.Tensor] = {}
        handles = [block.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].detach()[:1].clone()))
                   for block, _ in plan.isolated]
        forward_with_hooks(model, example, handles)
        self.prepare_step(model, calibration)
        for block, keep in plan.isolated:
            pruner = self._pruner(block, inputs[block], keep, ratio, 1, PrunePlan())
            self._step(block, pruner, plan)

    @staticmethod
    def _step(model: nn.Module, pruner: tp.pruner.BasePruner, plan: PrunePlan) -> None:
        with _torch_pruning_errors(model, "prune"):
            pruner.step()
        plan.finalize()

    def _one_shot(self, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], ratio: float,
                  calibration: list[tuple[torch.Tensor, torch.Tensor]], plan: PrunePlan) -> None:
        if ratio > self.config.max_channel_ratio:
            raise ConfigError(f"channel ratio {ratio} exceeds max_channel_ratio {self.config.max_channel_ratio}")
        pruner = self._pruner(model, example, ignored, ratio, 1, plan)
        self.prepare_step(model, calibration)
        self._step(model, pruner, plan)

    def _progressive(self, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], ratio: float,
                     ratio_of: str, measure: Callable[[nn.Module], int],
                     calibration: list[tuple[torch.Tensor, torch.Tensor]], plan: PrunePlan) -> str:
        """Progressive local pruning to the step whose removed fraction of ``measure`` is closest to ``ratio``.

        The per-layer channel ratio rises through :func:`channel_ratio_schedule` (the points where some layer's
        kept channel count drops) on a copy of the model, re-scoring channels (and, for Taylor, recomputing
        gradients) after every step, until ``ratio`` is reached. The prunes of the best step are then
        replayed on ``model`` from torch-pruning's pruning history (``DependencyGraph.load_pruning_history``).
        Attention heads follow the same ratio schedule as the channels."""
        schedule = channel_ratio_schedule(model, ignored, self.config.max_channel_ratio, self.config.progressive_step)
        if not schedule:
            raise ConfigError(f"nothing to prune in {type(model).__name__}: every layer is kept whole")
        before = measure(model)
        trial = copy.deepcopy(model)
        modules = dict(trial.named_modules())
        names = {m: n for n, m in model.named_modules()}
        trial_plan = plan_pruning(trial, ratio=schedule[-1])
        pruner = self._pruner(trial, example, [modules[names[m]] for m in ignored], schedule[-1], len(schedule),
                              trial_plan, scheduler=lambda _ratio, _steps: [0.0, *schedule])
        best = (ratio, 0, 0.0, 0.0)  # (|achieved - ratio|, history length, achieved, channel ratio)
        self.prepare_step(trial, calibration)
        for k, channel_ratio in enumerate(schedule, 1):
            self._step(trial, pruner, trial_plan)
            achieved = 1.0 - measure(trial) / before
            logger.debug("progressive step %d/%d: channel ratio %.4f, %s removed %.4f", k, len(schedule),
                         channel_ratio, ratio_of, achieved)
            if abs(achieved - ratio) < best[0]:
                best = (abs(achieved - ratio), len(pruner.pruning_history()), achieved, channel_ratio)
            if achieved >= ratio:
                break
            self.prepare_step(trial, calibration)
        history = list(pruner.pruning_history()[:best[1]])
        del trial, pruner
        with torch_pruning_warnings_logged(), _torch_pruning_errors(model, "trace"), plan.traced():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        with _torch_pruning_errors(model, "prune"):
            graph.load_pruning_history(history)
        plan.finalize()
        note = (f"progressive pruning: per-layer channel ratio {best[3]:.4f} removed {best[2]:.1%} of the "
                f"{ratio_of} (asked {ratio:.1%}; the closest of the steps, which are the points where a layer "
                f"loses a channel)")
        if best[2] < ratio - 0.03 and achieved < ratio:
            note += (f"; stopped at max_channel_ratio {self.config.max_channel_ratio}: layers kept whole (head, "
                     f"coupled layers) limit the reduction")
        return note

    @staticmethod
    def _verify(model: nn.Module, example: torch.Tensor, out_shape: torch.Size) -> None:
        """The pruned model runs in eval mode and, on a copy (BatchNorm statistics untouched), in train mode
        with a batch of two, and gives a logits tensor of the unpruned shape in both."""
        train_copy = copy.deepcopy(model).train()
        pair = example.expand(2, *example.shape[1:]).clone()
        for mode, run, x in (("eval", model, example), ("train", train_copy, pair)):
            try:
                with torch.no_grad():
                    out = run(x)
            except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
                message = " ".join(str(exc).split())[:300]
                raise DFCompressError(
                    f"the pruned {type(model).__name__} no longer runs in {mode} mode ({type(exc).__name__}: "
                    f"{message}): a channel coupling torch-pruning 1.6 does not trace; report the architecture"
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise DFCompressError(f"the pruned {type(model).__name__} returns {type(out).__name__} in {mode} mode, "
                                      "not a logits tensor")
            expected = out_shape if mode == "eval" else torch.Size((2, *out_shape[1:]))
            if out.shape != expected:
                raise DFCompressError(f"pruning changed the output shape {tuple(expected)} -> {tuple(out.shape)} "
                                      f"({mode} mode)")
        del train_copy


def channel_ratio_schedule(model: nn.Module, ignored: list[nn.Module], top: float, min_step: float) -> list[float]:
    """Increasing per-layer channel ratios at which some prunable layer keeps one channel fewer.

    A layer of width C keeps ``int(C * (1 - r))`` channels, which drops to k at r = 1 - k / C; each point is
    taken a hair below (1e-9) so rounding cannot skip it. Points closer than ``min_step`` to the previous one
    are merged, and none exceeds ``top``."""
    if not 0.0 < min_step < 1.0:
        raise ConfigError(f"progressive_step must be in (0, 1), got {min_step}")
    skip = set(ignored)
    widths = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m not in skip:
            width = m.weight.shape[0]
            groups = getattr(m, "groups", 1)
            widths.add(width // groups if 1 < groups < width else width)
    points = sorted({1.0 - k / c - 1e-9 for c in widths for k in range(c - 1, 0, -1) if 1.0 - k / c <= top})
    schedule: list[float] = []
    for point in points:
        if not schedule or point >= schedule[-1] + min_step:
            schedule.append(point)
    return schedule


class L1Pruner(TorchPruningPruner):
    name = "l1"
    summary = "filter L1 norm (torch-pruning)"
    paper = "arXiv:1608.08710"
    Config = MagnitudeOptions
    norm: ClassVar[int] = 1

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=self.norm, group_reduction=self.config.group_reduction,
                                                      normalizer=None)


class L2Pruner(L1Pruner):
    name = "l2"
    summary = "filter L2 norm (torch-pruning)"
    norm = 2


class BNScalePruner(TorchPruningPruner):
    name = "bn_scale"
    summary = "BatchNorm scale magnitude (torch-pruning)"
    paper = "arXiv:1708.06519"

    def importance(self) -> tp.importance.Importance:
        return tp.importance.BNScaleImportance(normalizer=None)

    def check_criterion(self, model: nn.Module, notes: list[str]) -> None:
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(f"pruner bn_scale needs BatchNorm layers, {type(model).__name__} has none; use l1")
        notes.append("bn_scale: channel groups without a BatchNorm layer are not pruned")


class TaylorPruner(TorchPruningPruner):
    """|w * dL/dw| summed per channel (Molchanov et al. 2019), with L = cross-entropy of the model on
    synthetic images against their target labels: data-free Taylor importance. Gradients are recomputed
    before every pruning step, with the model in eval mode (BatchNorm uses its running statistics, which
    the synthetic batches therefore do not change)."""

    name = "taylor"
    summary = "first-order Taylor importance from synthetic batches (torch-pruning)"
    paper = "arXiv:1906.10771"
    needs_data = True
    Config = TaylorOptions

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance(normalizer=None)

    def calibration(self, batches: Batches | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kept = []
        for batch in batches or ():
            if len(kept) >= self.config.max_batches:
                break
            kept.append(batch)
        if not kept:
            raise ConfigError("pruner taylor needs batches of (normalised images, labels), e.g. synthetic ones")
        return kept

    def prepare_step(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        device = model_device(model)
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for images, labels in batches:
                with self.ctx.autocast():
                    logits = model(images.to(device))
                loss = F.cross_entropy(logits.float(), labels.to(device).long()) / len(batches)
                loss.backward()


class RandomPruner(TorchPruningPruner):
    name = "random"
    summary = "random channels (baseline)"
    Config = RandomOptions

    def importance(self) -> tp.importance.Importance:
        return SeededRandomImportance(self.config.seed)
