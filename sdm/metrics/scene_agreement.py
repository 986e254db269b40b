"""Mask adherence on the embedded street scenes, with no learned segmenter.

Each scene class is drawn around its own reference colour, so assigning every pixel to
the class whose reference colour is nearest is a crude but honest segmenter. Scoring a
generated image against its own mask, and against another scene's mask, tells whether the
layout follows the condition (real scenes at 64x64: 0.76 against 0.24).
"""

from __future__ import annotations

import numpy as np
import torch

from sdm.data.scenes import CLASS_REFERENCE_COLOURS, GENERATED_CLASSES


def nearest_class(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W images in [-1, 1] -> B x H x W ids of the nearest reference colour."""
    classes = torch.tensor(GENERATED_CLASSES, device=images.device)
    palette = torch.from_numpy(CLASS_REFERENCE_COLOURS[list(GENERATED_CLASSES)].astype(np.float32))
    rgb = (images.float().clamp(-1, 1) + 1) * 127.5
    distance = ((rgb[:, :, None] - palette.to(images.device).T[None, :, :, None, None]) ** 2).sum(1)
    return classes[distance.argmin(1)]


def colour_agreement(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of pixels whose nearest reference class equals the label."""
    return (nearest_class(images) == labels.to(images.device).long()).float().mean().item()


def agreement_own_and_other(images: torch.Tensor, labels: torch.Tensor, per_mask: int = 1) -> tuple[float, float]:
    """(agreement with their own masks, with another mask): the gap is adherence.

    `images` hold `per_mask` samples of each of the `len(labels)` masks, mask by mask. The
    other-mask baseline pairs every sample of mask i with mask i - 1, never with its own.
    """
    if len(labels) < 2:
        raise ValueError("need at least two masks to compare against another mask")
    if images.shape[0] != len(labels) * per_mask:
        raise ValueError(f"{images.shape[0]} images for {len(labels)} masks x {per_mask} samples")
    own = labels.repeat_interleave(per_mask, 0)
    other = labels.roll(1, dims=0).repeat_interleave(per_mask, 0)
    return colour_agreement(images, own), colour_agreement(images, other)
