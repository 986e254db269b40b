"""Augmentations applied to image and mask together, and the conversion to a batch item."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

INSTANCE_TARGET = {"instance": "mask"}  # instance ids go through the label's crop and flip


def train_transform(size: tuple[int, int], scale: Sequence[float] = (0.6, 1.0), hflip: float = 0.5) -> A.Compose:
    """Random scale crop (keeping the aspect ratio of `size`) and horizontal flip.

    Masks are resized nearest-neighbour, so no interpolated class ids appear. `scale` [1, 1]
    means no crop at all: at 32x32 an up-scaled crop blurs the image and shifts it against its
    nearest-resized mask by up to a pixel, which cost the segmenter 0.2 mIoU on held-out scenes
    (experiments/results_segmenter.md).
    """
    height, width = size
    aspect = width / height
    low, high = float(scale[0]), float(scale[1])
    if not 0 < low <= high <= 1:
        raise ValueError(f"data.augment.scale must satisfy 0 < low <= high <= 1, got {list(scale)}")
    if low == high == 1:
        return A.Compose([A.HorizontalFlip(p=hflip)], additional_targets=INSTANCE_TARGET)
    return A.Compose(
        [
            A.RandomResizedCrop(
                size=(height, width),
                scale=(low, high),
                ratio=(aspect * 0.9, aspect / 0.9),
                interpolation=cv2.INTER_AREA,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.HorizontalFlip(p=hflip),
        ],
        additional_targets=INSTANCE_TARGET,
    )


def to_item(image: np.ndarray, label: np.ndarray, instance: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """uint8 H x W x 3 image and H x W ids -> {image: 3 x H x W float in [-1, 1], label: uint8 ids}
    (+ instance: int32 ids, the edge channel's source, where the data has instance maps)."""
    image_t = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    label_t = torch.from_numpy(np.array(label, dtype=np.uint8, copy=True))
    item = {"image": image_t.float().div_(127.5).sub_(1.0), "label": label_t}
    if instance is not None:
        item["instance"] = torch.from_numpy(np.array(instance, dtype=np.int32, copy=True))
    return item
