"""python -m sdm.cli.convert: official SDM checkpoints -> this project's export.

The official state dicts here are written from the official code's names and shapes (small
networks, random values), and `official_forward` runs them with the official maths in
functional torch (ResBlock, SDMResBlock with SPADE, legacy-order attention), so the
converted network is compared with the original rather than with itself.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO
from helpers.folders import write_layout
from helpers.generation import sample_cfg
from helpers.official import Official
from helpers.processes import leftover_path, one_torch_thread
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from sdm.checkpoint.files import EXPORT_CONFIG, EXPORT_WEIGHTS
from sdm.checkpoint.official.convert import (
    Options,
    build_config,
    convert,
    load_official,
    parse_args,
    write_export,
)
from sdm.checkpoint.official.keys import legacy_qkv_to_ours, our_name
from sdm.checkpoint.official.layout import Layout, read_layout
from sdm.cli.convert import main
from sdm.core.atomic import WriteError, temporary_name
from sdm.core.configs import compose
from sdm.core.errors import CheckpointError, ConfigError, DataError
from sdm.data.classes import class_table
from sdm.generation import folder_masks, generate, load_model
from sdm.models import label_to_condition
from sdm.models.attention import AttentionBlock


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from one_torch_thread()


# --- an official state dict: helpers.official.Official -------------------------------------


def gn(h: Tensor, sd: dict, p: str | None) -> Tensor:
    return F.group_norm(h, 32, sd[p + "weight"] if p else None, sd[p + "bias"] if p else None)


def conv(h: Tensor, sd: dict, p: str, **kw) -> Tensor:
    w = sd[p + "weight"]
    op = F.conv1d if w.ndim == 3 else F.conv2d
    return op(h, w, sd[p + "bias"], padding=w.shape[-1] // 2 if w.ndim == 4 else 0, **kw)


def resample(h: Tensor, how: str) -> Tensor:
    if how == "down":
        return F.avg_pool2d(h, 2)
    return F.interpolate(h, scale_factor=2, mode="nearest") if how == "up" else h


def spade(h: Tensor, y: Tensor, sd: dict, p: str) -> Tensor:
    seg = F.interpolate(y, size=h.shape[2:], mode="nearest")
    actv = F.relu(conv(seg, sd, p + "mlp_shared.0."))
    return gn(h, sd, None) * (1 + conv(actv, sd, p + "mlp_gamma.")) + conv(actv, sd, p + "mlp_beta.")


def res_block(h: Tensor, emb: Tensor, y: Tensor, sd: dict, p: str, how: str, kind: str) -> Tensor:
    a = F.silu(gn(h, sd, p + "in_layers.0.") if kind == "res" else spade(h, y, sd, p + "in_norm."))
    a = conv(resample(a, how), sd, p + ("in_layers.2." if kind == "res" else "in_layers.1."))
    h = resample(h, how)
    scale, shift = F.linear(F.silu(emb), sd[p + "emb_layers.1.weight"], sd[p + "emb_layers.1.bias"])[..., None, None].chunk(2, 1)
    a = (gn(a, sd, p + "out_layers.0.") if kind == "res" else spade(a, y, sd, p + "out_norm.")) * (1 + scale) + shift
    a = conv(F.silu(a), sd, p + ("out_layers.3." if kind == "res" else "out_layers.2."))
    return (conv(h, sd, p + "skip_connection.") if p + "skip_connection.weight" in sd else h) + a


def legacy_attention(h: Tensor, sd: dict, p: str, head_channels: int) -> Tensor:
    """QKVAttentionLegacy: heads split first, [head][q|k|v][c]; q and k both scaled by ch^-1/4."""
    b, c, height, width = h.shape
    x = h.reshape(b, c, -1)
    qkv = conv(gn(x, sd, p + "norm."), sd, p + "qkv.")
    heads = c // head_channels
    q, k, v = qkv.reshape(b * heads, 3 * head_channels, -1).split(head_channels, dim=1)
    scale = 1 / math.sqrt(math.sqrt(head_channels))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (x + conv(a, sd, p + "proj_out.")).reshape(b, c, height, width)


def run_layers(h: Tensor, layers, emb: Tensor, y: Tensor, sd: dict, head_channels: int) -> Tensor:
    for kind, p, how in layers:
        if kind in ("res", "sdm"):
            h = res_block(h, emb, y, sd, p, how, kind)
        elif kind == "attn":
            h = legacy_attention(h, sd, p, head_channels)
        elif kind == "conv":
            h = conv(h, sd, p)
        elif kind == "down":
            h = conv(h, sd, p + "op.", stride=2)
        else:
            h = conv(resample(h, "up"), sd, p + "conv.")
    return h


def official_forward(net: Official, x: Tensor, t: Tensor, y: Tensor, head_channels: int) -> Tensor:
    sd, half = net.state, net.mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    hs, h = [], x
    for layers in net.plan["input"]:
        h = run_layers(h, layers, emb, y, sd, head_channels)
        hs.append(h)
    h = run_layers(h, net.plan["middle"], emb, y, sd, head_channels)
    for layers in net.plan["output"]:
        h = run_layers(torch.cat([h, hs.pop()], dim=1), layers, emb, y, sd, head_channels)
    return conv(F.silu(gn(h, sd, "out.0.")), sd, "out.2.")


def options(tmp_path: Path, dataset: str = "coco", **kw) -> Options:
    return Options(checkpoint=tmp_path / "ema_0.9999_best.pt", dataset=dataset, **kw)


def save(net_or_state, path: Path) -> Path:
    torch.save(net_or_state.state if isinstance(net_or_state, Official) else net_or_state, path)
    return path


# --- the network: same outputs as the official maths ---------------------------------------


@pytest.mark.parametrize("edge, updown, learn_sigma", [(False, True, True), (True, True, True), (True, False, False)])
def test_the_converted_unet_computes_what_the_official_one_does(tmp_path, edge, updown, learn_sigma):
    from sdm.models import build_unet

    classes = 5
    net = Official(label_channels=classes + edge, updown=updown, learn_sigma=learn_sigma, attention_ds=(1, 2))
    weights, config = convert(net.state, options(tmp_path, num_classes=classes, num_head_channels=16))
    assert config["model"]["edge_channel"] is edge and config["model"]["resblock_updown"] is updown
    unet = build_unet(config).eval()
    unet.load_state_dict(weights, strict=True)
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 870])
    label = torch.randint(0, classes, (2, 8, 8))
    y = label_to_condition(label, classes, edge)
    with torch.no_grad():
        ours, theirs = unet(x, t, y), official_forward(net, x, t, y, head_channels=16)
    assert ours.shape == (2, 6 if learn_sigma else 3, 8, 8)
    assert theirs.abs().mean() > 0.1  # the comparison is not between near-zero outputs
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_attention_reads_the_legacy_head_order_after_the_permutation():
    """Two and four heads: with one head the two orders coincide and nothing would be tested."""
    for heads in (2, 4):
        c, sd = 64, {}
        for name in ("norm.weight", "norm.bias", "proj_out.bias"):
            sd[name] = torch.randn(c)
        sd["qkv.weight"], sd["qkv.bias"] = torch.randn(3 * c, c, 1) / 8, torch.randn(3 * c)
        sd["proj_out.weight"] = torch.randn(c, c, 1) / 8
        block = AttentionBlock(c, num_head_channels=c // heads).eval()
        permuted = {k: legacy_qkv_to_ours(v, heads) if k.startswith("qkv") else v for k, v in sd.items()}
        block.load_state_dict(permuted)
        h = torch.randn(2, c, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(block(h), legacy_attention(h, sd, "", c // heads), rtol=1e-5, atol=1e-5)
            block.load_state_dict(sd)  # the official rows as they are: another attention
            assert not torch.allclose(block(h), legacy_attention(h, sd, "", c // heads), atol=1e-3)


def test_the_qkv_permutation_moves_each_row_from_head_major_to_qkv_major():
    heads, ch = 3, 2
    rows = torch.tensor([100 * h + 10 * j + c for h in range(heads) for j in range(3) for c in range(ch)])
    expected = torch.tensor([100 * h + 10 * j + c for j in range(3) for h in range(heads) for c in range(ch)])
    assert torch.equal(legacy_qkv_to_ours(rows, heads), expected)
    weight = rows[:, None, None].expand(-1, 5, 1).float()
    assert torch.equal(legacy_qkv_to_ours(weight, heads)[:, 3, 0], expected.float())
    with pytest.raises(ValueError, match="a qkv projection of 9 rows does not split into 3 x 2 heads"):
        legacy_qkv_to_ours(torch.zeros(9, 4, 1), 2)


def test_names_map_block_by_block():
    cases = {
        "time_embed.2.weight": "time_embed.mlp.2.weight",
        "input_blocks.1.0.in_layers.0.weight": "input_blocks.1.0.in_norm.weight",
        "input_blocks.1.0.in_layers.2.bias": "input_blocks.1.0.in_conv.bias",
        "input_blocks.4.0.out_layers.0.bias": "input_blocks.4.0.out_norm.bias",
        "input_blocks.4.0.out_layers.3.weight": "input_blocks.4.0.out_layers.2.weight",
        "input_blocks.4.0.skip_connection.weight": "input_blocks.4.0.skip.weight",
        "middle_block.0.in_norm.mlp_shared.0.weight": "middle_block.0.in_norm.shared.0.weight",
        "output_blocks.2.2.out_norm.mlp_gamma.bias": "output_blocks.2.2.out_norm.gamma.bias",
        "output_blocks.2.2.in_norm.mlp_beta.weight": "output_blocks.2.2.in_norm.beta.weight",
        "output_blocks.2.2.in_layers.1.weight": "output_blocks.2.2.in_conv.weight",
        "output_blocks.2.2.out_layers.2.weight": "output_blocks.2.2.out_layers.2.weight",
        "output_blocks.5.1.qkv.weight": "output_blocks.5.1.qkv.weight",
        "input_blocks.3.0.op.weight": "input_blocks.3.0.op.weight",
        "out.2.bias": "out.2.bias",
    }
    assert {k: our_name(k) for k in cases} == cases


# --- configuration from shapes, the rest from the published settings ------------------------


def test_the_shapes_decide_widths_depth_attention_and_label_channels():
    net = Official(mc=32, mult=(1, 2, 2), nrb=2, attention_ds=(2, 4), label_channels=9, learn_sigma=False,
                   updown=False)
    assert read_layout(net.state) == Layout(
        in_channels=3, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_ds=(2, 4),
        attention_channels=(64,) * 4 + (64,) + (64,) * 6, label_channels=9, spade_hidden=128, learn_sigma=False,
        resblock_updown=False)
    layout = read_layout(Official(mult=(2, 1), attention_ds=(), label_channels=4).state)
    assert (layout.channel_mult, layout.attention_ds, layout.learn_sigma, layout.resblock_updown) == ((2, 1), (), True, True)


def test_block_patterns_the_sdm_unet_cannot_have_are_refused_by_their_counts():
    state = Official(mult=(1, 2), nrb=1, meta=True).state  # 4 input, 4 output blocks, upsampling in block 1
    extra_output = state | {k.replace("output_blocks.3.", "output_blocks.4."): v for k, v in state.items()
                            if k.startswith("output_blocks.3.")}
    with pytest.raises(CheckpointError, match=r"^4 input blocks and 5 output blocks \(upsampling in \[1\]\) are not "
                                              "the SDM U-Net's pattern$"):
        read_layout(extra_output)
    without_last_input = {k: v for k, v in state.items() if not k.startswith("input_blocks.3.")}
    with pytest.raises(CheckpointError, match=r"^3 input blocks and 4 output blocks \(upsampling in \[1\]\) are not"):
        read_layout(without_last_input)
    state = Official(mult=(1, 2), nrb=2, attention_ds=(1,), meta=True).state
    partial = {k: v for k, v in state.items() if not k.startswith("input_blocks.1.1.")}  # block 2 keeps its attention
    with pytest.raises(CheckpointError, match="only some blocks of level 0 have attention"):
        read_layout(partial)


def test_the_export_config_records_the_network_the_data_and_the_official_flags(tmp_path, monkeypatch):
    """config.yaml is what sample.py builds the network from and what a user reads to know
    how the model was trained: checked whole, for one small layout."""
    monkeypatch.chdir(tmp_path)
    layout = read_layout(Official(mc=32, mult=(1, 2), nrb=1, attention_ds=(1, 2), label_channels=6, meta=True).state)
    chosen = Options(checkpoint=Path("ema.pt"), dataset="celeba", image_size=16, num_classes=5, num_head_channels=32,
                     diffusion_steps=500)
    config = build_config(layout, chosen)
    data = config.pop("data")  # the dataset's preset (layout, split, resize ...), its path left to the user
    assert (data["name"], data["layout"], data["path"], data["size"], data["num_classes"]) == (
        "folder", "celebamask", "???", [16, 16], 5)
    assert data["classes"] == {"name": "celeba-5", "count": 5, "palette": "auto", "ignore": None,
                               "label_format": "ids", "instances": False}  # 5, not the preset's 19: generic
    assert config == {
        "run_name": "official-celeba",
        "model": {"name": "official-celeba", "edge_channel": True, "in_channels": 3, "model_channels": 32,
                  "channel_mult": [1, 2], "num_res_blocks": 1, "attention_ds": [1, 2], "num_head_channels": 32,
                  "spade_hidden": 128, "dropout": 0.0, "learn_sigma": True, "resblock_updown": True,
                  "use_checkpoint": False},
        # the official linear schedule stretched by 1000 / 500 steps
        "diffusion": {"schedule": "linear", "num_train_timesteps": 500, "beta_start": 0.0002, "beta_end": 0.04,
                      "prediction_type": "epsilon"},
        "converted_from": {
            "code": "https://github.com/WeilunWang/semantic-diffusion-model",
            "checkpoint": str(tmp_path.resolve() / "ema.pt"),  # absolute: the export may move
            "dataset": "celeba",
            "official_flags": {"image_size": 16, "num_classes": 5, "no_instance": False, "num_channels": 32,
                               "channel_mult": "1,2", "num_res_blocks": 1, "attention_resolutions": "16,8",
                               "num_head_channels": 32, "resblock_updown": True, "learn_sigma": True,
                               "use_new_attention_order": False, "diffusion_steps": 500,
                               "noise_schedule": "linear"},
        },
    }
    cosine = build_config(layout, replace(chosen, noise_schedule="cosine", use_new_attention_order=True))
    assert cosine["diffusion"] == {**config["diffusion"], "schedule": "cosine"}
    flags = cosine["converted_from"]["official_flags"]
    assert (flags["noise_schedule"], flags["use_new_attention_order"]) == ("cosine", True)


def test_image_size_must_be_a_multiple_of_the_downsampling_factor(tmp_path):
    layout = read_layout(Official(mult=(1, 2, 2), label_channels=6, meta=True).state)  # three levels: factor 4
    assert build_config(layout, options(tmp_path, num_classes=5, image_size=4))["data"]["size"] == [4, 4]
    for size in (6, 2):
        with pytest.raises(ConfigError, match=f"^image_size={size} is not a multiple of the U-Net's downsampling "
                                              "factor 4$"):
            build_config(layout, options(tmp_path, num_classes=5, image_size=size))


def test_the_published_ade20k_network_is_read_as_the_paper_preset(tmp_path):
    """The full-size official layout (tensors on the meta device: shapes, no memory)."""
    from omegaconf import OmegaConf

    from sdm.checkpoint.official.convert import build_config, check_fit
    from sdm.models import build_unet

    net = Official(mc=256, mult=(1, 1, 2, 2, 4, 4), nrb=2, attention_ds=(8, 16, 32), label_channels=151, meta=True)
    config = build_config(read_layout(net.state), options(tmp_path, "ade20k"))
    paper = OmegaConf.to_container(compose("train", ["model=paper", "data=ade20k"]).model, resolve=True)
    assert {k: v for k, v in config["model"].items() if k not in ("name", "use_checkpoint")} == \
           {k: v for k, v in paper.items() if k not in ("name", "use_checkpoint")}
    assert config["converted_from"]["official_flags"]["attention_resolutions"] == "32,16,8"
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in build_unet(config).state_dict().items()}
    check_fit(net.state, own, "ade20k.pt")
    assert len(own) == len(net.state)


@pytest.mark.parametrize("dataset, channels, classes, edge", [
    ("ade20k", 151, 151, False), ("celeba", 20, 19, True), ("coco", 184, 183, True), ("coco", 183, 183, False),
])
def test_the_dataset_splits_the_label_channels_into_classes_and_edges(tmp_path, dataset, channels, classes, edge):
    net = Official(mc=64, mult=(1,), label_channels=channels, attention_ds=())
    weights, config = convert(net.state, options(tmp_path, dataset))
    assert (config["data"]["num_classes"], config["model"]["edge_channel"]) == (classes, edge)
    assert config["data"]["size"] == [256, 256] and config["model"]["num_head_channels"] == 64
    assert config["diffusion"] == {"schedule": "linear", "num_train_timesteps": 1000, "beta_start": 0.0001,
                                   "beta_end": 0.02, "prediction_type": "epsilon"}
    assert config["converted_from"]["official_flags"]["no_instance"] is not edge


def test_label_channels_foreign_to_the_dataset_are_refused_with_what_to_pass(tmp_path):
    net = Official(mc=64, mult=(1,), label_channels=152 + 1, attention_ds=())
    with pytest.raises(CheckpointError, match=r"reads 153 label channels, but dataset=ade20k has 151 classes \(\+1 "
                                              r"with instance edges\).*Pass num_classes= and no_instance="):
        convert(net.state, options(tmp_path, "ade20k"))
    with pytest.raises(CheckpointError, match=r"reads 153 label channels, but num_classes=150 \(\+1 with instance "
                                              r"edges\)"):
        convert(net.state, options(tmp_path, "ade20k", num_classes=150))
    # no_instance= alone keeps the dataset's class count: flags that do not add up to the shapes are refused
    with pytest.raises(CheckpointError, match=r"reads 153 label channels, but dataset=ade20k has 151 classes and "
                                              r"no_instance=true make 151: pass the num_classes= and no_instance="):
        convert(net.state, options(tmp_path, "ade20k", no_instance=True))
    with pytest.raises(CheckpointError, match=r"but num_classes=153 and no_instance=false make 154"):
        convert(net.state, options(tmp_path, "ade20k", num_classes=153, no_instance=False))
    _, config = convert(net.state, options(tmp_path, "ade20k", num_classes=153, no_instance=True))
    assert (config["data"]["num_classes"], config["model"]["edge_channel"]) == (153, False)
    _, config = convert(net.state, options(tmp_path, "ade20k", num_classes=152, no_instance=False))
    assert (config["data"]["num_classes"], config["model"]["edge_channel"]) == (152, True)
    coco = Official(mc=64, mult=(1,), label_channels=184, attention_ds=())  # 183 classes + edges
    with pytest.raises(CheckpointError, match="coco has 183 classes and no_instance=true make 183"):
        convert(coco.state, options(tmp_path, "coco", no_instance=True))  # would feed the edges as class 183
    assert convert(coco.state, options(tmp_path, "coco", no_instance=False))[1]["data"]["num_classes"] == 183


def test_head_counts_become_one_head_width(tmp_path):
    net = Official(mult=(1, 2), attention_ds=(1, 2))  # attention 32 and 64 channels wide
    assert convert(net.state, options(tmp_path, num_classes=5, num_head_channels=16))[1]["model"]["num_head_channels"] == 16
    with pytest.raises(CheckpointError, match=r"attention blocks \[32, 64\] channels wide split into 2 heads of "
                                              "different widths"):
        convert(net.state, options(tmp_path, num_classes=5, num_heads=2))
    only_wide = Official(mult=(1, 2), attention_ds=(2,))
    width = convert(only_wide.state, options(tmp_path, num_classes=5, num_heads=4))[1]["model"]["num_head_channels"]
    assert width == 16 and type(width) is int  # config.yaml reads 16, not 16.0
    with pytest.raises(CheckpointError, match=r"\[32, 64\] channels wide do not split into heads of 64"):
        convert(net.state, options(tmp_path, num_classes=5))


# --- refusals: named, one line, nothing written --------------------------------------------


def test_the_first_tensor_that_does_not_fit_is_named_in_both_spellings(tmp_path):
    net = Official(label_channels=6)
    with pytest.raises(CheckpointError, match=r"reads 6 label channels, but num_classes=7 and no_instance=false "
                                              r"make 8"):  # label flags are checked against the shapes first
        convert(net.state, options(tmp_path, num_classes=7, no_instance=False))
    bent = dict(net.state)
    bent["output_blocks.1.0.in_layers.1.weight"] = torch.zeros(64, 128, 3, 3)
    with pytest.raises(CheckpointError, match=r"official output_blocks\.1\.0\.in_layers\.1\.weight \(64, 128, 3, 3\) "
                                              r"-> ours output_blocks\.1\.0\.in_conv\.weight \(64, 96, 3, 3\)"):
        convert(bent, options(tmp_path, num_classes=5))
    extra = {**net.state, "label_emb.weight": torch.zeros(3, 4)}
    with pytest.raises(CheckpointError, match=r"official label_emb\.weight \(3, 4\) has no counterpart here"):
        convert(extra, options(tmp_path, num_classes=5))
    lacking = {k: v for k, v in net.state.items() if k != "output_blocks.2.0.out_layers.2.bias"}
    with pytest.raises(CheckpointError, match=r"ours output_blocks\.2\.0\.out_layers\.2\.bias \(32,\) has no "
                                              r"official tensor \(1 missing\); pass the flags it was trained with"):
        convert(lacking, options(tmp_path, num_classes=5))
    nan = {**net.state, "out.2.bias": torch.full((6,), float("nan"))}
    with pytest.raises(CheckpointError, match=r"^'.*ema_0\.9999_best\.pt' holds non-finite weights \(NaN or inf\) in "
                                              r"out\.2\.bias"):
        convert(nan, options(tmp_path, num_classes=5))
    with pytest.raises(CheckpointError, match=r"^'.*ema_0\.9999_best\.pt': no output_blocks\.\* tensors: not the U-Net of "
                                              "the official SDM code"):
        convert({"time_embed.0.weight": torch.zeros(128, 32), "input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3),
                 "out.2.weight": torch.zeros(6, 32, 3, 3)} | {"x": torch.zeros(1)}, options(tmp_path))


def test_the_cli_refuses_in_one_line_with_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    bad = {tmp_path / "missing.pt": "does not exist", tmp_path / "noise.pt": r"is not a readable checkpoint \(corrupted"}
    (tmp_path / "noise.pt").write_bytes(b"\x00not a pickle" * 10)
    torch.save({"state": {}, "param_groups": [{"lr": 1e-4}]}, tmp_path / "opt.pt")
    bad[tmp_path / "opt.pt"] = r"is not a state dict \(names -> tensors; it holds \['dict', 'list'\]\).*opt\*.pt holds the optimizer"
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    bad[tmp_path / "list.pt"] = "holds a list, not a checkpoint"
    bad[save(Official(label_channels=6), tmp_path / "ema.pt")] = r"reads 6 label channels, but num_classes=9"
    bad[tmp_path / "ema.safetensors"] = r"is already an export of this project \(safetensors\): pass its folder"
    bent = {**Official(label_channels=10).state, "output_blocks.1.0.in_layers.1.weight": torch.zeros(64, 128, 3, 3)}
    bad[save(bent, tmp_path / "bent.pt")] = r"official output_blocks\.1\.0\.in_layers\.1\.weight \(64, 128, 3, 3\)"
    for path, message in bad.items():
        with pytest.raises(SystemExit) as exit_info:
            main([str(path), "dataset=coco", "num_classes=9", "no_instance=false", f"out={out}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert str(path) in err and re.search(message, err), err
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    for argv, message in [(["dataset=coco"], "expected one checkpoint file"),
                          (["x.pt"], "dataset= is required: one of ade20k|celeba|coco"),
                          (["x.pt", "dataset=cityscapes"], "dataset=cityscapes is invalid: expected one of ade20k|celeba|coco"),
                          (["x.pt", "dataset=coco", "heads=4"], "unknown setting heads=...; known: dataset, out"),
                          (["x.pt", "dataset=coco", "num_heads=2", "num_head_channels=8"], "not both"),
                          (["x.pt", "dataset=coco", "no_instance=maybe"], "no_instance=maybe is invalid: expected true or false"),
                          (["x.pt", "dataset=coco", "image_size=0"], "image_size=0 is invalid"),
                          (["x.pt", "dataset=coco", "noise_schedule=sqrt"], "noise_schedule=sqrt is invalid")]:
        with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("(", r"\(").replace(".", r"\.")):
            parse_args(argv)


def test_every_flag_is_read_as_its_kind_and_a_bad_one_is_refused_by_name(tmp_path):
    for text, value in [("true", True), ("1", True), ("Yes", True), ("FALSE", False), ("0", False), ("no", False)]:
        assert parse_args(["x.pt", "dataset=coco", f"overwrite={text}"]).overwrite is value, text
    argv = ["x.pt", "dataset=ade20k", f"out={tmp_path}/lr=1e-4", "image_size=1", "num_classes=1", "no_instance=0",
            "num_head_channels=1", "use_new_attention_order=yes", "diffusion_steps=1", "noise_schedule=cosine"]
    assert parse_args(argv) == Options(
        checkpoint=Path("x.pt"), dataset="ade20k", out=tmp_path / "lr=1e-4", image_size=1, num_classes=1,
        no_instance=False, num_head_channels=1, use_new_attention_order=True, diffusion_steps=1,
        noise_schedule="cosine")  # 1 is the smallest count allowed; a value may hold "="
    assert parse_args(["x.pt", "dataset=coco", "num_heads=1"]).num_heads == 1
    multirun = tmp_path / "guidance.drop_prob=0.2" / "ema.pt"  # a path may hold "=" (Hydra multirun folders)
    multirun.parent.mkdir()
    multirun.write_bytes(b"")
    assert parse_args([str(multirun), "dataset=coco"]).checkpoint == multirun
    with pytest.raises(ConfigError, match="diffusion_steps=20 is invalid with the linear schedule"):
        parse_args(["x.pt", "dataset=coco", "diffusion_steps=20"])  # betas stretched by 1000/20 reach 1
    assert parse_args(["x.pt", "dataset=coco", "diffusion_steps=21"]).diffusion_steps == 21
    refused = [(f"{key}=0", f"{key}=0 is invalid: expected an integer >= 1")
               for key in ("image_size", "num_classes", "num_head_channels", "num_heads", "diffusion_steps")]
    refused += [("image_size=big", "image_size=big is invalid: expected an integer"),
                ("diffusion_steps=1e3", "diffusion_steps=1e3 is invalid: expected an integer"),
                ("overwrite=y", "overwrite=y is invalid: expected true or false"),
                ("steps=10", "unknown setting steps=...; known: dataset, out, image_size, num_classes")]
    for arg, message in refused:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            parse_args(["x.pt", "dataset=coco", arg])
    with pytest.raises(ConfigError, match=r"^dataset= is required: one of ade20k\|celeba\|coco, the data the "
                                          "checkpoint was trained on$"):
        parse_args(["x.pt", "num_classes=3"])


def test_a_checkpoint_of_this_project_is_refused_with_where_it_belongs(tmp_path):
    ours = save({"state_dict": {"unet.out.2.bias": torch.zeros(6)}, "hyper_parameters": {"cfg": {"run_name": "r"}},
                 "epoch": 3, "global_step": 120}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"^'.*last\.ckpt' is a checkpoint of this project, not of the official "
                                              "code: pass it to sample.py as weights= directly$"):
        load_official(ours)
    # one of the two keys is not a checkpoint of this project, only not a state dict
    for name, content in [("sd.pt", {"state_dict": {"w": torch.zeros(1)}}),
                          ("hp.pt", {"hyper_parameters": {"lr": 1.0}, "w": torch.zeros(1)})]:
        with pytest.raises(CheckpointError, match=rf"^'.*{name}' is not a state dict"):
            load_official(save(content, tmp_path / name))


def test_ddp_and_half_precision_checkpoints_convert_to_the_float32_export(tmp_path):
    half = {k: v.half() for k, v in Official(label_channels=6).state.items()}
    plain = save({k: v.float() for k, v in half.items()}, tmp_path / "plain.pt")
    ddp = save({f"module.{k}": v for k, v in half.items()}, tmp_path / "ddp.pt")  # a DistributedDataParallel's
    exports = []
    for path in (plain, ddp):
        main([str(path), "dataset=coco", "num_classes=5", "image_size=16", f"out={tmp_path / path.stem}"])
        exports.append(load_file(tmp_path / path.stem / EXPORT_WEIGHTS))
    assert exports[0].keys() == exports[1].keys() and {v.dtype for v in exports[1].values()} == {torch.float32}
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])
    bf16 = torch.randn(4, generator=torch.Generator().manual_seed(0)).bfloat16()
    steps = torch.tensor([7, 9])
    loaded = load_official(save({"module.w": bf16, "module.steps": steps}, tmp_path / "mixed.pt"))
    assert loaded.keys() == {"w", "steps"} and loaded["w"].dtype == torch.float32
    assert torch.equal(loaded["w"], bf16.float()) and loaded["steps"].dtype == torch.int64  # non-floats as they are
    assert torch.equal(loaded["steps"], steps)


def test_python_dash_m_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": [1, 2]}, path)
    result = subprocess.run([sys.executable, "-m", "sdm.cli.convert", str(path), "dataset=ade20k"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and f"'{path}' is not a state dict" in result.stderr


def test_an_export_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import sdm.checkpoint.official.convert as cli

    checkpoint = save(Official(label_channels=6), tmp_path / "model.pt")
    args = [str(checkpoint), "dataset=coco", "num_classes=5", "image_size=16"]

    def half_then_fail(weights, config, out_dir):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / EXPORT_WEIGHTS).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "export_ema", half_then_fail)
    with pytest.raises(WriteError, match=f"the disk holding {tmp_path / 'a'} is full"):
        cli.run(parse_args([*args, f"out={tmp_path / 'a'}"]))
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(WriteError, match=f"out={tmp_path / 'file' / 'a'} cannot be made: {tmp_path / 'file'} is a file"):
        cli.run(parse_args([*args, f"out={tmp_path / 'file' / 'a'}"]))  # a parent that is a file
    monkeypatch.undo()
    written = cli.run(parse_args([*args, f"out={tmp_path / 'a'}"]))
    assert sorted(p.name for p in written.parent.iterdir()) == ["README.md", EXPORT_CONFIG, EXPORT_WEIGHTS]  # with its model card
    with pytest.raises(ConfigError, match="exists and is not empty; pass overwrite=true"):
        cli.run(parse_args([*args, f"out={tmp_path / 'a'}"]))
    before = written.stat().st_ino
    cli.run(parse_args([*args, f"out={tmp_path / 'a'}", "overwrite=true"]))
    assert written.stat().st_ino != before and not list(tmp_path.glob(".a.*"))
    default = parse_args(args)
    monkeypatch.chdir(tmp_path)
    assert cli.run(default) == Path("runs/official/coco-model") / EXPORT_WEIGHTS


def test_a_killed_conversion_leaves_no_export_and_the_next_run_clears_its_leftovers(tmp_path, monkeypatch):
    import sdm.checkpoint.official.convert as cli

    monkeypatch.chdir(tmp_path)
    weights, config = convert(Official(label_channels=6).state, options(tmp_path, num_classes=5, image_size=16))
    out = tmp_path / "export"

    def killed_while_writing(weights, config, folder):
        Path(folder).mkdir()
        (Path(folder) / EXPORT_WEIGHTS).write_bytes(b"half")
        os._exit(9)  # no clean-up runs, as after a SIGKILL

    with monkeypatch.context() as patch:
        patch.setattr(cli, "export_ema", killed_while_writing)
        pid = os.fork()
        if pid == 0:  # the child: an earlier conversion, killed while writing
            try:
                write_export(weights, config, out, overwrite=False)
            finally:
                os._exit(1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert not out.exists() and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # its hidden leftover
    live = temporary_name(out, "tmp")  # a conversion to the same out, still running (this process)
    live.mkdir()
    other = leftover_path(tmp_path / "other", "tmp")  # a killed writer of another folder: not ours to clear
    other.mkdir()
    write_export(weights, config, out, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", EXPORT_CONFIG, EXPORT_WEIGHTS]


def test_the_cli_prints_the_network_it_read_and_how_to_sample_from_it(tmp_path, capsys):
    with_edges = Official(mult=(1, 2), attention_ds=(1, 2), label_channels=6)
    plain = Official(mult=(1, 2), attention_ds=(), label_channels=5, learn_sigma=False, updown=False)
    masks = "<folder of label PNGs in the model's class ids>"
    for net, flags, summary, edges in [
        (with_edges, ["num_classes=5", "num_head_channels=16"],
         "U-Net: 32 channels x [1, 2], 1 res blocks per level, attention at 1/1, 1/2 (heads of 16 channels), "
         "5 classes + 1 instance-edge channel, learn_sigma=True, resblock_updown=True, 16x16",
         " (instance maps in a sibling instances/ folder)"),
        (plain, ["num_classes=5", "no_instance=true"],
         "U-Net: 32 channels x [1, 2], 1 res blocks per level, attention at the middle block only (heads of 64 "
         "channels), 5 classes, learn_sigma=False, resblock_updown=False, 16x16", ""),
    ]:
        checkpoint, out = save(net, tmp_path / f"{len(net.state)}.pt"), tmp_path / f"out{len(net.state)}"
        main([str(checkpoint), "dataset=coco", "image_size=16", f"out={out}", *flags])
        assert capsys.readouterr().out.splitlines() == [
            f"read {checkpoint}: {len(net.state)} tensors", summary, f"wrote {out / EXPORT_WEIGHTS} and {EXPORT_CONFIG}",
            f"sample: python sample.py weights={out} masks={masks}{edges}"]


# --- sampling from the export --------------------------------------------------------------


def converted(tmp_path: Path, classes: int, edge: bool) -> Path:
    net = Official(label_channels=classes + edge, attention_ds=(2,), seed=3)
    out = tmp_path / "export"
    main([str(save(net, tmp_path / "ema_0.9999_000100.pt")), "dataset=coco", f"num_classes={classes}",
          f"no_instance={str(not edge).lower()}", "image_size=16", "num_head_channels=32", f"out={out}"])
    return out


def mask_of_far_ids(tmp_path: Path) -> Path:
    labels = tmp_path / "set" / "labels"
    labels.mkdir(parents=True)
    mask = np.full((16, 16), 37, np.uint8)  # an id past the 35 sidewalk colours
    mask[:, :8] = 2
    Image.fromarray(mask).save(labels / "m.png")
    return labels


def test_every_sampler_runs_the_export(tmp_path, capsys):
    out = converted(tmp_path, classes=40, edge=False)
    assert "sample: python sample.py weights=" in capsys.readouterr().out
    model = load_model(out)
    assert model.unet.num_classes == 40 and model.size == (16, 16) and model.cfg["run_name"] == "official-coco"
    labels = mask_of_far_ids(tmp_path)
    for sampler in ("ddim", "ddpm", "dpmpp", "unipc"):
        manifest = generate(sample_cfg(f"weights={out}", f"masks={labels}", f"sampler={sampler}",
                                       "sampler.num_steps=2", "num_per_mask=1", f"out_dir={tmp_path / sampler}"))
        assert manifest["complete"] and manifest["images_made"] == 1, sampler
        image = np.asarray(Image.open(tmp_path / sampler / "images" / "m_0.png"))
        assert image.shape == (16, 16, 3) and image.std() > 0, sampler
    assert (tmp_path / "ddim" / "colored_masks" / "m.png").is_file()
    with pytest.raises(ConfigError, match=r"masks=val: the run's data names no data.path \(a converted official "
                                          r"checkpoint of data=coco_stuff\): pass mask_source=\{path:"):
        generate(sample_cfg(f"weights={out}", "masks=val", f"out_dir={tmp_path / 'val'}"))


def test_a_converted_checkpoint_samples_the_masks_of_its_dataset_in_its_layout(tmp_path):
    """COCO-Stuff as SPADE lays it out: its 255 (unlabeled) is read as class 182, the 183 channels
    of the paper's model, and the masks are drawn in the COCO-Stuff table's colours."""
    out = converted(tmp_path, classes=183, edge=True)
    model = load_model(out)
    assert model.cfg["data"]["name"] == "folder" and model.cfg["data"]["layout"] == "coco_stuff"
    table = class_table(model.cfg["data"])
    assert table.name == "coco_stuff" and table.num_classes == model.unet.num_classes == 183
    values = write_layout(tmp_path / "cocostuff", "coco_stuff", [f"{i:012d}" for i in range(20)], split="val",
                          size=(16, 16))
    source = f"mask_source={{path:{tmp_path / 'cocostuff'},split:val,cache_dir:{tmp_path / 'cache'}}}"
    manifest = generate(sample_cfg(f"weights={out}", "masks=all", source, "limit=2", "sampler.num_steps=2",
                                   "num_per_mask=1", f"out_dir={tmp_path / 'samples'}"))
    assert manifest["complete"] and manifest["images_made"] == 2
    placed = manifest["train_data"]  # the data the evaluation trains its segmenter on: the dataset's training split
    assert (placed["path"], placed["split"]) == (str(tmp_path / "cocostuff"), "train")
    for item, name in zip(manifest["items"], sorted(values)[:2], strict=True):
        ids = np.asarray(Image.open(tmp_path / "samples" / item["label"]))
        assert np.array_equal(ids, table.ids_from_values(values[name])) and 182 in ids  # 255 -> unlabeled
        coloured = np.asarray(Image.open(tmp_path / "samples" / item["label"].replace("labels/", "colored_masks/")))
        assert np.array_equal(coloured, table.colorize(ids))


def test_sample_py_samples_and_evaluates_with_the_models_classes(tmp_path):
    out, labels = converted(tmp_path, classes=40, edge=False), mask_of_far_ids(tmp_path)
    result = subprocess.run(
        [sys.executable, "sample.py", f"weights={out}", f"masks={labels}", "sampler.num_steps=2", "num_per_mask=1",
         "device=cpu", "precision=fp32", f"out_dir={tmp_path / 'samples'}", "evaluate=true", "evaluation.fid=false",
         "evaluation.lpips=false", "evaluation.tensorboard=false", "evaluation.progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # the labels (id 37) are read with 40 classes, not 35
    assert "semantic consistency skipped: the model's data names no path (a converted official checkpoint)" \
        in result.stdout
    assert (tmp_path / "samples" / "images" / "m_0.png").is_file()
    assert (tmp_path / "samples" / "evaluation.json").is_file()


def test_the_edge_channel_comes_from_instance_maps_beside_the_labels(tmp_path, capsys, monkeypatch):
    import sdm.generation.run as generation

    out = converted(tmp_path, classes=5, edge=True)
    root = tmp_path / "set"
    (root / "labels").mkdir(parents=True)
    (root / "instances").mkdir()
    label = np.full((16, 16), 1, np.uint8)  # one class ...
    instance = np.zeros((16, 16), np.uint16)
    instance[:, 8:] = 300  # ... two touching instances of it (16-bit ids)
    Image.fromarray(label).save(root / "labels" / "cars.png")
    Image.fromarray(instance).save(root / "instances" / "cars.png")
    Image.fromarray(label).save(root / "labels" / "plain.png")  # no instance map: class edges
    seen = []
    real_sample = generation.sample
    monkeypatch.setattr(generation, "sample", lambda m, cond, **kw: seen.append(cond) or real_sample(m, cond, **kw))
    generate(sample_cfg(f"weights={out}", f"masks={root / 'labels'}", "num_per_mask=1", f"out_dir={tmp_path / 'o'}"))
    log = capsys.readouterr().out
    assert f"edge channel: instance boundaries for the 1 of 2 masks with an instance map in {root / 'instances'}" in log
    edges = seen[0][:, 5]
    expected = torch.zeros(16, 16)
    expected[:, 7:9] = 1  # both pixels on either side of the instance border
    assert torch.equal(edges[0], expected) and edges[1].sum() == 0  # cars.png, then plain.png: no class border
    masks = folder_masks(root / "labels", (8, 8), 5, None, instances=True)
    assert masks[0].instance.shape == (8, 8) and set(np.unique(masks[0].instance)) == {0, 300}
    assert masks[1].instance is None and folder_masks(root / "labels", (8, 8), 5, None)[0].instance is None
    Image.fromarray(instance[:, :12]).save(root / "instances" / "cars.png")  # another size than its label
    with pytest.raises(DataError, match=r"instance map '.*cars\.png' cannot be used: it is 12x16 but its label map "
                                        r"is 16x16"):
        folder_masks(root / "labels", (8, 8), 5, None, instances=True)


def test_instance_edges_differ_from_label_edges_where_instances_of_one_class_touch():
    label = torch.zeros(1, 6, 6, dtype=torch.long)
    label[:, 3:] = 2  # a class border between rows 2 and 3
    instance = torch.zeros(1, 6, 6, dtype=torch.long)
    instance[:, :, 3:] = 7  # two instances side by side, across the class border
    instance[:, 3:, 3:] = 8
    by_class = label_to_condition(label, 3, True)[0, 3]
    by_instance = label_to_condition(label, 3, True, edge_ids=instance)[0, 3]
    assert torch.equal(label_to_condition(label, 3, True, edge_ids=label), label_to_condition(label, 3, True))
    assert by_class[:, 0].tolist() == [0, 0, 1, 1, 0, 0] and by_class[0].sum() == 0
    assert by_instance[0].tolist() == [0, 0, 1, 1, 0, 0]  # the vertical instance border, inside class 0
    assert by_instance[:, 0].sum() == 0  # no instance border at the class border on the left
    assert torch.equal(by_instance[:, 3:], torch.tensor([[1, 0, 0]] * 2 + [[1, 1, 1]] * 2 + [[1, 0, 0]] * 2).float())
    with pytest.raises(ValueError, match="edge_ids must have the label's shape"):
        label_to_condition(label, 3, True, edge_ids=instance[:, :5])


def test_flips_and_crops_move_the_instance_map_with_the_label():
    from sdm.generation.masks import Mask, vary_mask

    label = np.random.default_rng(0).integers(0, 5, (16, 16), dtype=np.uint8)
    mask = Mask("m", 2, label, None, label.astype(np.int32) * 1000)
    for variations in (["hflip"], ["crop"], ["hflip", "crop"]):
        varied = vary_mask(mask, variations, seed=3)
        assert np.array_equal(varied.instance, varied.label.astype(np.int32) * 1000), variations
    assert vary_mask(Mask("m", 2, label), ["hflip", "crop"], seed=3).instance is None
