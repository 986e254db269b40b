"""The controls that calibrate a consistency figure: real photos made worse on purpose.

An instrument that can judge generated images must score a blurred photo clearly below the
photo itself, and a photo against another scene's mask near zero. The blur control is a
down-and-up resize: it keeps the layout and colours and removes the detail a generator must
also render.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

BLUR_FACTOR = 2  # 2x down, then up: the default blur control


def blur_control(images: Tensor, factor: int = BLUR_FACTOR) -> Tensor:
    """Images (B, 3, H, W) resized down by `factor` (area average) and back up (bilinear)."""
    if factor < 2:
        raise ValueError(f"blur factor {factor} is invalid: expected an integer >= 2")
    height, width = images.shape[-2:]
    small = F.interpolate(images, size=(max(1, height // factor), max(1, width // factor)), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
