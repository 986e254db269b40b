"""Official tensor names -> this project's, and the attention projection's channel order.

Our U-Net mirrors the official module tree (input_blocks / middle_block / output_blocks,
the same block indices), so a tensor keeps its path and only the names inside a block
differ: the official blocks keep norm, activation and conv in numbered `nn.Sequential`s
where ours name them. The one change of values is the attention's qkv projection: the
official QKVAttentionLegacy reads its 3C output channels as [head][q|k|v][head channel],
ours (`sdm.models.attention.split_heads`) as [q|k|v][head][head channel].
"""

from __future__ import annotations

import re

from torch import Tensor

# (official pattern, ours); applied in order to every name (no official name repeats a segment)
RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^time_embed\.([02])\.", r"time_embed.mlp.\1."),  # Linear, SiLU, Linear
        (r"\.in_layers\.0\.", ".in_norm."),  # ResBlock: GroupNorm, SiLU, conv
        (r"\.in_layers\.[12]\.", ".in_conv."),  # conv: index 2 in a ResBlock, 1 in an SDMResBlock
        (r"\.out_layers\.0\.", ".out_norm."),  # ResBlock: GroupNorm, SiLU, Dropout, conv
        (r"\.out_layers\.3\.", ".out_layers.2."),  # ResBlock; an SDMResBlock has SiLU, Dropout, conv like ours
        (r"\.skip_connection\.", ".skip."),
        (r"\.mlp_shared\.", ".shared."),  # SPADE's conv net
        (r"\.mlp_gamma\.", ".gamma."),
        (r"\.mlp_beta\.", ".beta."),
    )
)

QKV_SUFFIXES = (".qkv.weight", ".qkv.bias")


def our_name(official: str) -> str:
    """The name of an official tensor in this project's SDMUNet state dict."""
    name = official
    for pattern, replacement in RENAMES:
        name = pattern.sub(replacement, name)
    return name


def is_qkv(name: str) -> bool:
    return name.endswith(QKV_SUFFIXES)


def legacy_qkv_to_ours(tensor: Tensor, num_heads: int) -> Tensor:
    """Reorder the 3C output rows of a qkv conv (weight or bias) from [head][q|k|v][c] to
    [q|k|v][head][c]: the same attention, read the way our AttentionBlock splits heads."""
    rows = tensor.shape[0]
    if rows % (3 * num_heads):
        raise ValueError(f"a qkv projection of {rows} rows does not split into 3 x {num_heads} heads")
    grouped = tensor.reshape(num_heads, 3, rows // (3 * num_heads), *tensor.shape[1:])
    return grouped.transpose(0, 1).reshape(tensor.shape).contiguous()
