"""Feature hints: the student's intermediate outputs pulled toward the teacher's (FitNets, without regressors).

A pruned model keeps its teacher's module names, and its residual stream keeps the teacher's channels where the
pruner could not cut them (the outputs of every ResNet block, for example): there, matching the teacher's
features gives far more signal per image than the ten logits alone. The term is

    hint = mean over layers l of  mean((s_l - t_l)^2) / mean(t_l^2)

(each layer's squared error relative to the teacher's feature energy, so that deep and shallow layers weigh
alike). ``layers="auto"`` takes every composite module (one that has children: blocks, stages) that student and
teacher both have under the same name and whose outputs have the same shape on the first batch, each output
once (a stage's output, which is its last block's, counts once).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def hint_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of mean((s - t)^2) / mean(t^2), in float32."""
    if not student_features or len(student_features) != len(teacher_features):
        raise ValueError("hint_loss needs as many student features as teacher features (at least one)")
    terms = []
    for s, t in zip(student_features, teacher_features):
        s, t = s.float(), t.float().to(s.device)
        terms.append((s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12))
    return torch.stack(terms).mean()


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


class FeatureHints:
    """Forward hooks on named modules of a teacher and a student; they record only inside ``capture()``."""

    def __init__(self, teacher: nn.Module, student: nn.Module, layers: str) -> None:
        self.teacher, self.student = teacher, _unwrap(student)
        t_modules, s_modules = dict(self.teacher.named_modules()), dict(self.student.named_modules())
        if layers.strip() == "auto":
            self.auto = True
            names = [n for n, m in t_modules.items() if n and any(True for _ in m.children()) and n in s_modules]
        else:
            self.auto = False
            names = [n.strip() for n in layers.split(",") if n.strip()]
            missing = [n for n in names if n not in t_modules or n not in s_modules]
            if missing:
                raise ConfigError(f"distiller kd: feature_layers names {', '.join(missing)}, which the teacher and "
                                  f"the student do not both have (use names from model.named_modules(), or auto)")
        if not names:
            raise ConfigError("distiller kd: feature_weight > 0 but the student has no composite module under a "
                              "name the teacher has; name the layers with feature_layers=a,b,...")
        self.names = names
        self.selected: list[str] | None = None
        self._outputs: dict[str, dict[str, torch.Tensor]] = {"t": {}, "s": {}}
        self._active = False
        self._handles: dict[str, list[Any]] = {}
        for side, modules in (("t", t_modules), ("s", s_modules)):
            for name in names:
                self._handles.setdefault(name, []).append(modules[name].register_forward_hook(self._hook(side, name)))

    def _hook(self, side: str, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._active and isinstance(output, torch.Tensor):
                self._outputs[side][name] = output
        return record

    def capture(self) -> _Capture:
        return _Capture(self)

    def loss(self) -> torch.Tensor:
        """The hint term of the forward passes made inside the last ``capture()``."""
        t_out, s_out = self._outputs["t"], self._outputs["s"]
        if self.selected is None:
            self.selected = self._select(t_out, s_out)
            for name in [n for n in self._handles if n not in self.selected]:  # stop recording what is not used
                for handle in self._handles.pop(name):
                    handle.remove()
        pairs = [(s_out[n], t_out[n]) for n in self.selected]
        return hint_loss([s for s, _ in pairs], [t for _, t in pairs])

    def _select(self, t_out: dict[str, torch.Tensor], s_out: dict[str, torch.Tensor]) -> list[str]:
        chosen, seen = [], set()
        for name in t_out:  # in the order the outputs were made: a block before the stage that ends in it
            t, s = t_out.get(name), s_out.get(name)
            if s is None:
                continue
            if t.shape != s.shape:
                if not self.auto:
                    raise ConfigError(f"distiller kd: feature layer {name} gives {tuple(s.shape)} in the student "
                                      f"and {tuple(t.shape)} in the teacher; hints need equal shapes")
                continue
            if id(t) in seen:  # the same tensor as an earlier module's output (a stage ending in its last block)
                continue
            seen.add(id(t))
            chosen.append(name)
        if not self.auto:
            chosen = [n for n in self.names if n in chosen]
        if not chosen:
            raise ConfigError("distiller kd: feature_weight > 0 but no module of the student gives the teacher's "
                              "output shape under the same name; name the layers with feature_layers=a,b,...")
        return chosen

    def remove(self) -> None:
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles.clear()

    @property
    def hooked(self) -> list[str]:
        """Names of the modules whose outputs are still recorded (after the first loss: only the selected ones)."""
        return list(self._handles)


class _Capture:
    def __init__(self, hints: FeatureHints) -> None:
        self.hints = hints

    def __enter__(self) -> FeatureHints:
        self.hints._outputs = {"t": {}, "s": {}}
        self.hints._active = True
        return self.hints

    def __exit__(self, *exc: Any) -> None:
        self.hints._active = False
        self.hints._outputs = {"t": {}, "s": {}}
