"""`SDMPipeline`: label maps in, photographs out, as a diffusers pipeline.

    pipe = SDMPipeline.from_pretrained("runs/demo/train/pipeline")
    images = pipe(label_map, num_images_per_mask=5, guidance_scale=1.5, num_inference_steps=15).images

The scheduler is a component like in any diffusers pipeline (`pipe.scheduler = UniPCMultistepScheduler
.from_config(pipe.scheduler.config)`); the sampling loop is this project's (`sdm.diffusion.sample`),
so a pipeline and `sample.py` with the same weights, scheduler, seeds and steps give the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from sdm.core.viz import to_uint8_image
from sdm.data.classes import ClassTable, table_from_config
from sdm.data.rows import RowError, label_to_ids
from sdm.diffusion import sample
from sdm.models import label_to_condition
from sdm.pipelines.unet import SDMUNet2DModel

LabelMap = np.ndarray | Image.Image | torch.Tensor


class SDMPipeline(DiffusionPipeline):
    """Semantic image synthesis (SDM, Wang et al. 2022): one or more label maps -> images.

    The class table (names, palette, ignore id) is part of the pipeline's config, so colour-coded
    label maps in its palette are read as well as class-id maps."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: SDMUNet2DModel, scheduler: SchedulerMixin, class_names: list[str] | None = None,
                 palette: list[list[int]] | None = None, ignore: int | None = None,
                 image_size: list[int] | None = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        names = list(class_names) if class_names else [f"class {i}" for i in range(unet.num_classes)]
        self.register_to_config(class_names=names, palette=palette, ignore=ignore, image_size=image_size)

    @property
    def table(self) -> ClassTable:
        """The class table the label maps are read with (names, colours, ignore id)."""
        return table_from_config({"name": "pipeline", "names": list(self.config.class_names),
                                  "palette": self.config.palette or "auto", "ignore": self.config.ignore,
                                  "label_format": "auto"}, where="the pipeline's class table")

    def label_ids(self, label_map: LabelMap) -> np.ndarray:
        """H x W class ids of one label map: an id array or tensor, a mode L/P image, or an RGB image
        in the class palette; ValueError naming what is wrong."""
        if isinstance(label_map, torch.Tensor):
            label_map = label_map.detach().cpu().numpy()
        if isinstance(label_map, np.ndarray) and label_map.ndim == 2:
            if label_map.dtype.kind not in "iu":
                raise ValueError(f"a label map array holds integer class ids, got dtype {label_map.dtype}")
            label_map = Image.fromarray(label_map.astype(np.int32), "I")
        elif isinstance(label_map, np.ndarray):
            label_map = Image.fromarray(label_map.astype(np.uint8))
        if not isinstance(label_map, Image.Image):
            raise ValueError(f"a label map is an H x W id array, a tensor or a PIL image, got {type(label_map).__name__}")
        try:
            ids = label_to_ids(label_map, self.table)
        except RowError as err:
            raise ValueError(str(err).removeprefix("field 'label': ")) from None
        size = self.config.image_size
        factor = 2 ** (len(self.unet.config.channel_mult) - 1)
        if ids.shape[0] % factor or ids.shape[1] % factor:
            raise ValueError(f"a label map of {ids.shape[1]}x{ids.shape[0]} (width x height): each side must be a "
                             f"multiple of {factor} for this U-Net (it was trained at {size[1]}x{size[0]})"
                             if size else f"each side must be a multiple of {factor}")
        return ids

    @torch.no_grad()
    def __call__(
        self,
        label_map: LabelMap | Sequence[LabelMap],
        num_images_per_mask: int = 1,
        guidance_scale: float = 1.5,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        instance_map: np.ndarray | Sequence[np.ndarray] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> ImagePipelineOutput | tuple[Any]:
        """`num_images_per_mask` images for each label map (mask i's images first); `instance_map`
        (int ids, one per label map) gives the edge channel instance boundaries where the model has one.
        `output_type`: "pil", "np" (N x H x W x 3 in [0, 1]) or "pt" (N x 3 x H x W in [0, 1])."""
        maps = list(label_map) if isinstance(label_map, list | tuple) else [label_map]
        ids = [self.label_ids(m) for m in maps]
        if len({i.shape for i in ids}) > 1:
            raise ValueError(f"the label maps differ in size ({sorted({i.shape for i in ids})}); pass one size per call")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}; expected 'pil', 'np' or 'pt'")
        if isinstance(num_images_per_mask, bool) or not isinstance(num_images_per_mask, int) or num_images_per_mask < 1:
            raise ValueError(f"num_images_per_mask must be an integer >= 1, got {num_images_per_mask!r}")
        device = self._execution_device
        label = torch.from_numpy(np.stack(ids)).long().to(device)
        edges = None
        if instance_map is not None:
            instances = list(instance_map) if isinstance(instance_map, list | tuple) else [instance_map]
            edges = torch.from_numpy(np.stack([np.asarray(m, dtype=np.int64) for m in instances])).to(device)
        cond = label_to_condition(label, self.unet.num_classes, self.unet.edge_channel, edges)
        cond = cond.repeat_interleave(num_images_per_mask, dim=0)
        if isinstance(generator, list) and len(generator) != cond.shape[0]:
            raise ValueError(f"{len(generator)} generators for {cond.shape[0]} images (one per image, or one for all)")
        images = sample(self.unet, cond, noise_config={"learn_sigma": bool(self.unet.config.learn_sigma)},
                        scheduler=self.scheduler, num_steps=int(num_inference_steps),
                        guidance_scale=float(guidance_scale), eta=float(eta), generator=generator, callback=callback)
        images = images.float().cpu()
        if output_type == "pil":  # the same rounding as sample.py's PNGs
            output: Any = [Image.fromarray(to_uint8_image(image)) for image in images]
        else:
            output = (images + 1) / 2 if output_type == "pt" else ((images + 1) / 2).permute(0, 2, 3, 1).numpy()
        return ImagePipelineOutput(images=output) if return_dict else (output,)
