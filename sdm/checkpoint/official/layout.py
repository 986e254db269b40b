"""The network configuration an official state dict's tensor shapes decide.

Widths, depth, the levels with attention, up/down-sampling blocks, the number of label
channels and whether the variance is learned are all visible in the tensors, so they are
read rather than assumed. What no shape shows (image size, attention heads, how the label
channels split into classes and an edge channel) comes from `sdm.checkpoint.official.published`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from torch import Tensor

from sdm.core.errors import CheckpointError

BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Layout:
    """What the tensors of an official SDM U-Net say about its configuration."""

    in_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    attention_channels: tuple[int, ...]  # the width of every attention block, in state-dict order
    label_channels: int  # classes + the instance-edge channel, if any
    spade_hidden: int
    learn_sigma: bool
    resblock_updown: bool


def layer_kind(params: set[str]) -> str:
    """What one layer of an official block is, from the names of its tensors."""
    if "in_norm.mlp_shared.0.weight" in params:
        return "spade"  # SDMResBlock: decoder and middle
    if "in_layers.2.weight" in params:
        return "res"  # ResBlock: encoder, also its downsampling blocks
    if "qkv.weight" in params:
        return "attn"
    if "conv.weight" in params:
        return "up"  # Upsample with a conv
    return "other"  # the stem, a Downsample's conv (op.*): nothing the layout tells apart


def blocks(state: dict[str, Tensor], part: str) -> list[list[str]]:
    """Kinds of the layers of every block of `part`, blocks and layers in index order; a block
    without tensors (a parameter-free resampler) shows as an empty list."""
    found: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name in state:
        match = BLOCK.match(name)
        if match and match[1] == part:
            found[int(match[2])][int(match[3])].add(match[4])
    if not found:
        raise CheckpointError(f"no {part}.* tensors: not the U-Net of the official SDM code")
    # found is a defaultdict: an index without tensors reads as an empty block
    return [[layer_kind(found[i][j]) for j in sorted(found[i])] for i in range(max(found) + 1)]


def shape(state: dict[str, Tensor], name: str) -> tuple[int, ...]:
    if name not in state:
        raise CheckpointError(f"no tensor {name}: not the U-Net of the official SDM code")
    return tuple(state[name].shape)


def read_layout(state: dict[str, Tensor]) -> Layout:
    """The configuration of an official SDM U-Net, read from its tensor shapes."""
    model_channels = shape(state, "time_embed.0.weight")[1]
    stem_out, in_channels = shape(state, "input_blocks.0.0.weight")[:2]
    out_channels = shape(state, "out.2.weight")[0]
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"out.2.weight predicts {out_channels} channels for {in_channels}-channel images: "
                              "neither eps nor eps + variance")
    encoder, decoder = blocks(state, "input_blocks"), blocks(state, "output_blocks")
    up = [i for i, layers in enumerate(decoder) if layers.count("spade") > 1 or "up" in layers]
    num_res_blocks = up[0] if up else len(decoder) - 1
    levels, rest = divmod(len(decoder), num_res_blocks + 1)
    if num_res_blocks < 1 or rest or len(encoder) != 1 + levels * (num_res_blocks + 1) - 1:
        raise CheckpointError(f"{len(encoder)} input blocks and {len(decoder)} output blocks (upsampling in "
                              f"{up}) are not the SDM U-Net's pattern")
    if any(not layers for layers in encoder + decoder):
        raise CheckpointError("up/downsampling without a conv (the official conv_resample=False) has no "
                              "counterpart in this U-Net")
    channel_mult, attention_ds = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        width = shape(state, f"input_blocks.{first}.0.in_layers.2.weight")[0]
        if width % model_channels:
            raise CheckpointError(f"input_blocks.{first} is {width} channels wide, not a multiple of the "
                                  f"{model_channels} model channels (fractional channel_mult is not supported)")
        channel_mult.append(width // model_channels)
        with_attention = {"attn" in encoder[first + i] for i in range(num_res_blocks)}
        if with_attention == {True}:
            attention_ds.append(2**level)
        elif len(with_attention) > 1:
            raise CheckpointError(f"only some blocks of level {level} have attention: not the SDM U-Net's pattern")
    if stem_out != channel_mult[0] * model_channels:
        raise CheckpointError(f"input_blocks.0.0.weight makes {stem_out} channels, not channel_mult[0] x "
                              f"model_channels = {channel_mult[0] * model_channels}")
    spade = [name for name in state if name.endswith(".mlp_shared.0.weight")]
    if not spade:
        raise CheckpointError("no SPADE tensors (*.mlp_shared.0.weight): not the U-Net of the official SDM code")
    spade_hidden, label_channels = shape(state, spade[0])[:2]
    first_down = encoder[num_res_blocks + 1] if levels > 1 else None  # all levels resample alike
    emb = shape(state, "input_blocks.1.0.emb_layers.1.weight")[0]
    if emb != 2 * channel_mult[0] * model_channels:
        raise CheckpointError("the timestep projection makes one value per channel: the checkpoint was trained with "
                              "use_scale_shift_norm=False, which this U-Net does not have")
    return Layout(
        in_channels=in_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        attention_ds=tuple(attention_ds),
        attention_channels=tuple(shape(state, n)[1] for n in state if n.endswith(".qkv.weight")),
        label_channels=label_channels,
        spade_hidden=spade_hidden,
        learn_sigma=out_channels == 2 * in_channels,
        resblock_updown=first_down == ["res"],
    )
