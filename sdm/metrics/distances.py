"""Distances between a generated and a real image set, in a feature space.

FID and KID use torchmetrics with the standard Inception features (torch-fidelity's port of
the TF network, so numbers compare with published ones). The same metrics accept any
feature network returning (N, d): with the project's segmenter they give a Fréchet distance
that needs no downloaded weights, reported under its own name.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians, in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(root).all():  # singular product: regularise as the reference FID code does
        offset = np.eye(sigma1.shape[0]) * 1e-6
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def gaussian_of(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, d) features."""
    array = features.detach().double().cpu().numpy()
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, d), got {array.shape}")
    return array.mean(0), np.cov(array, rowvar=False)


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8, the input FID's Inception network expects."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionDistances:
    """FID and KID accumulated batch by batch (torchmetrics), for sets too large to hold in memory.

    `feature` is the Inception pool size (2048, the standard) or a module mapping uint8
    images to (N, d) features (tests inject small ones). KID's subset size is capped by the
    smaller set, so it also works for a few dozen images, where FID is strongly biased.
    """

    def __init__(self, feature: int | nn.Module, n_real: int, n_fake: int, kid_subset_size: int = 1000) -> None:
        self.fid = FrechetInceptionDistance(feature=feature, reset_real_features=True)
        subset = max(2, min(kid_subset_size, n_real, n_fake))
        self.kid = KernelInceptionDistance(feature=feature, subset_size=subset, subsets=50)

    def update(self, images: Tensor, real: bool) -> None:
        """A batch of [-1, 1] images of the real or the generated set."""
        batch = to_uint8(images)
        self.fid.update(batch, real=real)
        self.kid.update(batch, real=real)

    def compute(self) -> dict[str, float]:
        kid_mean, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
