"""The U-Net's blocks against their formulas, written out here with torch.nn.functional.

Zero-initialised convolutions are given random values first: otherwise a residual branch
outputs zero and any bug inside it is invisible.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdm.models import SDMUNet
from sdm.models import layers as layers_module
from sdm.models.attention import AttentionBlock
from sdm.models.blocks import ResBlock
from sdm.models.condition import drop_condition, label_edges, label_to_condition
from sdm.models.layers import Downsample, GroupNorm32, Upsample, resampler
from sdm.models.spade import SPADE, SPADEResBlock
from sdm.models.timestep import TimestepEmbedding, sinusoidal_embedding


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Every parameter random (zero-initialised ones included), so every path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def conv(x, layer: nn.Conv2d, stride: int = 1):
    return F.conv2d(x, layer.weight, layer.bias, stride=stride, padding=1)


def group_norm(x):
    return F.group_norm(x.float(), 32).to(x.dtype)


def ref_scale_shift(emb_layers: nn.Sequential, emb):
    linear = emb_layers[1]
    out = F.linear(F.silu(emb), linear.weight, linear.bias)[:, :, None, None]
    return out.chunk(2, dim=1)


def ref_spade(spade: SPADE, x, cond):
    cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
    hidden = F.relu(conv(cond, spade.shared[0]))
    gamma, beta = conv(hidden, spade.gamma), conv(hidden, spade.beta)
    return group_norm(x) * (1 + gamma) + beta


def ref_resample(x, up: bool, down: bool):
    if up:
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    if down:
        return F.avg_pool2d(x, 2)
    return x


def ref_resblock(block: ResBlock, x, emb, up=False, down=False):
    h = F.silu(F.group_norm(x, 32, block.in_norm.weight, block.in_norm.bias))
    h = conv(ref_resample(h, up, down), block.in_conv)
    x = ref_resample(x, up, down)
    scale, shift = ref_scale_shift(block.emb_layers, emb)
    h = F.group_norm(h, 32, block.out_norm.weight, block.out_norm.bias) * (1 + scale) + shift
    h = conv(F.silu(h), block.out_layers[2])
    skip = x if isinstance(block.skip, nn.Identity) else F.conv2d(x, block.skip.weight, block.skip.bias)
    return skip + h


def ref_spade_resblock(block: SPADEResBlock, x, cond, emb, up=False, down=False):
    h = F.silu(ref_spade(block.in_norm, x, cond))
    h = conv(ref_resample(h, up, down), block.in_conv)
    x = ref_resample(x, up, down)
    scale, shift = ref_scale_shift(block.emb_layers, emb)
    h = ref_spade(block.out_norm, h, cond) * (1 + scale) + shift
    h = conv(F.silu(h), block.out_layers[2])
    skip = x if isinstance(block.skip, nn.Identity) else F.conv2d(x, block.skip.weight, block.skip.bias)
    return skip + h


@pytest.mark.parametrize(("out", "up", "down"), [(32, False, False), (64, False, False), (32, True, False),
                                                 (32, False, True)])
def test_resblock_matches_its_formula(out, up, down):
    block = randomize(ResBlock(32, 48, out, up=up, down=down)).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), ref_resblock(block, x, emb, up, down), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("out", "up", "down"), [(32, False, False), (64, False, False), (32, True, False),
                                                 (32, False, True)])
def test_spade_resblock_matches_its_formula(out, up, down):
    block = randomize(SPADEResBlock(32, 48, 5, out, spade_hidden=16, up=up, down=down)).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 48)
    cond = label_to_condition(torch.randint(0, 5, (2, 16, 16)), 5)  # finer than x: resized nearest
    with torch.no_grad():
        expected = ref_spade_resblock(block, x, cond, emb, up, down)
        torch.testing.assert_close(block(x, cond, emb), expected, atol=1e-5, rtol=1e-5)


def test_zeroed_modulation_is_plain_group_norm():
    spade = randomize(SPADE(32, 5, hidden=8))
    x = torch.randn(2, 32, 4, 4) * 3 + 1
    cond = label_to_condition(torch.randint(0, 5, (2, 4, 4)), 5)
    with torch.no_grad():
        for layer in (spade.gamma, spade.beta):
            layer.weight.zero_()
            layer.bias.zero_()
        torch.testing.assert_close(spade(x, cond), F.group_norm(x, 32))
        # a known constant modulation: gamma = 1, beta = 2 give 2 * GN(x) + 2
        spade.gamma.bias.fill_(1.0)
        spade.beta.bias.fill_(2.0)
        torch.testing.assert_close(spade(x, cond), 2 * F.group_norm(x, 32) + 2)


def test_zeroed_timestep_projection_is_plain_group_norm():
    block = randomize(ResBlock(32, 16)).eval()
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    with torch.no_grad():
        block.emb_layers[1].weight.zero_()
        block.emb_layers[1].bias.zero_()
        h = F.silu(block.in_norm(x))
        h = block.in_conv(h)
        plain = block.out_norm(h)
        block.emb_layers[1].bias[:32] = 1.0  # scale 1, shift 3: AdaGN gives 2 * GN + 3
        block.emb_layers[1].bias[32:] = 3.0
        scale, shift = ref_scale_shift(block.emb_layers, emb)
        torch.testing.assert_close(block.out_norm(h) * (1 + scale) + shift, 2 * plain + 3)
        expected = x + conv(F.silu(2 * plain + 3), block.out_layers[2])
        torch.testing.assert_close(block(x, emb), expected, atol=1e-5, rtol=1e-5)


def test_spade_caches_its_modulation_per_mask_and_forgets_old_masks():
    spade = randomize(SPADE(32, 5, hidden=8))
    calls = []
    spade.shared.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 32, 4, 4)
    conds = [label_to_condition(torch.randint(0, 5, (1, 4, 4)), 5) for _ in range(6)]
    spade(x, conds[0])
    spade(x, conds[0])
    assert len(calls) == 2  # no cache outside a sampling loop
    spade.cache = {}
    first = spade.modulation(conds[0], x.shape[-2:])
    again = spade.modulation(conds[0], x.shape[-2:])
    assert again[0] is first[0] and again[1] is first[1] and len(calls) == 3
    torch.testing.assert_close(spade(x, conds[0]), ref_spade(spade, x, conds[0]))
    other = spade.modulation(conds[1], x.shape[-2:])
    assert len(calls) == 4 and not torch.equal(other[0], first[0])
    for cond in conds[2:]:
        spade.modulation(cond, x.shape[-2:])
        assert 1 <= len(spade.cache) <= 4  # bounded: a long generation does not hoard masks
    assert len(calls) == 8


def test_attention_defaults_and_heads():
    assert inspect.signature(AttentionBlock).parameters["num_head_channels"].default == 64
    block = AttentionBlock(128)
    assert block.num_heads == 2 and block.use_checkpoint is False


def test_sinusoidal_embedding_matches_the_formula():
    t = torch.tensor([0.0, 1.0, 7.5, 999.0])
    for dim in (8, 9, 32):
        emb = sinusoidal_embedding(t, dim).double()
        half = dim // 2
        freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
        args = t.double().numpy()[:, None] * freqs[None]
        expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
        if dim % 2:
            expected = np.concatenate([expected, np.zeros((len(t), 1))], axis=1)
        assert emb.shape == (4, dim) and emb.dtype == torch.float64
        np.testing.assert_allclose(emb.numpy(), expected, atol=2e-4)
    # at t = 1 the phases are the frequencies themselves: recover them to float32 precision
    one = sinusoidal_embedding(torch.tensor([1.0]), 32)[0].double()
    recovered = torch.atan2(one[16:], one[:16]).numpy()
    np.testing.assert_allclose(recovered, np.exp(-math.log(10000.0) * np.arange(16) / 16), rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        sinusoidal_embedding(torch.zeros(2, 1), 8)


def test_timestep_embedding_mlp_and_dtype():
    module = randomize(TimestepEmbedding(32))
    assert module.embed_dim == 128 and TimestepEmbedding(32, 80).embed_dim == 80
    t = torch.tensor([3, 500])
    first, second = module.mlp[0], module.mlp[2]
    assert (first.in_features, first.out_features, second.out_features) == (32, 128, 128)
    expected = F.linear(F.silu(F.linear(sinusoidal_embedding(t, 32), first.weight, first.bias)),
                        second.weight, second.bias)
    torch.testing.assert_close(module(t), expected)
    assert module.to(torch.bfloat16)(t).dtype == torch.bfloat16  # features follow the weights


def test_group_norm_runs_in_float32_and_returns_the_input_dtype():
    norm = GroupNorm32(64)
    x = (torch.randn(2, 64, 4, 4) * 50 + 300).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.group_norm(x.float(), 32, norm.weight, norm.bias).to(torch.bfloat16))
    with pytest.raises(ValueError, match="divisible by 32"):
        GroupNorm32(48)
    assert not GroupNorm32(32, affine=False).affine


def test_group_norm_of_a_bf16_network_scales_and_shifts_by_its_own_weights():
    """A network cast to bf16 still normalises in float32, with its learnt per-channel scale and
    shift (not the identity ones a freshly built norm has)."""
    norm = randomize(GroupNorm32(64), seed=1, scale=1.0).to(torch.bfloat16)
    x = (torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(2)) * 50 + 300).to(torch.bfloat16)
    groups = x.float().reshape(2, 32, -1)  # 2 channels x 16 pixels per group
    mean, var = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
    normalised = ((groups - mean) / torch.sqrt(var + 1e-5)).reshape(2, 64, 4, 4)
    weight, bias = norm.weight.float()[:, None, None], norm.bias.float()[:, None, None]
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (normalised * weight + bias).to(torch.bfloat16))


def test_resampling_layers_match_their_definitions():
    x = torch.randn(2, 32, 8, 6)
    torch.testing.assert_close(resampler(32, up=True, down=False)(x), ref_resample(x, True, False))
    torch.testing.assert_close(resampler(32, up=False, down=True)(x), F.avg_pool2d(x, 2))
    assert isinstance(resampler(32, False, False), nn.Identity)
    with pytest.raises(ValueError, match="both"):
        resampler(32, True, True)
    down = randomize(Downsample(32, use_conv=True, out_channels=64))
    assert down.op.weight.shape == (64, 32, 3, 3)
    torch.testing.assert_close(down(x), conv(x, down.op, stride=2))
    up = randomize(Upsample(32, use_conv=True))
    torch.testing.assert_close(up(x), conv(ref_resample(x, True, False), up.conv))
    with pytest.raises(ValueError, match="pooling"):
        Downsample(32, use_conv=False, out_channels=64)
    with pytest.raises(ValueError, match="without conv"):
        Upsample(32, use_conv=False, out_channels=64)


def test_checkpointing_is_used_exactly_where_asked(monkeypatch):
    calls = []
    real = layers_module.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(kwargs)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(layers_module, "checkpoint", spy)
    kwargs = dict(num_classes=5, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
                  num_head_channels=16, spade_hidden=16)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    cond = label_to_condition(torch.randint(0, 5, (1, 8, 8)), 5)
    SDMUNet(**kwargs)(x, t, cond).sum().backward()
    assert not calls  # off by default
    model = SDMUNet(**kwargs, use_checkpoint=True)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock | SPADEResBlock | AttentionBlock)]
    assert all(b.use_checkpoint for b in blocks)
    model(x, t, cond).sum().backward()
    assert len(calls) == len(blocks) and all(c == {"use_reentrant": False} for c in calls)
    calls.clear()
    with torch.no_grad():
        model(x, t, cond)
    assert not calls  # nothing to recompute without gradients


def test_block_defaults_are_the_papers():
    for cls in (ResBlock, SPADEResBlock):
        params = inspect.signature(cls).parameters
        assert params["dropout"].default == 0.0 and params["use_checkpoint"].default is False
    assert inspect.signature(SPADEResBlock).parameters["spade_hidden"].default == 128
    assert SPADE(32, 5).shared[0].out_channels == 128
    for block in (ResBlock(32, 16), SPADEResBlock(32, 16, 5)):  # what the defaults build
        assert not block.use_checkpoint and all(m.p == 0 for m in block.modules() if isinstance(m, nn.Dropout))
    spade_block = SPADEResBlock(32, 16, 5)
    assert {s.shared[0].out_channels for s in (spade_block.in_norm, spade_block.out_norm)} == {128}


def test_output_head_is_norm_silu_conv():
    model = randomize(SDMUNet(num_classes=5, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                              attention_ds=(), spade_hidden=8)).eval()
    seen = []
    model.out.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([3])
    with torch.no_grad():
        model(x, t, label_to_condition(torch.randint(0, 5, (1, 8, 8)), 5))
        h, out = seen[0]
        norm, head = model.out[0], model.out[2]
        expected = conv(F.silu(F.group_norm(h, 32, norm.weight, norm.bias)), head)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --- condition maps ----------------------------------------------------------------------


def test_label_edges_match_a_pixel_loop():
    label = torch.randint(0, 3, (2, 7, 9), generator=torch.Generator().manual_seed(0))
    edges = label_edges(label)
    assert edges.dtype == torch.bool
    expected = torch.zeros_like(edges)
    for b in range(2):
        for i in range(7):
            for j in range(9):
                for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    a, c = i + di, j + dj
                    if 0 <= a < 7 and 0 <= c < 9 and label[b, a, c] != label[b, i, j]:
                        expected[b, i, j] = True
    assert torch.equal(edges, expected)


def test_label_to_condition_defaults_and_bad_inputs():
    label = torch.randint(0, 4, (2, 3, 5))
    cond = label_to_condition(label, 4)
    assert cond.shape == (2, 4, 3, 5) and cond.dtype == torch.float32  # no edge channel by default
    assert torch.equal(cond.argmax(1), label) and torch.equal(cond.sum(1), torch.ones(2, 3, 5))
    assert label_to_condition(torch.zeros(0, 3, 5, dtype=torch.long), 4).shape == (0, 4, 3, 5)
    with pytest.raises(ValueError, match=r"0\.\.3, found values in 7\.\.7"):
        label_to_condition(torch.full((1, 1, 1), 7), 4)
    with pytest.raises(ValueError, match="integer class ids"):
        label_to_condition(label.float(), 4)
    with pytest.raises(ValueError, match="integer class ids"):
        label_to_condition(label.bool(), 4)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        label_to_condition(label[0], 4)


def test_the_edge_channel_follows_instance_ids_when_given():
    """Generation hands instance ids (edge_ids) where a mask has them: two touching objects of one
    class are then told apart by the edge between them, while the one-hot part stays the classes'."""
    label = torch.zeros(1, 6, 6, dtype=torch.long)
    label[:, 1:5, 1:5] = 2  # a 4x4 block of class 2
    instances = label.clone()
    instances[:, 1:5, 3:5] = 7  # its right half is another object of the same class
    class_edges = torch.tensor([[0, 1, 1, 1, 1, 0],
                                [1, 1, 1, 1, 1, 1],
                                [1, 1, 0, 0, 1, 1],
                                [1, 1, 0, 0, 1, 1],
                                [1, 1, 1, 1, 1, 1],
                                [0, 1, 1, 1, 1, 0]], dtype=torch.float32)
    instance_edges = class_edges.clone()
    instance_edges[2:4, 2:4] = 1  # the seam between the two objects
    cond = label_to_condition(label, 3, edge_channel=True, edge_ids=instances)
    assert torch.equal(cond[0, 3], instance_edges)
    assert torch.equal(cond[:, :3], label_to_condition(label, 3))
    assert torch.equal(label_to_condition(label, 3, edge_channel=True)[0, 3], class_edges)
    with pytest.raises(ValueError, match=r"edge_ids must have the label's shape \(1, 6, 6\), got \(1, 6, 5\)"):
        label_to_condition(label, 3, edge_channel=True, edge_ids=instances[..., :5])


def test_drop_condition_checks_its_mask():
    cond = torch.ones(3, 2, 2, 2, dtype=torch.bfloat16)
    out = drop_condition(cond, torch.tensor([False, True, False]))
    assert out.dtype == torch.bfloat16 and out[1].abs().sum() == 0 and out[0].sum() == 8
    with pytest.raises(ValueError, match="bool tensor of shape"):
        drop_condition(cond, torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        drop_condition(cond, torch.tensor([True, False]))
