"""The SDM network: U-Net with SPADE decoder, plus condition helpers."""

from sdm.models.build import build_unet
from sdm.models.condition import drop_condition, label_to_condition
from sdm.models.unet import SDMUNet

__all__ = ["SDMUNet", "build_unet", "drop_condition", "label_to_condition"]
