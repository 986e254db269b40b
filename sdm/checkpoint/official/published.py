"""What an official checkpoint's shapes cannot tell: the settings the authors published.

From the official scripts and README (scripts/ade20k.sh, scripts/celeba.sh; COCO-Stuff as
in the README's checkpoint table and the scripts of the code's derivatives): every model
is 256x256, attention heads of 64 channels, 1000 linear-schedule steps with learned
variance. CelebA and COCO add one channel of instance edges to the one-hot label map
(`no_instance` False); ADE20K does not. ADE20K's 151st class (id 150) is "unlabeled": the
official loader reads annotation value v as class v - 1 and 0 as 150; COCO's unlabeled
255 becomes 182.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    """The settings of one published model that its tensors do not fix."""

    num_classes: int  # label classes, the instance-edge channel not counted
    edge_channel: bool  # official `no_instance=False`: one more input channel of instance edges
    image_size: int
    num_head_channels: int


PUBLISHED: dict[str, Published] = {
    "ade20k": Published(num_classes=151, edge_channel=False, image_size=256, num_head_channels=64),
    "celeba": Published(num_classes=19, edge_channel=True, image_size=256, num_head_channels=64),
    "coco": Published(num_classes=183, edge_channel=True, image_size=256, num_head_channels=64),
}

NOISE_SCHEDULES = ("linear", "cosine")  # the official `noise_schedule` values this project has too


def diffusion_config(steps: int, schedule: str) -> dict[str, Any]:
    """This project's `diffusion` group for the official `diffusion_steps` and `noise_schedule`.

    The official linear schedule stretches 1e-4..0.02 by 1000 / steps, so that any step count
    spans the same noise range; with 1000 steps it is the paper's schedule.
    """
    scale = 1000 / steps
    return {
        "schedule": schedule,
        "num_train_timesteps": int(steps),
        "beta_start": 0.0001 * scale,
        "beta_end": 0.02 * scale,
        "prediction_type": "epsilon",
    }
