"""The SDM U-Net as a diffusers model: `save_pretrained` writes config.json (its constructor's
arguments) and safetensors, `from_pretrained` reads them back, with the state dict's keys of
this project's own exports (so weights move between the two layouts unchanged)."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from sdm.models.unet import SDMUNet


class SDMUNet2DModel(SDMUNet, ModelMixin, ConfigMixin):
    """SDMUNet with diffusers' loading and saving; `forward(x, t, cond)` is SDMUNet's."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_classes: int = 35,
        edge_channel: bool = False,
        in_channels: int = 3,
        model_channels: int = 256,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_ds: Sequence[int] = (8, 16, 32),
        num_head_channels: int = 64,
        spade_hidden: int = 128,
        dropout: float = 0.0,
        learn_sigma: bool = True,
        resblock_updown: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes, edge_channel=edge_channel, in_channels=in_channels, model_channels=model_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_ds=attention_ds,
            num_head_channels=num_head_channels, spade_hidden=spade_hidden, dropout=dropout, learn_sigma=learn_sigma,
            resblock_updown=resblock_updown, use_checkpoint=use_checkpoint,
        )
