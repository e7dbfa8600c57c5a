"""Frechet distance between Gaussians fitted to teacher penultimate features (NaturalInversion Table 8, "teacher
network FD"; the FID formula with the teacher as the feature extractor). numpy only: the matrix square root
goes through symmetric eigen-decompositions (see :func:`trace_sqrt_product`)."""
from __future__ import annotations

import numpy as np
import torch

from ..components import InputSpec, Teacher
from ..errors import DataError
from .features import logits_and_features


def gaussian(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N x D features, in float64."""
    x = features.double().cpu().numpy()
    if len(x) < 2:
        raise DataError(f"a Frechet distance needs at least 2 images per set, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) computed as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)).

    S1 S2 is similar to the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so both have the same non-negative
    eigenvalues; two ``eigh`` calls give the trace without complex arithmetic and stay exact for singular
    covariances (fewer images than feature dimensions), where scipy's ``sqrtm`` needs an ``eps`` offset."""
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) between two Gaussians (float64)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DataError(f"Gaussians of different dimension: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    value = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def feature_frechet_distance(teacher: Teacher | torch.nn.Module, synth_uint8: torch.Tensor,
                             real_uint8: torch.Tensor, input_spec: InputSpec | None = None, *,
                             device: torch.device | str | None = None, batch_size: int = 256) -> float:
    """Frechet distance between the teacher's penultimate features of synthetic and of real images.

    ``teacher`` is a :class:`Teacher` (its input spec is used) or a module with ``input_spec``."""
    model, spec = (teacher.model, teacher.input) if isinstance(teacher, Teacher) else (teacher, input_spec)
    if spec is None:
        raise DataError("feature_frechet_distance: pass input_spec with a bare model")
    dev = torch.device(device) if device is not None else None
    _, synth = logits_and_features(model, synth_uint8, spec, device=dev, batch_size=batch_size)
    _, real = logits_and_features(model, real_uint8, spec, device=dev, batch_size=batch_size)
    return frechet_distance(*gaussian(synth), *gaussian(real))
