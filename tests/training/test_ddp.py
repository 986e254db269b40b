"""Two-process DDP on the CPU (gloo): it trains as one process with the same global batch,
keeps the EMA identical on both ranks, writes once, and resumes exactly after a kill or a stop."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch
from helpers.configs import compose_train
from helpers.runs import RESUME, assert_same_run, cli
from safetensors.torch import load_file

from sdm.checkpoint.files import load_checkpoint
from sdm.training.fit import train

DDP = ["strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=4", "optim.eps=1e-3"]
# A single process against 2 ranks: the same samples and draws, gradients summed in another order
# (all-reduce), a batch of 8 run as 2 x 4: float32 rounding only. Adam with eps 1e-8 turns the
# rounding of near-zero gradients into whole +-lr steps (2.9e-4 apart after 10 steps, against
# 4.4e-3 when the ranks drew other noise), so this comparison runs with eps 1e-3: under 1e-5
# apart, against 1.9e-3 with other noise.
SINGLE_VS_DDP_ATOL = 1e-5


def ema_of(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    return {k: v.float() for k, v in state.items() if k.startswith("ema.")}


def assert_ranks_agree(run: Path) -> None:
    ranks = [torch.load(run / f"ema-rank{r}.pt") for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


def writers(run: Path) -> set[str]:
    """The process ids that wrote TensorBoard event files (in their names)."""
    return {re.search(r"\.(\d+)\.\d+$", p.name).group(1) for p in (run / "tb").glob("events.*")}


@pytest.fixture(scope="module")
def ddp_straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = cli(out / "run", out / "cache", *DDP, dump_ema=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run"


@pytest.mark.slow  # two processes for 10 steps, and a single one
def test_two_ranks_train_as_one_process_with_the_same_global_batch(ddp_straight, tmp_path):
    assert_ranks_agree(ddp_straight)
    assert len(writers(ddp_straight)) == 1  # TensorBoard from rank 0 alone
    assert sorted(p.name for p in (ddp_straight / "checkpoints").glob("*.ckpt") if "best" not in p.name) == [
        "last.ckpt"]
    single = tmp_path / "single"
    train(compose_train(single, *RESUME, "data.batch_size=8", "optim.eps=1e-3", cache_dir=tmp_path / "cache"))
    a, b = ema_of(single), ema_of(ddp_straight)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < SINGLE_VS_DDP_ATOL, worst
    assert load_checkpoint(single / "checkpoints" / "last.ckpt")["global_step"] == 10


@pytest.mark.slow  # two processes, stopped and resumed
@pytest.mark.parametrize(("name", "code"), [("SIGKILL", -signal.SIGKILL), ("SIGTERM", 128 + signal.SIGTERM)])
def test_two_ranks_resume_exactly_after_a_kill_or_a_stop(ddp_straight, tmp_path, name, code):
    run = tmp_path / "run"
    stopped = cli(run, tmp_path / "cache", *DDP, die=(name, 7))
    assert stopped.returncode == code, stopped.stderr[-3000:]
    if name == "SIGTERM":  # sent to rank 0 alone: both ranks stop after the same step, 8
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 8
        assert "stopped: SIGTERM after step 8" in stopped.stderr, stopped.stderr[-3000:]
        assert "stopped: SIGTERM (or another stop signal) on another rank after step 8" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    resumed = cli(run, tmp_path / "cache", *DDP, "ckpt_path=last", dump_ema=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_ranks_agree(run)
    assert_same_run(ddp_straight, run)  # weights within 1e-6, the same loss at every step


@pytest.mark.slow  # two spawned processes, stopped and resumed
def test_ddp_spawn_passes_a_stop_on_resumes_exactly_and_exports_as_ddp_does(ddp_straight, tmp_path):
    """`kill <pid>` reaches the launching process only: it passes the signal on, the ranks write
    their checkpoint, and their stop comes back as the project's message and exit code. The resumed
    run then ends as an uninterrupted `ddp` run does, its export included (one test: each spawn
    costs about a minute on 2 cores)."""
    run = tmp_path / "run"
    stopped = cli(run, tmp_path / "cache", *DDP, "strategy=ddp_spawn", die=("SIGTERM", 6, "parent"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    # rank 0 sends it after step 6 and waits until it comes back from the parent: all stop after 7
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 7
    assert "stopped: SIGTERM after step 7" in stopped.stderr, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and not (run / "export").exists()
    resumed = cli(run, tmp_path / "cache", *DDP, "strategy=ddp_spawn", "ckpt_path=last", dump_ema=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_ranks_agree(run)
    assert_same_run(ddp_straight, run)
    exported = load_file(run / "export" / "ema.safetensors")  # written by the main process from rank 0's weights
    ema = ema_of(ddp_straight)
    for key, value in exported.items():
        assert torch.allclose(value.float(), ema[f"ema.module.{key}"], atol=1e-6), key
