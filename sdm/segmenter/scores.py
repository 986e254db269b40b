"""Semantic consistency: does a segmenter, run on the generated image, find the input mask?

Scores come from one confusion matrix accumulated over all pixels (rows: the mask, columns:
the prediction); pixels whose mask class is `ignore_index` (0, unlabeled) are left out.
mIoU averages the classes that occur in the masks or the predictions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


class ConfusionMatrix:
    """Accumulates the (C x C) confusion matrix of class-id maps over batches (torchmetrics)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 0) -> None:
        self.ignore_index = ignore_index
        self.metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(target.shape)} differ in shape")
        self.metric.update(pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu())

    @property
    def matrix(self) -> Tensor:
        return self.metric.compute().long()

    def scores(self) -> dict[str, Any]:
        return segmentation_scores(self.matrix, self.ignore_index)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 0) -> Tensor:
    """The (C x C) confusion matrix of one set of maps (rows: the mask), without a metric object."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(matrix: Tensor, ignore_index: int | None = 0) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU (None for classes that never occur) of a confusion matrix."""
    matrix = matrix.double()
    true_positive = matrix.diagonal()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    classes = [c for c in range(matrix.shape[0]) if c != ignore_index]
    per_class = {c: (float(true_positive[c] / union[c]) if union[c] > 0 else None) for c in classes}
    present = [v for v in per_class.values() if v is not None]
    total = matrix.sum()
    return {
        "miou": sum(present) / len(present) if present else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": per_class,
        "per_class_pixels": {c: int(matrix[c].sum()) for c in classes},  # pixels of the class in the masks
        "pixels": int(total),
    }
