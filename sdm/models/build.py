"""The U-Net of a resolved run config: one builder for training, generation and conversion."""

from __future__ import annotations

from typing import Any

from sdm.models.unet import SDMUNet

MODEL_KEYS = ("name",)  # config keys of the model group that are not SDMUNet arguments


def build_unet(cfg: dict[str, Any]) -> SDMUNet:
    """The U-Net of a resolved config (model group + data.num_classes)."""
    kwargs = {k: v for k, v in cfg["model"].items() if k not in MODEL_KEYS}
    return SDMUNet(num_classes=int(cfg["data"]["num_classes"]), **kwargs)
