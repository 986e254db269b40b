"""A state dict of the paper authors' code, written from its names and shapes (small networks,
random values): the input of the conversion tests and of the commands' fault tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Official:
    """Tensors and layer plan of an official SDM U-Net (guided_diffusion/unet.py UNetModel with
    use_scale_shift_norm=True, the SPADE hidden width fixed at 128)."""

    def __init__(self, *, mc: int = 32, mult: tuple[int, ...] = (1, 2), nrb: int = 1, attention_ds=(2,),
                 label_channels: int = 6, learn_sigma: bool = True, updown: bool = True, seed: int = 0,
                 meta: bool = False) -> None:
        self.mc, self.label_channels, self.emb, self.meta = mc, label_channels, 4 * mc, meta
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict[str, Tensor] = {}
        self.plan: dict[str, list[tuple[str, str, str]]] = {"input": [], "middle": [], "output": []}
        self.tensor("time_embed.0.weight", self.emb, mc)
        self.tensor("time_embed.0.bias", self.emb)
        self.tensor("time_embed.2.weight", self.emb, self.emb)
        self.tensor("time_embed.2.bias", self.emb)
        ch = mult[0] * mc
        self.tensor("input_blocks.0.0.weight", ch, 3, 3, 3)
        self.tensor("input_blocks.0.0.bias", ch)
        self.plan["input"].append([("conv", "input_blocks.0.0.", "")])
        chans, ds, block = [ch], 1, 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [self.res(f"input_blocks.{block}.0.", ch, m * mc)]
                ch = m * mc
                if ds in attention_ds:
                    layers.append(self.attention(f"input_blocks.{block}.1.", ch))
                self.plan["input"].append(layers)
                chans.append(ch)
                block += 1
            if level != len(mult) - 1:
                prefix = f"input_blocks.{block}.0."
                self.plan["input"].append([self.res(prefix, ch, ch, "down") if updown else self.conv_resample(prefix, ch, "down")])
                chans.append(ch)
                ds *= 2
                block += 1
        self.plan["middle"] = [self.sdm("middle_block.0.", ch, ch), self.attention("middle_block.1.", ch),
                               self.sdm("middle_block.2.", ch, ch)]
        block = 0
        for level, m in reversed(list(enumerate(mult))):
            for i in range(nrb + 1):
                layers = [self.sdm(f"output_blocks.{block}.0.", ch + chans.pop(), m * mc)]
                ch = m * mc
                if ds in attention_ds:
                    layers.append(self.attention(f"output_blocks.{block}.{len(layers)}.", ch))
                if level and i == nrb:
                    prefix = f"output_blocks.{block}.{len(layers)}."
                    layers.append(self.sdm(prefix, ch, ch, "up") if updown else self.conv_resample(prefix, ch, "up"))
                    ds //= 2
                self.plan["output"].append(layers)
                block += 1
        self.norm("out.0.", ch)
        self.tensor("out.2.weight", 6 if learn_sigma else 3, mult[0] * mc, 3, 3)
        self.tensor("out.2.bias", 6 if learn_sigma else 3)

    def tensor(self, name: str, *shape: int, around: float = 0.0) -> None:
        if self.meta:  # shapes only
            self.state[name] = torch.empty(*shape, device="meta")
            return
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 10
        self.state[name] = around + torch.randn(*shape, generator=self.generator) / math.sqrt(fan_in)

    def conv(self, name: str, cout: int, cin: int, k: int = 3) -> None:
        self.tensor(name + "weight", cout, cin, k, k)
        self.tensor(name + "bias", cout)

    def norm(self, name: str, c: int) -> None:
        self.tensor(name + "weight", c, around=1.0)
        self.tensor(name + "bias", c)

    def emb_layer(self, name: str, cout: int) -> None:
        self.tensor(name + "weight", 2 * cout, self.emb)
        self.tensor(name + "bias", 2 * cout)

    def res(self, p: str, cin: int, cout: int, resample: str = "") -> tuple[str, str, str]:
        self.norm(p + "in_layers.0.", cin)
        self.conv(p + "in_layers.2.", cout, cin)
        self.emb_layer(p + "emb_layers.1.", cout)
        self.norm(p + "out_layers.0.", cout)
        self.conv(p + "out_layers.3.", cout, cout)
        if cin != cout:
            self.conv(p + "skip_connection.", cout, cin, 1)
        return "res", p, resample

    def spade(self, p: str, c: int) -> None:
        self.conv(p + "mlp_shared.0.", 128, self.label_channels)
        self.conv(p + "mlp_gamma.", c, 128)
        self.conv(p + "mlp_beta.", c, 128)

    def sdm(self, p: str, cin: int, cout: int, resample: str = "") -> tuple[str, str, str]:
        self.spade(p + "in_norm.", cin)
        self.conv(p + "in_layers.1.", cout, cin)
        self.emb_layer(p + "emb_layers.1.", cout)
        self.spade(p + "out_norm.", cout)
        self.conv(p + "out_layers.2.", cout, cout)  # SiLU, Dropout, conv: no norm in this Sequential
        if cin != cout:
            self.conv(p + "skip_connection.", cout, cin, 1)
        return "sdm", p, resample

    def attention(self, p: str, c: int) -> tuple[str, str, str]:
        self.norm(p + "norm.", c)
        self.tensor(p + "qkv.weight", 3 * c, c, 1)
        self.tensor(p + "qkv.bias", 3 * c)
        self.tensor(p + "proj_out.weight", c, c, 1)
        self.tensor(p + "proj_out.bias", c)
        return "attn", p, ""

    def conv_resample(self, p: str, c: int, resample: str) -> tuple[str, str, str]:
        self.conv(p + ("op." if resample == "down" else "conv."), c, c)
        return resample, p, ""


# --- the official maths, functional --------------------------------------------------------
