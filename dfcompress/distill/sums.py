"""Running sums of the training loss terms over steps, kept on the device (no host sync per step)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepSums:
    """Sums of the loss, KD and CE terms over a number of steps (an epoch, or an online round)."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    images: int = 0
    steps: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> StepSums:
        return cls(*(torch.zeros((), device=device, dtype=torch.float64) for _ in range(3)))

    @classmethod
    def from_list(cls, values: list[float], device: torch.device) -> StepSums:
        loss, kd, ce, images, steps = values
        return cls(*(torch.tensor(v, device=device, dtype=torch.float64) for v in (loss, kd, ce)),
                   images=int(images), steps=int(steps))

    def to_list(self) -> list[float]:
        return [float(self.loss), float(self.kd), float(self.ce), self.images, self.steps]

    def add(self, loss: torch.Tensor, kd: torch.Tensor, ce: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.kd += kd
        self.ce += ce
        self.images += images
        self.steps += 1

    def means(self) -> dict[str, float]:
        steps = max(1, self.steps)
        return {"loss": float(self.loss) / steps, "kd_loss": float(self.kd) / steps, "ce_loss": float(self.ce) / steps}
