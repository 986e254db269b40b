"""The LightningModule's pieces, one at a time, with a stand-in trainer (no fit loop).

The end-to-end runs in test_training.py show that the pieces fit together; these show that
each piece does what it says: which weights and masks validation uses, how the random
streams of micro-batches differ, what is logged, what the optimizer is given.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.configs import compose_train
from omegaconf import OmegaConf

import sdm.training.module as module_code
from sdm.core.viz import to_uint8_image
from sdm.data.classes import colorize
from sdm.diffusion import noise_config
from sdm.models import build_unet, label_to_condition
from sdm.training.module import DivergedError, SDMModule, training_seed, warmup_cosine

B, SIZE = 4, 32


@pytest.fixture
def module(tmp_path) -> SDMModule:
    cfg = compose_train(tmp_path, "guidance.drop_prob=0.2", "validation.num_masks=2")
    return SDMModule(OmegaConf.to_container(cfg, resolve=True))


def attach(module: SDMModule, *, step: int = 0, rank: int = 0, accumulate: int = 1, **extra) -> list:
    """A stand-in trainer; returns the list that records the module's self.log calls."""
    decisions = []

    def reduce_boolean_decision(decision, all=True):  # noqa: A002 - Lightning's keyword
        decisions.append((decision, all))
        return decision

    fields = dict(
        global_step=step, global_rank=rank, world_size=2 if rank else 1, accumulate_grad_batches=accumulate,
        precision="32-true",
        strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision), decisions=decisions,
        sanity_checking=False, is_global_zero=True, loggers=[],
    )
    module._trainer = SimpleNamespace(**{**fields, **extra})
    logged: list = []
    module.log = lambda name, value, **kwargs: logged.append((name, value, kwargs))
    return logged


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(1, 35, (B, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    return {"image": torch.rand(B, 3, SIZE, SIZE, generator=gen) * 2 - 1, "label": label}


def spy_network(network: torch.nn.Module, calls: list) -> None:
    """Record (x_t, t, cond) of every forward pass of `network`, then run it."""
    forward = network.forward
    network.forward = lambda x, t, cond: calls.append((x.clone(), t.clone(), cond.clone())) or forward(x, t, cond)


def test_validation_scores_the_ema_weights_on_full_masks_with_fixed_noise(module):
    logged = attach(module)
    module.drop_prob = 1.0  # were validation to drop like training, every mask would be zero
    raw, ema = [], []
    spy_network(module.unet, raw)
    spy_network(module.ema.module, ema)
    with torch.no_grad():
        module.validation_step(batch(), 0)
    assert not raw and len(ema) == 1
    _, _, cond = ema[0]
    assert torch.equal(cond.sum(1), torch.ones(B, SIZE, SIZE))  # every pixel one-hot: nothing dropped
    with torch.no_grad():
        module.validation_step(batch(), 0)
        module.validation_step(batch(), 1)
    assert torch.equal(ema[0][0], ema[1][0]) and torch.equal(ema[0][1], ema[1][1])  # same batch, same noise
    assert not torch.equal(ema[0][0], ema[2][0])  # another batch index, other noise
    losses = [value for name, value, _ in logged if name == "val/loss"]
    assert losses[0] == losses[1]
    kept = module._val_batch
    assert kept["label"].shape[0] == 2 and torch.equal(kept["label"], batch()["label"][:2])


def test_training_drops_masks_with_the_configured_probability(module):
    attach(module)
    calls = []
    spy_network(module.unet, calls)
    big = {"image": torch.zeros(200, 3, 8, 8), "label": torch.ones(200, 8, 8, dtype=torch.uint8)}
    module.training_step(big, 0)
    dropped = (calls[0][2].flatten(1).sum(1) == 0).float().mean().item()
    assert 0.12 < dropped < 0.28  # drop_prob 0.2
    module.drop_prob = 0.0
    module.training_step(big, 0)
    assert (calls[1][2].flatten(1).sum(1) > 0).all()


def draws_of(module: SDMModule, stream: int, batch_size: int) -> list[tuple[float, ...]]:
    return [tuple(torch.rand(3, generator=g).tolist()) for g in module._generators(stream, batch_size)]


def test_every_sample_draws_its_own_noise_whichever_rank_holds_it(module):
    """Streams are a function of (seed, step, micro-batch, index in the global batch): distinct,
    reproducible, and the same for a sample on 1 GPU or on rank 1 of 2 (as the data shards)."""
    draws = {}
    for step in range(3):
        for stream in range(2):
            attach(module, step=step, accumulate=2)
            draws[(step, stream)] = draws_of(module, stream, 4)
    values = [v for group in draws.values() for v in group]
    assert len(set(values)) == len(values) == 3 * 2 * 4
    for rank in range(2):  # rank r of 2 holds global positions r, r + 2: a global batch of 4 as 2 x 2
        attach(module, step=1, rank=rank, world_size=2, accumulate=2)
        assert draws_of(module, 1, 2) == draws[(1, 1)][rank::2]
    module.cfg = {**module.cfg, "seed": 1}
    attach(module, step=1, accumulate=2)
    assert draws_of(module, 1, 4) != draws[(1, 1)]


def test_no_two_samples_of_a_run_share_a_random_stream():
    """A global batch of 16, 2 micro-batches per step, 5,000 steps, two seeds: 320,000 streams."""
    seeds = {training_seed(seed, step, micro, sample)
             for seed in (0, 1) for step in range(5_000) for micro in range(2) for sample in range(16)}
    assert len(seeds) == 2 * 5_000 * 2 * 16
    assert training_seed(0, 1, 2, 1) == training_seed(0, 1, 2, 1)  # a pure function: resume is exact
    assert all(0 <= s < 2**63 for s in list(seeds)[:1000])  # valid for torch.Generator.manual_seed


def test_training_step_uses_the_micro_batch_stream(module, monkeypatch):
    noises = []
    real = module_code.add_noise
    monkeypatch.setattr(module_code, "add_noise", lambda s, x0, noise, t: noises.append((noise, t)) or real(s, x0, noise, t))
    attach(module, step=5, accumulate=2)
    module.training_step(batch(), 10)  # micro-batch 0 of step 5
    module.training_step(batch(), 11)  # micro-batch 1 of step 5
    attach(module, step=6, accumulate=2)
    module.training_step(batch(), 12)
    assert not torch.equal(noises[0][0], noises[1][0]) and not torch.equal(noises[1][0], noises[2][0])
    attach(module, step=5, accumulate=2)
    module.training_step(batch(), 11)
    assert torch.equal(noises[3][0], noises[1][0]) and torch.equal(noises[3][1], noises[1][1])
    # batch 11 with 2 micro-batches per step is micro-batch 1 of step 5: each sample's draws, in order
    for j in range(B):
        gen = torch.Generator().manual_seed(training_seed(int(module.cfg["seed"]), 5, 1, j))
        torch.rand(1, generator=gen)
        assert torch.equal(noises[1][1][j : j + 1], torch.randint(0, module.num_timesteps, (1,), generator=gen))
        assert torch.equal(noises[1][0][j : j + 1], torch.randn(1, 3, SIZE, SIZE, generator=gen))


def test_non_finite_loss_is_agreed_across_ranks_then_stops(module, monkeypatch):
    attach(module, step=7)
    module.training_step(batch(), 0)
    assert module.trainer.decisions == [(False, False)]  # any rank (all=False) stops every rank
    real = module_code.hybrid_loss
    monkeypatch.setattr(module_code, "hybrid_loss",
                        lambda *a, **k: {n: v * math.inf for n, v in real(*a, **k).items()})
    with pytest.raises(DivergedError, match="at step 7"):
        module.training_step(batch(), 0)


def test_losses_are_logged_per_timestep_quarter(module):
    logged = attach(module)
    losses = {"loss": torch.tensor([1.0, 2.0, 3.0, 4.0]), "mse": torch.tensor([1.0, 2.0, 3.0, 4.0]),
              "vlb": torch.tensor([0.5, 0.5, 0.5, 0.5])}
    module.log_losses("train", losses, torch.tensor([0, 249, 250, 999]))
    values = {name: float(value) for name, value, _ in logged}
    assert values == {"train/loss": 2.5, "train/mse": 2.5, "train/vlb": 0.5, "train/mse_q0": 1.5,
                      "train/mse_q1": 3.0, "train/mse_q3": 4.0}
    options = {name: kwargs for name, _, kwargs in logged}
    assert options["train/loss"] == {"on_step": True, "on_epoch": False, "prog_bar": True, "sync_dist": False}
    assert options["train/mse"]["prog_bar"] is False
    assert options["train/mse_q0"]["batch_size"] == 2 and options["train/mse_q3"]["batch_size"] == 1
    logged.clear()
    module.log_losses("val", losses, torch.tensor([0, 249, 250, 999]))
    options = {name: kwargs for name, _, kwargs in logged}
    assert options["val/loss"] == {"on_step": False, "on_epoch": True, "prog_bar": True, "sync_dist": True}
    assert options["val/mse_q1"]["on_epoch"] and not options["val/mse_q1"]["on_step"]


def test_optimizer_gets_the_configured_adamw_and_schedule(tmp_path):
    cfg = compose_train(tmp_path, "optim.lr=3e-4", "optim.weight_decay=0.05", "optim.betas=[0.8,0.95]",
                        "optim.eps=1e-6", "optim.warmup_steps=4", "trainer.max_steps=20", "optim.min_lr_ratio=0.1")
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and setup["lr_scheduler"]["interval"] == "step"
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.05)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len(list(module.unet.parameters()))  # the U-Net only, never the EMA copy
    assert {id(p) for p in params} == {id(p) for p in module.unet.parameters()}
    rates = []
    for _ in range(21):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [3e-4 * warmup_cosine(k, 4, 20, 0.1, True) for k in range(21)]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)
    assert rates[0] == pytest.approx(3e-4 / 4) and rates[20] == pytest.approx(3e-5)


def test_constant_schedule_after_warmup(tmp_path):
    cfg = compose_train(tmp_path, "optim.schedule=constant", "optim.warmup_steps=2", "trainer.max_steps=10")
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    base = float(cfg.optim.lr)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([base / 2] + [base] * 9)


def test_warmup_cosine_values():
    assert [warmup_cosine(s, 4, 12) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warmup_cosine(4, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(6, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine(8, 4, 12, min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert warmup_cosine(50, 4, 12, min_ratio=0.2) == pytest.approx(0.2)  # past the end: stays at the floor
    assert warmup_cosine(5, 4, 4) == 1.0 and warmup_cosine(3, 4, 4) == pytest.approx(1.0)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_the_network_inputs(tmp_path, channels_last):
    """On, inputs and weights are channels-last; off (the default), everything stays NCHW."""
    cfg = compose_train(tmp_path, f"channels_last={str(channels_last).lower()}")
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    attach(module)
    forward = module.unet.forward
    formats = []
    module.unet.forward = lambda x, t, cond: formats.append(
        (x.is_contiguous(memory_format=torch.channels_last), cond.is_contiguous(memory_format=torch.channels_last))
    ) or forward(x, t, cond)
    module.training_step(batch(), 0)
    assert formats == [(channels_last, channels_last)]
    conv = next(m for m in module.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last


def test_samples_come_from_the_ema_weights(module):
    attach(module)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for p in module.unet.parameters():
            p.fill_(float("nan"))  # the raw weights must not be used
    label = batch()["label"][:2]
    images = module.sample_images(label, 2, steps=2, seed=3)
    assert images.shape == (4, 3, SIZE, SIZE) and torch.isfinite(images).all()
    assert torch.equal(images, module.sample_images(label, 2, steps=2, seed=3))
    assert not torch.equal(images, module.sample_images(label, 2, steps=2, seed=4))
    assert not torch.equal(images, module.sample_images(label, 2, steps=2, seed=3, guidance=3.0))
    swapped = module.sample_images(label.flip(0), 2, steps=2, seed=3)
    assert not torch.equal(images[:2], swapped[:2])  # each mask's samples come in order, per mask
    picture, samples = module.sample_grid({"label": label, "image": batch()["image"][:2]})
    per_mask = int(module.cfg["validation"]["samples_per_mask"])
    assert samples.shape[0] == 2 * per_mask
    tile = SIZE + 2
    assert picture.shape == (2 * tile + 2, (2 + per_mask) * tile + 2, 3)
    assert np.array_equal(picture[2 : 2 + SIZE, 2 : 2 + SIZE], colorize(label[0].numpy()))
    for i in range(2):  # row i: mask, photo, then mask i's own samples in order
        for k in range(per_mask):
            top, left = 2 + i * tile, 2 + (2 + k) * tile
            assert np.array_equal(picture[top : top + SIZE, left : left + SIZE],
                                  to_uint8_image(samples[i * per_mask + k])), (i, k)


def test_bf16_sampling_follows_the_trainer_precision(module):
    assert module._bf16() is False  # no trainer
    attach(module)
    assert module._bf16() is False
    module._trainer.precision = "bf16-mixed"
    assert module._bf16() is True


def test_validation_grid_goes_to_the_logger_once_per_validation(module):
    module.cfg["validation"]["samples_per_mask"] = 2  # 2 masks x 2: a count no other shape can give
    images = []
    experiment = SimpleNamespace(add_image=lambda tag, picture, step, dataformats: images.append((tag, step, dataformats)))
    # a logger without an experiment (CSV-style) and one whose experiment cannot draw are skipped
    loggers = [SimpleNamespace(), SimpleNamespace(experiment=object()), SimpleNamespace(experiment=experiment)]
    logged = attach(module, step=12, loggers=loggers)
    seen = []

    def scorer(samples, labels, per_mask):
        seen.append((samples.shape, labels.clone(), per_mask))
        return {"val/some_score": 0.25}

    module.sample_scorer = scorer
    with torch.no_grad():
        module.validation_step(batch(), 0)
    module._trainer.sanity_checking = True
    module.on_validation_epoch_end()
    assert not images
    module._trainer.sanity_checking = False
    module._trainer.is_global_zero = False
    module.on_validation_epoch_end()
    assert not images
    module._trainer.is_global_zero = True
    module.on_validation_epoch_end()
    assert images == [("samples/mask_real_samples", 12, "HWC")]
    per_mask, masks = module.cfg["validation"]["samples_per_mask"], module._val_batch["label"]
    assert len(seen) == 1 and seen[0][2] == per_mask == 2 and type(seen[0][2]) is int
    assert torch.equal(seen[0][1], masks)
    assert seen[0][0] == (len(masks) * per_mask, 3, SIZE, SIZE)  # the grid's samples, mask by mask
    # only rank 0 samples the grid, so its scores are logged from rank 0 alone (no collective)
    assert [(value, kwargs) for name, value, kwargs in logged if name == "val/some_score"] == [
        (0.25, {"rank_zero_only": True})]


def test_the_run_config_travels_in_the_checkpoint_and_sets_ema_and_edges(tmp_path):
    """sample.py and init_from read a .ckpt's config from hyper_parameters['cfg']."""
    cfg = OmegaConf.to_container(compose_train(tmp_path, "model.edge_channel=true", "ema.decay=0.99"), resolve=True)
    module = SDMModule(cfg)
    assert dict(module.hparams) == {"cfg": cfg}
    assert (module.ema.decay, module.ema.warmup) == (0.99, True)
    label = batch()["label"]
    cond = module.condition(label)
    assert cond.shape[1] == 36  # 35 one-hot channels and the edge map
    assert torch.equal(cond[:, 35], label_to_condition(label.long(), 35, True)[:, 35]) and cond[:, 35].any()
    no_warmup = SDMModule({**cfg, "ema": {**cfg["ema"], "warmup": False}})
    assert no_warmup.ema.warmup is False
    older = {k: v for k, v in cfg.items() if k != "channels_last"}  # configs saved before the key existed
    assert SDMModule(older).channels_last is False


def test_the_loss_weighs_the_vlb_term_as_configured(tmp_path):
    cfg = OmegaConf.to_container(compose_train(tmp_path, "loss.vlb_weight=0.5"), resolve=True)
    module = SDMModule(cfg)
    logged = attach(module)
    module.training_step(batch(), 0)
    values = {name: float(value) for name, value, _ in logged}
    assert values["train/vlb"] > 0
    # L_vlb = T * E_t[L_t] (the logged vlb is the one-timestep term L_t): loss = mse + lambda * T * vlb
    assert values["train/loss"] == pytest.approx(values["train/mse"] + 0.5 * 1000 * values["train/vlb"], rel=1e-5)


def test_a_validation_without_a_scorer_still_draws_its_grid(module):
    images = []
    experiment = SimpleNamespace(add_image=lambda tag, picture, step, dataformats: images.append(tag))
    logged = attach(module, loggers=[SimpleNamespace(experiment=experiment)])
    assert module.sample_scorer is None  # training.py attaches one only when a segmenter is cached
    with torch.no_grad():
        module.validation_step(batch(), 0)
    module.on_validation_epoch_end()
    assert images == ["samples/mask_real_samples"]
    assert not [name for name, _, _ in logged if not name.startswith("val/")]


def test_build_unet_and_noise_config_follow_the_config(module):
    cfg = module.cfg
    unet = build_unet({**cfg, "data": {**cfg["data"], "num_classes": 7}})
    assert unet.num_classes == 7 and unet.out_channels == 6
    noise = noise_config(cfg)
    assert noise["learn_sigma"] is True and noise["num_train_timesteps"] == 1000
    no_sigma = noise_config({**cfg, "model": {**cfg["model"], "learn_sigma": False}})
    assert no_sigma["learn_sigma"] is False


def test_the_training_step_learns_a_fixed_batch(tmp_path):
    """The module's own step, optimizer and schedule: 60 steps on one batch (fixed t and noise,
    as the stand-in trainer never advances the step) must halve the loss."""
    cfg = compose_train(tmp_path, "optim.lr=2e-3", "guidance.drop_prob=0", "optim.warmup_steps=2",
                        "trainer.max_steps=1000")
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    attach(module)
    torch.manual_seed(0)
    side = 16  # the network is size-agnostic; a small batch keeps this check in the quick loop
    label = torch.zeros(4, side, side, dtype=torch.uint8)
    label[:, side // 2 :] = 1
    fixed = {"image": torch.rand(4, 3, side, side) * 2 - 1, "label": label}
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    losses = []
    for _ in range(60):
        loss = module.training_step(fixed, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0], losses[::10]


def test_other_mask_baseline_never_pairs_a_sample_with_its_own_mask():
    from sdm.data.scenes import generate_scene
    from sdm.metrics.scene_agreement import agreement_own_and_other, colour_agreement

    scenes = [generate_scene(70_000 + i, 32, 32) for i in range(3)]
    labels = torch.from_numpy(np.stack([s[1] for s in scenes]))
    real = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    three_each = real.repeat_interleave(3, 0)  # 3 "samples" per mask, mask by mask
    own, other = agreement_own_and_other(three_each, labels, per_mask=3)
    assert own == pytest.approx(colour_agreement(real, labels))
    assert other == pytest.approx(colour_agreement(real, labels.roll(1, 0)))
    assert own > other + 0.3
    with pytest.raises(ValueError, match="9 images for 3 masks x 2 samples"):
        agreement_own_and_other(three_each, labels, per_mask=2)
    with pytest.raises(ValueError, match="at least two masks"):
        agreement_own_and_other(real[:1], labels[:1])


def test_validation_noise_is_reproducible_from_its_documented_seed(module, monkeypatch):
    """Validation batch i draws (drop, t, noise) from torch.Generator seeded 10_007 + i, so a
    logged validation point can be recomputed outside the trainer and curves compare across runs."""
    attach(module)
    drawn = []
    real = module_code.add_noise
    monkeypatch.setattr(module_code, "add_noise", lambda s, x0, noise, t: drawn.append((noise, t)) or real(s, x0, noise, t))
    with torch.no_grad():
        for index in (0, 1, 3):
            module.validation_step(batch(), index)
    for (noise, t), index in zip(drawn, (0, 1, 3), strict=True):
        gen = torch.Generator().manual_seed(10_007 + index)
        torch.rand(B, generator=gen)  # the drop draw (validation never drops)
        assert torch.equal(t, torch.randint(0, module.num_timesteps, (B,), generator=gen)), index
        assert torch.equal(noise, torch.randn(B, 3, SIZE, SIZE, generator=gen)), index


def test_validation_rows_draw_their_noise_by_their_index_in_the_whole_set(module, monkeypatch):
    """Rows that carry their index (the data module's do) draw from a generator seeded 10_007 +
    index: one row's loss is the same in any batch, so 2 GPUs (rows r::2) log what 1 does."""
    attach(module)
    drawn = []
    real = module_code.add_noise
    monkeypatch.setattr(module_code, "add_noise", lambda s, x0, noise, t: drawn.append((noise, t)) or real(s, x0, noise, t))
    whole = {**batch(), "index": torch.arange(B)}
    evens = {k: v[0::2] for k, v in whole.items()}  # rank 0 of 2
    odds = {k: v[1::2] for k, v in whole.items()}
    with torch.no_grad():
        for part in (whole, evens, odds):
            module.validation_step(part, 0)
    (noise, t), (noise0, t0), (noise1, t1) = drawn
    assert torch.equal(noise[0::2], noise0) and torch.equal(noise[1::2], noise1)
    assert torch.equal(t[0::2], t0) and torch.equal(t[1::2], t1)
    gen = torch.Generator().manual_seed(10_007 + 3)
    torch.rand(1, generator=gen)
    assert torch.equal(t[3:4], torch.randint(0, module.num_timesteps, (1,), generator=gen))
    assert torch.equal(noise[3:4], torch.randn(1, 3, SIZE, SIZE, generator=gen))
    assert not torch.equal(noise[0], noise[1])


def test_the_validation_grid_keeps_the_first_masks_all_run_long(module):
    """Grids of later validations show the masks of the first one, so pictures compare across steps."""
    attach(module)
    first, other = batch(0), batch(1)
    with torch.no_grad():
        module.validation_step(first, 0)
        module.validation_step(other, 1)
        module.validation_step(other, 0)  # the next validation, whatever its first batch holds
    assert torch.equal(module._val_batch["label"], first["label"][:2])
    assert torch.equal(module._val_batch["image"], first["image"][:2])


def test_the_validation_grid_samples_with_its_own_steps_and_seed_zero(module, monkeypatch):
    attach(module)
    module.cfg["validation"]["num_steps"] = 3
    module.cfg["sampler"]["num_steps"] = 7
    calls = []
    real = module_code.sample
    monkeypatch.setattr(module_code, "sample", lambda *a, **k: calls.append(k) or real(*a, **k))
    label = batch()["label"][:2]
    _, samples = module.sample_grid({"label": label, "image": batch()["image"][:2]})
    assert [call["num_steps"] for call in calls] == [3]
    per_mask = int(module.cfg["validation"]["samples_per_mask"])
    assert torch.equal(samples, module.sample_images(label, per_mask, steps=3, seed=0))


def test_adamw_eps_defaults_to_1e_8_for_configs_without_it(tmp_path):
    """Configs saved before optim.eps existed (older checkpoints, init_from) keep AdamW's 1e-8."""
    cfg = OmegaConf.to_container(compose_train(tmp_path), resolve=True)
    del cfg["optim"]["eps"]
    optimizer = SDMModule(cfg).configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["eps"] == 1e-8


def test_the_edge_channel_marks_instance_boundaries_where_the_batch_has_them(tmp_path):
    """Two cars side by side are one class: only their instance ids tell where one ends (the
    paper's Cityscapes and COCO models); without instance ids the edges are the classes'."""
    cfg = compose_train(tmp_path, "model.edge_channel=true")
    edged = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    assert edged.unet.edge_channel
    label = torch.full((1, 8, 8), 10, dtype=torch.uint8)
    instance = torch.zeros(1, 8, 8, dtype=torch.int32)
    instance[:, :, 4:] = 1
    with_instances = edged.condition(label, instance)[:, -1]
    assert with_instances[0, :, 3:5].sum() > 0 and with_instances[0, :, :3].sum() == 0  # at the cars' border only
    assert edged.condition(label)[:, -1].sum() == 0  # one class, no instances: no edge
    batch = {"image": torch.zeros(1, 3, 8, 8), "label": label, "instance": instance}
    seen = []
    edged.condition = lambda lab, inst=None: seen.append(inst) or label_to_condition(lab.long(), 35, True, inst)
    edged.diffusion_losses(batch, torch.Generator().manual_seed(0), 0.0, edged.unet)
    assert seen and seen[0] is instance  # training conditions on the batch's instance ids


def test_the_validation_grid_takes_the_datamodules_first_rows_when_it_has_them(module):
    """Every rank draws the grid from rows 0..n-1 of the whole validation set (the datamodule says
    which), not from the first batch its own share of the rows begins with."""
    first_rows, own = batch(5), batch(6)
    asked = []

    def first_val_rows(n):
        asked.append(n)
        return {**{k: v[:n] for k, v in first_rows.items()}, "index": torch.arange(n)}

    attach(module, datamodule=SimpleNamespace(first_val_rows=first_val_rows))
    with torch.no_grad():
        module.validation_step(own, 0)
    assert asked == [2] and set(module._val_batch) == {"image", "label"}  # the rows' index is not kept
    assert torch.equal(module._val_batch["label"], first_rows["label"][:2])
    streamed = SDMModule(module.cfg)
    attach(streamed, datamodule=SimpleNamespace(first_val_rows=lambda n: None))  # a streamed set has none
    with torch.no_grad():
        streamed.validation_step(own, 0)
    assert torch.equal(streamed._val_batch["label"], own["label"][:2])


def test_the_validation_grid_samples_with_the_rows_instance_edges(module, monkeypatch):
    attach(module)
    seen = []
    monkeypatch.setattr(module, "sample_images", lambda label, per_mask, **kw: seen.append(kw["instance"])
                        or torch.zeros(label.shape[0] * per_mask, 3, SIZE, SIZE))
    rows = {**batch(), "instance": torch.arange(B * SIZE * SIZE).reshape(B, SIZE, SIZE)}
    module.sample_grid(rows)
    assert torch.equal(seen[-1], rows["instance"])
    module.sample_grid(batch())
    assert seen[-1] is None


def test_a_loss_at_the_divergence_limit_trains_on_and_one_above_it_stops(module, monkeypatch):
    """loss.diverged_above is the largest loss still accepted."""
    attach(module, step=3)
    module.cfg["loss"]["diverged_above"] = 2.0
    monkeypatch.setattr(module_code, "hybrid_loss", lambda *a, **k: {n: torch.full((B,), 2.0) for n in ("loss", "mse", "vlb")})
    module.training_step(batch(), 0)
    assert module.trainer.decisions == [(False, False)]
    monkeypatch.setattr(module_code, "hybrid_loss", lambda *a, **k: {n: torch.full((B,), 2.01) for n in ("loss", "mse", "vlb")})
    with pytest.raises(DivergedError, match=r"loss 2\.01 .*loss\.diverged_above=2\)"):
        module.training_step(batch(), 0)


def test_noise_is_drawn_in_the_batchs_dtype_from_one_generator_or_one_per_sample():
    """A bf16 network trains on bf16 images (trainer.precision=bf16-true): its noise must be bf16 too."""
    from sdm.training.module import draw_noise

    for generators in (torch.Generator().manual_seed(1), [torch.Generator().manual_seed(s) for s in range(3)]):
        uniform, t, noise = draw_noise(generators, (3, 2, 4, 4), 1000, torch.device("cpu"), torch.bfloat16)
        assert noise.dtype == torch.bfloat16 and noise.shape == (3, 2, 4, 4)
        assert uniform.dtype == torch.float32 and uniform.shape == (3,) and t.dtype == torch.int64
        assert int(t.min()) >= 0 and int(t.max()) < 1000


def test_the_losses_draw_their_noise_for_the_batchs_dtype(module, monkeypatch):
    attach(module)
    seen = []
    real = module_code.draw_noise
    monkeypatch.setattr(module_code, "draw_noise", lambda g, shape, T, device, dtype: seen.append((shape, T, dtype))
                        or real(g, shape, T, device, dtype))
    module.diffusion_losses(batch(), torch.Generator().manual_seed(0), 0.0, module.unet)
    assert seen == [((B, 3, SIZE, SIZE), module.num_timesteps, torch.float32)]
    half = {**batch(), "image": batch()["image"].to(torch.bfloat16)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.diffusion_losses(half, torch.Generator().manual_seed(0), 0.0, module.unet)
    assert seen[-1][2] == torch.bfloat16


def test_the_validation_grid_colours_masks_with_the_runs_class_table(module, monkeypatch):
    """Another dataset's run (its table in data.classes) shows its own colours, not the sidewalk's."""
    from sdm.data.classes import class_table

    attach(module)
    monkeypatch.setattr(module, "sample_images", lambda label, per_mask, **kw: torch.zeros(label.shape[0] * per_mask, 3,
                                                                                          SIZE, SIZE))
    from helpers import REPO

    module.cfg["data"]["classes"] = OmegaConf.to_container(OmegaConf.load(REPO / "conf/data/classes/cityscapes.yaml"))
    rows = batch()
    picture, _ = module.sample_grid({k: v[:1] for k, v in rows.items()})
    cityscapes = class_table(module.cfg["data"]).colorize(rows["label"][0].numpy())
    assert not np.array_equal(cityscapes, colorize(rows["label"][0].numpy()))
    assert np.array_equal(picture[2 : 2 + SIZE, 2 : 2 + SIZE], cityscapes)  # the first tile, after the 2 px frame


def test_each_optimizer_step_logs_the_decay_it_averaged_with_per_step(module):
    """train/ema_decay is a per-step curve: 0 at the first update (a copy), then the warm-up's."""
    from sdm.training.ema import ema_decay

    logged = attach(module)
    steps = []

    class Optimizer:
        def step(self, closure):
            steps.append(closure())

    module.on_train_start()
    for _ in range(3):
        module.optimizer_step(0, 0, Optimizer(), lambda: 1.0)
    assert steps == [1.0, 1.0, 1.0]  # the closure (forward and backward) runs once per step
    expected = [0.0, ema_decay(module.ema.decay, 1, module.ema.warmup), ema_decay(module.ema.decay, 2, module.ema.warmup)]
    assert logged == [("train/ema_decay", value, {"on_step": True, "on_epoch": False}) for value in expected]
