"""Training: the module's maths, EMA, checkpoints, resume, fine-tune, TensorBoard, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO
from helpers.configs import FAST_TRAIN, compose_train
from helpers.runs import scalar_curve
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdm.checkpoint.files import (
    find_latest_checkpoint,
    load_checkpoint,
    load_ema_weights,
)
from sdm.core.errors import CheckpointError, ConfigError
from sdm.training.callbacks import AtomicCheckpointIO
from sdm.training.ema import EMA, ema_decay
from sdm.training.fit import train
from sdm.training.module import DivergedError, SDMModule, warmup_cosine


def read_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_ema_matches_hand_computation():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9, warmup=False)
    expected = model.weight.detach().clone()
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(step)
        ema.update_parameters(model)
        # the first update copies the weights; later ones blend with the decay
        expected = model.weight.detach().clone() if step == 1 else 0.9 * expected + 0.1 * model.weight.detach()
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    assert not any(p.requires_grad for p in ema.parameters())
    assert ema_decay(0.9999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay(0.9999, 90, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay(0.9, 10_000, warmup=True) == 0.9


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 10, 100, cosine=False) == 1.0


def test_dropping_the_condition_uses_the_null_map(tmp_path):
    cfg = compose_train(tmp_path)
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    seen = []
    module.unet.forward = lambda x, t, cond: seen.append(cond) or torch.zeros(x.shape[0], 6, *x.shape[2:])
    batch = {"image": torch.zeros(64, 3, 32, 32), "label": torch.ones(64, 32, 32, dtype=torch.uint8)}
    module.diffusion_losses(batch, torch.Generator().manual_seed(1), 0.2, module.unet)
    dropped = (seen[0].flatten(1).sum(1) == 0).float().mean().item()
    assert 0.05 < dropped < 0.4  # about 20 % of the samples see the all-zero map
    module.diffusion_losses(batch, torch.Generator().manual_seed(1), 0.0, module.unet)
    assert (seen[1].flatten(1).sum(1) > 0).all()


def run_train(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, dict]:
    out = tmp_path / name
    cfg = compose_train(out, *overrides)
    return out, train(cfg)


class CodeCarryingObject(torch.nn.Module):
    """Pickled as a class reference: loading it would import and run code."""


def test_resume_is_exact(tmp_path, monkeypatch):
    straight, _ = run_train(tmp_path, "straight")

    # the same run, stopped after step 4 (as a crash or a time limit would), then resumed
    from sdm.training import callbacks

    original = callbacks.PeriodicCheckpoint.on_train_batch_end

    def stop_after_four(self, trainer, *args, **kwargs):
        original(self, trainer, *args, **kwargs)
        if trainer.global_step == 4:
            trainer.should_stop = True

    monkeypatch.setattr(callbacks.PeriodicCheckpoint, "on_train_batch_end", stop_after_four)
    resumed, _ = run_train(tmp_path, "resumed")
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 4
    monkeypatch.setattr(callbacks.PeriodicCheckpoint, "on_train_batch_end", original)
    run_train(tmp_path, "resumed", "ckpt_path=last")

    a = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        if key.startswith("ema."):
            assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    curve_a, curve_b = scalar_curve(straight, "train/loss"), scalar_curve(resumed, "train/loss")
    assert sorted(curve_a) == sorted(curve_b) and len(curve_a) >= 7
    for step, value in curve_a.items():
        assert curve_b[step] == pytest.approx(value, abs=1e-6), step


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One short run shared by the tests that only read what it wrote. Without mask dropout, so
    that a fine-tune from it shows its 0.2 comes from finetune_cfg, not from the source run."""
    return run_train(tmp_path_factory.mktemp("trained"), "run", "guidance.drop_prob=0")


def test_tensorboard_holds_losses_grids_and_hparams(trained):
    out, metrics = trained
    assert set(metrics) >= {"final/train_loss", "final/val_loss"}
    tags = read_events(out).Tags()
    assert {"train/loss", "val/loss", "train/mse_q0", "lr-AdamW"} <= set(tags["scalars"])
    assert "samples/mask_real_samples" in tags["images"]
    hparams = read_events(out).PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert (out / "export" / "ema.safetensors").exists() and (out / "export" / "config.yaml").exists()
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert any(p.name.startswith("best-") for p in (out / "checkpoints").iterdir())


def test_export_holds_the_ema_weights(trained):
    out, _ = trained
    exported, _ = load_ema_weights(out / "export" / "ema.safetensors")
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]
    raw = {k[len("unet."):]: v for k, v in ckpt.items() if k.startswith("unet.")}
    for key, value in exported.items():
        assert torch.equal(value, ckpt["ema.module." + key])
    assert any(not torch.equal(exported[k], raw[k]) for k in exported)  # EMA, not raw weights


def stage_one_state(source: Path) -> tuple[dict, dict, int]:
    state = load_checkpoint(source / "checkpoints" / "last.ckpt")["state_dict"]
    unet = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    return unet, ema, int(state["ema.n_averaged"])


def test_finetune_continues_the_stage_one_ema_as_the_papers_code_does(tmp_path, trained):
    """finetune_cfg (recipe=paper): the U-Net from stage 1's trained weights, the EMA carried on
    at 0.9999 from stage 1's, a fresh optimizer at 2e-5, mask dropout 0.2."""
    source, _ = trained
    out = tmp_path / "stage2"
    cfg = compose_train(out, "experiment=finetune_cfg", f"init_from={source}", "trainer.max_steps=1",
                        "data.size=[32,32]", "ema.decay=0.9999")
    assert cfg.optim.lr == pytest.approx(2e-5) and cfg.guidance.drop_prob == pytest.approx(0.2)
    assert cfg.ema.on_finetune == "continue" and cfg.ema.warmup is False
    train(cfg)
    unet1, ema1, updates1 = stage_one_state(source)
    unet2, ema2, updates2 = stage_one_state(out)
    assert updates2 == updates1 + 1  # the average goes on counting
    # one AdamW step moves each U-Net weight by at most about lr (2e-5 x warm-up 1/2 here): its
    # start was stage 1's trained U-Net, not stage 1's EMA (several times farther away)
    from_trained = max((unet1[k] - unet2[k]).abs().max().item() for k in unet1)
    from_ema = max((ema1[k] - unet2[k]).abs().max().item() for k in unet1)
    assert from_trained < 1.5e-5 and from_ema > 3 * from_trained, (from_trained, from_ema)
    for key, value in ema1.items():  # EMA_1 = 0.9999 EMA_0 + 0.0001 U-Net_1: stage 1's average, continued
        if value.is_floating_point():
            torch.testing.assert_close(ema2[key], 0.9999 * value + 1e-4 * unet2[key], rtol=0, atol=1e-6)
    saved = OmegaConf.load(out / "export" / "config.yaml")
    assert saved.guidance.drop_prob == pytest.approx(0.2) and saved.init_from == str(source)
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["optimizer_states"][0]["state"][0]["step"] == 1  # a fresh optimizer


def test_finetune_restarting_the_ema_starts_both_from_the_stage_one_ema(tmp_path, trained):
    source, _ = trained
    out = tmp_path / "stage2"
    train(compose_train(out, "experiment=finetune_cfg", "recipe=fast", f"init_from={source}",
                        "trainer.max_steps=1", "data.size=[32,32]"))
    _, ema1, _ = stage_one_state(source)
    unet2, ema2, updates2 = stage_one_state(out)
    assert updates2 == 1  # counted from zero: the first update copies the U-Net
    assert max((ema1[k] - unet2[k]).abs().max().item() for k in ema1) < 1.5e-5
    for key, value in unet2.items():
        assert torch.equal(ema2[key], value), key


def test_finetune_from_an_export_continues_from_the_ema_it_holds(tmp_path, trained, capsys):
    source, _ = trained
    out = tmp_path / "stage2"
    train(compose_train(out, "experiment=finetune_cfg", f"init_from={source / 'export' / 'ema.safetensors'}",
                        "trainer.max_steps=1", "data.size=[32,32]"))
    assert "initialised the U-Net from its EMA (the file holds no other)" in capsys.readouterr().out
    exported, _ = load_ema_weights(source)
    unet2, ema2, _ = stage_one_state(out)
    for key, value in exported.items():
        if value.is_floating_point():
            torch.testing.assert_close(ema2[key], 0.9999 * value + 1e-4 * unet2[key], rtol=0, atol=1e-6)


def test_init_from_refuses_bad_sources(tmp_path, trained):
    source, _ = trained
    cases = {"missing": tmp_path / "nothing-here"}
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((source / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    cases["corrupted"] = truncated
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CodeCarryingObject()}, evil)
    cases["code"] = evil
    messages = {"missing": "does not exist", "corrupted": "not a readable checkpoint",
                "code": "refusing to load"}
    for name, path in cases.items():
        with pytest.raises(CheckpointError, match=messages[name]):
            train(compose_train(tmp_path / f"bad-{name}", f"init_from={path}"))
    with pytest.raises(CheckpointError, match="does not fit this model.*model=..."):
        train(compose_train(tmp_path / "bad-size", f"init_from={source}", "model=small", "data.size=[32,32]"))


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    original = SDMModule.diffusion_losses

    def poisoned(self, batch, generator, drop_prob, network):
        losses, t = original(self, batch, generator, drop_prob, network)
        if self.training and self.global_step == 5:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses, t

    monkeypatch.setattr(SDMModule, "diffusion_losses", poisoned)
    with pytest.raises(DivergedError, match="at step 5"):
        run_train(tmp_path, "nan")
    last = find_latest_checkpoint(tmp_path / "nan")
    assert load_checkpoint(last)["global_step"] == 4


@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.max_steps=-3", "trainer.max_steps"), ("guidance.drop_prob=1.5", "guidance.drop_prob"),
     ("optim.lr=0", "optim.lr"), ("data.size=[30,30]", "data.size")],
)
def test_bad_config_is_named_before_data_work(tmp_path, override, key):
    cfg = compose_train(tmp_path / "run", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "data-cache").exists()


def test_atomic_checkpoint_survives_sigkill_mid_write(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    good = {"global_step": 1, "state_dict": {"w": torch.ones(3)}}
    AtomicCheckpointIO().save_checkpoint(good, path)
    script = f"""
import time, torch
from sdm.training.callbacks import AtomicCheckpointIO
def slow_save(obj, f):
    with open(f, "wb") as handle:
        handle.write(b"PK" + b"0" * 4096)
        handle.flush()
        time.sleep(60)
torch.save = slow_save
AtomicCheckpointIO().save_checkpoint({{"global_step": 2}}, {str(path)!r})
"""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.time() + 60
    while not list(path.parent.glob(".last.ckpt.partial-*")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(path.parent.glob(".last.ckpt.partial-*")), "the child never started writing"
    os.kill(child.pid, 9)
    child.wait()
    assert load_checkpoint(path)["global_step"] == 1
    assert find_latest_checkpoint(tmp_path) == path


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_cli_errors_are_clear(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    unknown = subprocess.run([sys.executable, "train.py", "experiment=nope", f"output_root={tmp_path}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode != 0 and "experiment/nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = subprocess.run([sys.executable, "train.py", "guidance.drop_prob=2", f"output_root={tmp_path}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "guidance.drop_prob=2.0 is invalid" in bad.stderr


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_multirun_makes_one_dir_per_job(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [a for a in FAST_TRAIN if not a.startswith("experiment")]
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=quickstart", *args, "trainer.max_steps=2",
         "validation.every_n_steps=2", "checkpoint.every_n_steps=2", "guidance.drop_prob=0.1,0.2",
         f"output_root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "multirun" / "quickstart").glob("*/*") if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "export" / "ema.safetensors").exists() and list((job / "tb").glob("events.*"))


@pytest.mark.parametrize("experiment", ["quickstart", "sidewalk256", "sidewalk1024", "finetune_cfg"])
def test_every_experiment_composes_and_passes_the_checks(tmp_path, experiment):
    from sdm.core.configs import compose
    from sdm.training.config import check_train_config
    from sdm.training.fit import register_resolvers

    register_resolvers()
    overrides = [f"experiment={experiment}", "hydra/launcher=slurm"]
    if experiment == "finetune_cfg":
        overrides += ["init_from=runs/some-run", "trainer.devices=1"]
    cfg = compose("train", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == cfg.trainer.devices and launcher.nodes == cfg.trainer.num_nodes
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    cfg.output_dir = str(tmp_path)
    check_train_config(cfg)
    if experiment.startswith("sidewalk"):
        assert cfg.trainer.devices == 8 and cfg.optim.lr == 1e-4  # the paper's global batch of 32:
        assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * cfg.trainer.devices == 32
        assert cfg.model.use_checkpoint and cfg.trainer.max_steps == 50000


def test_ckpt_path_auto_resumes_only_when_there_is_something(tmp_path):
    from sdm.training.fit import resolve_ckpt_path

    cfg = OmegaConf.create({"ckpt_path": "auto", "output_dir": str(tmp_path)})
    assert resolve_ckpt_path(cfg) is None
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(cfg) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_ckpt_path(OmegaConf.create({"ckpt_path": "last", "output_dir": str(tmp_path / "x")}))


@pytest.mark.parametrize(
    ("override", "key"),
    [("trainer.max_steps=abc", "trainer.max_steps"), ("diffusion.schedule=quadratic", "diffusion.schedule"),
     ("diffusion.prediction_type=x0", "diffusion.prediction_type"), ("trainer.num_nodes=2", "run_dir")],
)
def test_more_bad_settings_name_their_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        train(compose_train(tmp_path / "run", override))


def test_compile_keeps_checkpoint_keys(tmp_path):
    cfg = compose_train(tmp_path, "compile=true")
    compiled = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    plain = SDMModule(OmegaConf.to_container(compose_train(tmp_path), resolve=True))
    assert compiled.unet._compiled_call_impl is not None  # compile=true did compile
    assert plain.unet._compiled_call_impl is None
    assert set(compiled.state_dict()) == set(plain.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    plain.load_state_dict(compiled.state_dict(), strict=True)  # a compiled run's checkpoint loads plainly


def test_gradient_accumulation_updates_ema_per_optimizer_step(tmp_path):
    out, _ = run_train(tmp_path, "accumulate", "trainer.accumulate_grad_batches=2", "trainer.max_steps=4",
                       "validation.every_n_steps=2")
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert int(ckpt["state_dict"]["ema.n_averaged"]) == 4  # one EMA update per optimizer step
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert batches > 4  # several batches per step (Lightning also steps at an epoch's end)


def test_finetune_without_init_from_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs init_from="):
        train(compose_train(tmp_path / "ft", "experiment=finetune_cfg", "data.size=[32,32]"))
    assert not (tmp_path / "data-cache").exists()


def test_bf16_falls_back_to_float32_on_a_cpu_without_native_bf16(tmp_path, monkeypatch, capsys):
    from sdm.training import fit as training

    cfg = compose_train(tmp_path, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu")
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training.effective_precision(cfg) == "32-true"
    assert "no native bf16" in capsys.readouterr().out
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.effective_precision(cfg) == "bf16-mixed"
    cfg.trainer.precision = "32-true"
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training.effective_precision(cfg) == "32-true"
    assert isinstance(training.cpu_has_bf16(), bool)
