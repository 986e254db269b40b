"""The SDM U-Net: faithfulness to the paper's network, conditioning paths, API errors."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from sdm.core.configs import compose
from sdm.models import SDMUNet, build_unet, drop_condition, label_to_condition
from sdm.models.attention import AttentionBlock
from sdm.models.blocks import ResBlock
from sdm.models.layers import Downsample, Upsample
from sdm.models.spade import SPADE, SPADEResBlock

REPO = Path(__file__).resolve().parents[2]
PRESETS = ["tiny", "small", "paper", "sidewalk1024", "ref64"]
NC = 5  # classes of the small test networks


def preset(name: str) -> dict:
    """The model group `name` as a run resolves it (its edge channel follows the data preset:
    sidewalk's is off)."""
    kwargs = OmegaConf.to_container(compose("train", [f"model={name}"]).model, resolve=True)
    assert kwargs.pop("name") == name
    return kwargs


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_net(**overrides) -> SDMUNet:
    kwargs = dict(
        num_classes=NC, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_ds=(2,), num_head_channels=16, spade_hidden=16,
    )  # fmt: skip
    kwargs.update(overrides)
    return SDMUNet(**kwargs)


def randomize_zero_params(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give zero-initialised tensors (output convs, attention projections) random values,
    so every path of the network carries signal and gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def inputs(b: int = 2, h: int = 16, w: int = 16, seed: int = 0, edge: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, h, w, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    label = torch.randint(0, NC, (b, h, w), generator=gen)
    return x, t, label_to_condition(label, NC, edge)


# --- faithfulness -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_classes", "edge", "expected"),
    [(151, False, 660_608_518), (35, True, 653_984_518)],
)
def test_paper_parameter_count_matches_reference_code(num_classes, edge, expected):
    kwargs = preset("paper") | {"edge_channel": edge}
    with torch.device("meta"):
        model = SDMUNet(num_classes=num_classes, **kwargs)
    assert model.label_channels == num_classes + int(edge)
    assert abs(n_params(model) - expected) / expected < 5e-3
    assert n_params(model) == expected  # exact today: same composition as the paper's code


@pytest.mark.parametrize("name", PRESETS)
def test_presets_hold_exactly_the_constructor_kwargs(name):
    kwargs = preset(name)
    signature = set(inspect.signature(SDMUNet.__init__).parameters) - {"self", "num_classes"}
    assert set(kwargs) == signature
    with torch.device("meta"):
        model = SDMUNet(num_classes=35, **kwargs)
    assert model.out_channels == (6 if kwargs["learn_sigma"] else 3)
    assert model.downsample_factor == 2 ** (len(kwargs["channel_mult"]) - 1)


def test_build_unet_takes_the_model_group_and_the_datas_class_count():
    """Training, generation and conversion build the network of a resolved run config: the model
    group's arguments (its `name` is not one) and data.num_classes."""
    cfg = {"model": {"name": "tiny", **preset("tiny")}, "data": {"num_classes": 7, "size": 64}}
    with torch.device("meta"):
        built = build_unet(cfg)
        direct = SDMUNet(num_classes=7, **preset("tiny"))
    assert built.num_classes == 7 and built.label_channels == 7 and built.out_channels == 6
    assert built.input_blocks[0][0].out_channels == 32  # the tiny preset's width, not the default 256
    assert [tuple(p.shape) for p in built.parameters()] == [tuple(p.shape) for p in direct.parameters()]


def test_output_head_starts_at_zero():
    x, t, cond = inputs()
    out = small_net()(x, t, cond)
    assert out.shape == (2, 6, 16, 16)
    assert torch.count_nonzero(out) == 0


# --- conditioning paths -----------------------------------------------------------------


def test_mask_changes_output_and_only_through_spade():
    torch.manual_seed(0)
    model = randomize_zero_params(small_net()).eval()
    x, t, cond_a = inputs(seed=1)
    _, _, cond_b = inputs(seed=2)

    encoder_outputs: list[list[torch.Tensor]] = [[], []]
    run = 0
    hooks = [
        block.register_forward_hook(lambda m, i, o: encoder_outputs[run].append(o))
        for block in model.input_blocks
    ]
    with torch.no_grad():
        out_a = model(x, t, cond_a)
        run = 1
        out_b = model(x, t, cond_b)
    for hook in hooks:
        hook.remove()
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    assert len(encoder_outputs[0]) == len(model.input_blocks)
    for ha, hb in zip(*encoder_outputs, strict=True):
        assert torch.equal(ha, hb)  # the encoder never sees the mask

    # Without gamma/beta convs, SPADE is a plain GroupNorm: the network is mask-blind.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SPADE):
                for conv in (module.gamma, module.beta):
                    conv.weight.zero_()
                    conv.bias.zero_()
        assert torch.allclose(model(x, t, cond_a), model(x, t, cond_b), atol=1e-6)
        assert torch.allclose(model(x, t, cond_a), model(x, t, torch.zeros_like(cond_a)), atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = randomize_zero_params(small_net(resblock_updown=True))
    x, t, cond = inputs()
    model(x, t, cond).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = randomize_zero_params(small_net(dropout=0.1))
    ckpt = small_net(dropout=0.1, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond = inputs()
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG state
        model(x, t, cond).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-5, msg=name)


# --- shapes and errors ------------------------------------------------------------------


def test_non_square_input_float_timesteps_and_options():
    model = small_net(learn_sigma=False, resblock_updown=False, edge_channel=True)
    x, _, cond = inputs(h=32, w=48, edge=True)
    assert model(x, torch.tensor([3.5, 700.0]), cond).shape == (2, 3, 32, 48)
    assert model(x, torch.tensor(10), cond[:, :, ::2, ::2]).shape == (2, 3, 32, 48)


def test_indivisible_size_raises_clear_error():
    model = small_net(channel_mult=(1, 2, 2))  # factor 4
    x, t, cond = inputs(h=30, w=48)
    with pytest.raises(ValueError, match=r"30x48.*factor 4.*height 28 or 32, width 48$"):
        model(x, t, cond)


def test_wrong_label_channels_raise_clear_error():
    model = small_net(edge_channel=True)
    x, t, cond = inputs()
    with pytest.raises(ValueError, match=r"has 5 channels.*expects 6 label channels"):
        model(x, t, cond)


def test_label_to_condition_one_hot_and_edges():
    label = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]]])
    cond = label_to_condition(label, 3, edge_channel=True)
    assert cond.shape == (1, 4, 3, 4) and cond.dtype == torch.float32
    torch.testing.assert_close(cond[:, :3], F.one_hot(label, 3).permute(0, 3, 1, 2).float())
    expected_edge = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]).float()
    torch.testing.assert_close(cond[0, 3], expected_edge)
    assert label_to_condition(label, 3, edge_channel=False).shape == (1, 3, 3, 4)


@pytest.mark.parametrize("bad", [-1, 3])
def test_label_ids_out_of_range_raise(bad):
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    label[0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"0\.\.2"):
        label_to_condition(label, 3, edge_channel=False)


def test_drop_condition_zeroes_exactly_the_dropped_samples():
    _, _, cond = inputs(b=4)
    drop = torch.tensor([True, False, True, False])
    out = drop_condition(cond, drop)
    assert not out[drop].any()
    assert torch.equal(out[~drop], cond[~drop])


# --- attention ---------------------------------------------------------------------------


def test_attention_equals_naive_softmax_attention():
    torch.manual_seed(0)
    block = randomize_zero_params(AttentionBlock(64, num_head_channels=16))
    x = torch.randn(2, 64, 4, 6)
    with torch.no_grad():
        flat = x.reshape(2, 64, 24)
        qkv = block.qkv(block.norm(flat))
        q, k, v = qkv.chunk(3, dim=1)
        heads = []
        for h in range(4):
            sl = slice(16 * h, 16 * (h + 1))
            weights = torch.softmax(q[:, sl].transpose(1, 2) @ k[:, sl] / math.sqrt(16), dim=-1)
            heads.append(v[:, sl] @ weights.transpose(1, 2))
        expected = (flat + block.proj_out(torch.cat(heads, dim=1))).reshape(x.shape)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


# --- construction follows the arguments ------------------------------------------------


def test_defaults_build_the_papers_network():
    with torch.device("meta"):
        model = SDMUNet()
    assert n_params(model) == 653_926_918  # `paper` preset, 35 classes, no edge channel
    assert (model.num_classes, model.label_channels, model.edge_channel) == (35, 35, False)
    assert model.out_channels == 6 and model.downsample_factor == 32
    heads = {m.num_heads * 64 == m.norm.num_channels for m in model.modules() if isinstance(m, AttentionBlock)}
    assert heads == {True}
    assert not any(getattr(m, "use_checkpoint", False) for m in model.modules())


def test_every_block_gets_the_configured_widths_and_dropout():
    model = small_net(spade_hidden=24, dropout=0.25, edge_channel=True)
    assert (model.num_classes, model.label_channels, model.edge_channel) == (NC, NC + 1, True)
    spades = [m for m in model.modules() if isinstance(m, SPADE)]
    assert spades and {s.shared[0].out_channels for s in spades} == {24}
    assert {s.shared[0].in_channels for s in spades} == {NC + 1}
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == sum(1 for m in model.modules() if hasattr(m, "emb_layers")) and set(dropouts) == {0.25}
    attention = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert attention and {a.num_heads for a in attention} == {64 // 16}
    assert model.time_embed.embed_dim == 4 * 32


def test_resampling_by_conv_or_by_resblock():
    conv_net = small_net(channel_mult=(1, 2, 2), resblock_updown=False)
    downs = [m for m in conv_net.modules() if isinstance(m, Downsample)]
    ups = [m for m in conv_net.modules() if isinstance(m, Upsample) and m.conv is not None]
    assert len(downs) == 2 and all(isinstance(d.op, nn.Conv2d) for d in downs) and len(ups) == 2
    res_net = small_net(channel_mult=(1, 2, 2), resblock_updown=True)
    down_blocks = [m for m in res_net.modules() if isinstance(m, ResBlock) and isinstance(m.h_resample, Downsample)]
    up_blocks = [m for m in res_net.modules() if isinstance(m, SPADEResBlock) and isinstance(m.h_resample, Upsample)]
    assert len(down_blocks) == 2 and len(up_blocks) == 2
    assert not any(isinstance(m, Downsample) and isinstance(m.op, nn.Conv2d) for m in res_net.modules())
    x, t, cond = inputs(h=16, w=16)
    for net in (conv_net, res_net):
        assert net(x, t, cond).shape == (2, 6, 16, 16)


def test_unreachable_attention_resolution_is_refused():
    with pytest.raises(ValueError, match=r"attention_ds \[8\] never occur with 2 levels"):
        small_net(attention_ds=(2, 8))


def test_bad_input_shapes_raise_clear_errors():
    model = small_net()
    x, t, cond = inputs()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(x[0], t, cond)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(x[:, :2], t, cond)
    with pytest.raises(ValueError, match=r"cond must have shape \(2, 5, h, w\)"):
        model(x, t, cond[:1])
    with pytest.raises(ValueError, match=r"cond must have shape"):
        model(x, t, cond[0])
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
        model(x, torch.tensor([1, 2, 3]), cond)
    with pytest.raises(ValueError, match=r"has 6 channels but the model expects 5 label channels \(5 classes\)$"):
        model(x, t, torch.cat([cond, cond[:, :1]], 1))
    with pytest.raises(ValueError, match=r"\(5 classes \+ 1 edge channel\)$"):
        small_net(edge_channel=True)(x, t, cond)
    with pytest.raises(ValueError, match=r"input size 2x16 .*factor 4.*height 4, width 16$"):
        small_net(channel_mult=(1, 2, 2))(x[:, :, :2], t, cond)


def test_bf16_weights_take_a_float32_condition():
    model = randomize_zero_params(small_net()).to(torch.bfloat16)
    x, t, cond = inputs()
    out = model(x.to(torch.bfloat16), t, cond)
    assert out.dtype == torch.bfloat16 and out.abs().sum() > 0
