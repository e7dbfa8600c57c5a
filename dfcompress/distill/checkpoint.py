"""A training checkpoint that resumes bit for bit: weights, optimizer, schedule, scaler, RNG and position.

Written atomically (a crash leaves the previous checkpoint) and read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..io import atomic_write
from .sums import StepSums

FORMAT = "dfcompress-train-checkpoint"
VERSION = 1


@dataclass
class RestoredState:
    """Where a resumed run continues: ``epoch`` epochs done, ``step`` steps into the next one."""

    epoch: int
    step: int
    history: list[float]
    generator_state: torch.Tensor | None
    perm: torch.Tensor | None
    sums: list[float]

    def sums_on(self, device: torch.device) -> StepSums:
        return StepSums.from_list(self.sums, device)


class TrainingCheckpoint:
    """One checkpoint file for one training run, identified by ``fingerprint`` (options, data size, seed)."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint = fingerprint

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, *,
             epoch: int, step: int, generator: torch.Generator | None, perm: torch.Tensor | None,
             sums: StepSums | None, history: list[float]) -> None:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "step": step,
            "history": list(history),
            "generator": generator.get_state() if generator is not None else None,
            "perm": perm,
            "sums": sums.to_list() if sums else [],
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        atomic_write(self.path, lambda tmp: torch.save(payload, tmp))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: Any) -> RestoredState | None:
        """Load the checkpoint into the given objects, or return None when there is none yet."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"checkpoint {self.path} is unreadable ({type(exc).__name__}: {exc}); "
                               f"delete it to start over") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise WeightsError(f"{self.path} is not a dfcompress training checkpoint of version {VERSION}")
        if payload["fingerprint"] != self.fingerprint:
            changed = sorted(k for k in set(payload["fingerprint"]) | set(self.fingerprint)
                             if payload["fingerprint"].get(k) != self.fingerprint.get(k))
            raise ConfigError(f"checkpoint {self.path} belongs to a run with other {', '.join(changed)}; "
                              f"use the same settings to resume, or delete it to start over")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        return RestoredState(payload["epoch"], payload["step"], payload["history"], payload["generator"],
                             payload["perm"], payload["sums"])
