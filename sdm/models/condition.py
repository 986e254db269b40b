"""Turn class-id maps into the network's condition tensor, and drop it for CFG."""

from __future__ import annotations

import torch
from torch import Tensor


def label_edges(label: Tensor) -> Tensor:
    """(B, H, W) ids -> (B, H, W) bool, True where a 4-neighbour carries a different id.

    Both pixels on either side of a class boundary are marked, as in pix2pixHD / SPADE.
    """
    edge = torch.zeros_like(label, dtype=torch.bool)
    dx = label[:, :, 1:] != label[:, :, :-1]
    dy = label[:, 1:, :] != label[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge


def label_to_condition(label: Tensor, num_classes: int, edge_channel: bool = False,
                       edge_ids: Tensor | None = None) -> Tensor:
    """(B, H, W) int64 class ids -> (B, num_classes [+1], H, W) float one-hot map.

    Runs on the label's device (the data loader ships ids, not one-hot maps). With
    ``edge_channel`` a last channel marks the boundaries of ``edge_ids`` ((B, H, W) instance
    ids, as the official code draws them for COCO), or of the classes when it is None.
    """
    if label.ndim != 3:
        raise ValueError(f"label must have shape (B, H, W), got {tuple(label.shape)}")
    if label.dtype.is_floating_point or label.dtype == torch.bool:
        raise ValueError(f"label must hold integer class ids, got dtype {label.dtype}")
    if label.numel() > 0:
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"label ids must lie in 0..{num_classes - 1}, found values in {lo}..{hi}"
            )
    label = label.long()
    b, h, w = label.shape
    channels = num_classes + int(edge_channel)
    cond = torch.zeros(b, channels, h, w, device=label.device, dtype=torch.float32)
    cond.scatter_(1, label[:, None], 1.0)
    if edge_channel:
        if edge_ids is not None and edge_ids.shape != label.shape:
            raise ValueError(f"edge_ids must have the label's shape {tuple(label.shape)}, got {tuple(edge_ids.shape)}")
        cond[:, num_classes] = label_edges(label if edge_ids is None else edge_ids.to(label.device)).float()
    return cond


def drop_condition(cond: Tensor, drop: Tensor) -> Tensor:
    """Zero the condition of the samples where ``drop`` (bool, (B,)) is True.

    The all-zero map is the null condition of classifier-free guidance.
    """
    if drop.dtype != torch.bool or drop.shape != cond.shape[:1]:
        raise ValueError(
            f"drop must be a bool tensor of shape ({cond.shape[0]},), "
            f"got {drop.dtype} {tuple(drop.shape)}"
        )
    keep = (~drop).to(cond.device).view(-1, *([1] * (cond.ndim - 1)))
    return torch.where(keep, cond, torch.zeros((), dtype=cond.dtype, device=cond.device))
