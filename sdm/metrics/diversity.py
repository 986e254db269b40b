"""Diversity of the samples drawn for one mask, averaged over masks.

The paper's LPIPS diversity is the mean AlexNet-LPIPS over all pairs of samples of the same
mask. The pixel-space diversity, 1 - MS-SSIM over the same pairs, needs no downloaded
weights; it uses as many MS-SSIM scales as the image size allows and says how many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

PairDistance = Callable[[Tensor, Tensor], Tensor]  # (P, 3, H, W) x (P, 3, H, W) -> (P,)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL = 11


def mean_pairwise(groups: Sequence[Tensor], distance: PairDistance) -> float:
    """Mean over masks of the mean distance over all pairs of that mask's samples.

    `groups[i]` holds the k samples of mask i (k x 3 x H x W, in [-1, 1]); masks with a single
    sample have no pair and are left out.
    """
    per_mask = []
    for samples in groups:
        pairs = list(combinations(range(len(samples)), 2))
        if not pairs:
            continue
        first, second = (torch.tensor(index) for index in zip(*pairs, strict=True))
        with torch.no_grad():
            per_mask.append(distance(samples[first], samples[second]).float().mean().item())
    if not per_mask:
        raise ValueError("diversity needs at least two samples of one mask")
    return sum(per_mask) / len(per_mask)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit: the coarsest one must still hold the 11-pixel window."""
    scales = 1
    while scales < len(MS_SSIM_BETAS) and min(height, width) > (KERNEL - 1) * 2**scales:
        scales += 1
    return scales


def ssim_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - MS-SSIM per pair, on images mapped to [0, 1]."""
    a, b = (a.float().clamp(-1, 1) + 1) / 2, (b.float().clamp(-1, 1) + 1) / 2
    scales = ms_ssim_scales(*a.shape[-2:])
    if scales == 1:
        ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    else:
        betas = MS_SSIM_BETAS[:scales]
        betas = tuple(beta / sum(betas) for beta in betas)
        ssim = multiscale_structural_similarity_index_measure(a, b, data_range=1.0, betas=betas, reduction="none")
    return 1 - ssim


def lpips_distance(network: torch.nn.Module) -> PairDistance:
    """The pair distance of an `lpips.LPIPS` network (inputs in [-1, 1])."""
    return lambda a, b: network(a.float(), b.float()).flatten()
