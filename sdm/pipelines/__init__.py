"""sdm as a diffusers pipeline: the U-Net as a diffusers model, `SDMPipeline` with a swappable
scheduler, and the writer of a run's export in the `save_pretrained` layout."""

from sdm.pipelines.pipeline import SDMPipeline
from sdm.pipelines.unet import SDMUNet2DModel

__all__ = ["SDMPipeline", "SDMUNet2DModel"]
