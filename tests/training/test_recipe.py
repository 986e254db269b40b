"""recipe=paper is the paper's training recipe; recipe=fast this project's; each value one override."""

from __future__ import annotations

import pytest
from helpers.configs import compose_train
from helpers.runs import scalar_curve

from sdm.training.ema import ema_decay
from sdm.training.fit import train
from sdm.training.module import warmup_cosine

# The paper's code (guided-diffusion's TrainLoop as SDM runs it): constant lr, no warm-up, no
# clipping, EMA 0.9999 without warm-up, the fine-tune continuing it, 4 per GPU x 8 GPUs = 32.
PAPER = {"optim.lr": 1e-4, "optim.warmup_steps": 0, "optim.schedule": "constant", "trainer.gradient_clip_val": None,
         "ema.decay": 0.9999, "ema.warmup": False, "ema.on_finetune": "continue", "data.batch_size": 4}


def values(cfg, keys):
    from omegaconf import OmegaConf

    return {key: OmegaConf.select(cfg, key) for key in keys}


def composed(*overrides: str):
    """What `python train.py <overrides>` composes (without the suite's fast settings)."""
    from sdm.core.configs import compose
    from sdm.training.fit import register_resolvers

    register_resolvers()
    return compose("train", list(overrides))


@pytest.mark.parametrize("experiment", ["sidewalk256", "sidewalk1024"])
def test_the_gpu_experiments_train_with_the_papers_recipe(experiment):
    cfg = composed(f"experiment={experiment}")
    expected = dict(PAPER)
    if experiment == "sidewalk1024":  # 2 per GPU (memory) x 2 accumulated: global 32 on 8 GPUs as well
        expected["data.batch_size"] = 2
        assert cfg.trainer.accumulate_grad_batches == 2
    assert values(cfg, expected) == expected
    t = cfg.trainer
    assert t.devices * t.num_nodes * cfg.data.batch_size * t.accumulate_grad_batches == 32


def test_recipes_are_chosen_on_the_command_line_and_each_departure_is_one_override():
    finetune = composed("experiment=finetune_cfg")
    assert values(finetune, PAPER) == {**PAPER, "optim.lr": 2e-5}
    fast = composed("experiment=sidewalk256", "recipe=fast")  # the command line's recipe wins
    assert values(fast, ["optim.warmup_steps", "optim.schedule", "trainer.gradient_clip_val", "ema.warmup",
                         "ema.on_finetune", "data.batch_size"]) == {
        "optim.warmup_steps": 1000, "optim.schedule": "cosine", "trainer.gradient_clip_val": 1.0, "ema.warmup": True,
        "ema.on_finetune": "restart", "data.batch_size": 2}
    assert composed("experiment=finetune_cfg", "recipe=fast").optim.warmup_steps == 100
    one = composed("experiment=sidewalk256", "trainer.gradient_clip_val=1.0")
    assert values(one, PAPER) == {**PAPER, "trainer.gradient_clip_val": 1.0}
    quick = composed("experiment=quickstart")  # the CPU quickstart keeps its measured choices
    assert values(quick, ["optim.lr", "optim.warmup_steps", "ema.decay", "ema.warmup", "trainer.gradient_clip_val"]) == {
        "optim.lr": 5e-4, "optim.warmup_steps": 50, "ema.decay": 0.999, "ema.warmup": True,
        "trainer.gradient_clip_val": 1.0}


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_a_short_run_follows_its_recipe(tmp_path, recipe):
    """The logged lr and EMA decay of every step are the recipe's."""
    out = tmp_path / recipe
    cfg = compose_train(out, f"recipe={recipe}", "optim.lr=1e-4", "optim.warmup_steps=3", "ema.decay=0.9999",
                        "trainer.max_steps=6", "validation.every_n_steps=100", "checkpoint.every_n_steps=100")
    if recipe == "paper":  # the suite's FAST_TRAIN sets a warm-up: take the paper's back
        cfg.optim.warmup_steps = 0
    train(cfg)
    lr = scalar_curve(out, "lr-AdamW")
    decay = scalar_curve(out, "train/ema_decay")
    assert sorted(lr) == sorted(decay) == list(range(6))
    if recipe == "paper":
        assert all(v == pytest.approx(1e-4) for v in lr.values()), lr
        assert decay == {0: 0.0, **{s: pytest.approx(0.9999) for s in range(1, 6)}}
    else:
        assert [lr[s] for s in range(6)] == pytest.approx([1e-4 * warmup_cosine(s, 3, 6) for s in range(6)])
        assert decay == {0: 0.0, **{s: pytest.approx(ema_decay(0.9999, s, True)) for s in range(1, 6)}}
        assert decay[1] == pytest.approx(2 / 11)
    from sdm.training.fit import build_trainer

    assert build_trainer(cfg).gradient_clip_val == (None if recipe == "paper" else 1.0)
