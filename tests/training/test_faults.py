"""Faults a long run meets: damaged checkpoints refused by every loader, non-finite weights,
a full disk or a read-only folder named by path, and nothing left behind by a killed writer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.commands import fake_command
from helpers.configs import compose_train
from helpers.processes import leftover_path

from sdm.checkpoint.files import (
    EMA_PREFIX,
    export_ema,
    find_latest_checkpoint,
    load_checkpoint,
    load_ema_weights,
    save_checkpoint_file,
)
from sdm.core.atomic import WriteError, temporary_name
from sdm.core.errors import CheckpointError, ConfigError
from sdm.generation.weights import load_model
from sdm.training.fit import train
from sdm.training.module import DivergedError, SDMModule


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 4-step run with a checkpoint at step 2 and one at step 4 (last.ckpt)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    train(compose_train(out, "trainer.max_steps=4", "checkpoint.every_n_steps=2", "checkpoint.keep_periodic=-1",
                        "validation.every_n_steps=4"))
    return out


def flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 4096]) + data[middle + 4096 :]


def damaged_files(run: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged or foreign copy of the run's last.ckpt, what its refusal says)."""
    folder.mkdir(exist_ok=True)
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    files = {
        "flipped": (flipped(data), "is corrupted: its contents no longer match"),
        "truncated": (data[: len(data) // 2], "not a readable checkpoint"),
        "random": (os.urandom(len(data)), "not a readable checkpoint"),
    }
    out = {name: (folder / f"{name}.ckpt", match) for name, (_, match) in files.items()}
    for name, (content, _) in files.items():
        out[name][0].write_bytes(content)
    torch.save({"state_dict": torch.nn.Linear(2, 2)}, folder / "code.ckpt")
    out["code"] = (folder / "code.ckpt", r"asks to import torch\.nn")
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    wide = dict(checkpoint, state_dict={k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.endswith("out.2.weight")
                                         else v for k, v in checkpoint["state_dict"].items()})
    save_checkpoint_file(wide, folder / "foreign.ckpt")  # intact, but of another model
    out["foreign"] = (folder / "foreign.ckpt", r"does not fit this model.*out\.2\.weight")
    key = next(k for k in checkpoint["state_dict"] if k.startswith(EMA_PREFIX) and k.endswith("weight"))
    poisoned = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
    poisoned[key][0] = float("nan")
    save_checkpoint_file(dict(checkpoint, state_dict=poisoned), folder / "nan.ckpt")
    out["nan"] = (folder / "nan.ckpt", "non-finite weights.*would make black images")
    return out


def test_every_loader_refuses_damaged_foreign_and_non_finite_checkpoints(run, tmp_path):
    for name, (path, match) in damaged_files(run, tmp_path / "bad").items():
        for loader in ("ckpt_path", "init_from"):
            out = tmp_path / f"{loader}-{name}"
            with pytest.raises(CheckpointError, match=match) as refusal:
                train(compose_train(out, f"{loader}={path}"))
            assert str(path) in str(refusal.value), (loader, name)
            assert not out.exists(), "nothing trained, no empty run dir left"
        with pytest.raises(CheckpointError, match=match):
            load_model(path)  # what sample.py reads


def test_a_failed_start_leaves_no_run_dir_but_a_run_keeps_its_own(run, tmp_path):
    out = tmp_path / "new"
    (out / ".hydra").mkdir(parents=True)  # what Hydra writes before train() starts
    (out / ".hydra" / "config.yaml").write_text("seed: 0")
    (out / "train.log").write_text("")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(compose_train(out, f"ckpt_path={tmp_path / 'missing.ckpt'}"))
    assert not out.exists()
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(compose_train(run, f"ckpt_path={run / 'export' / 'ema.safetensors'}"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "export" / "ema.safetensors").is_file()


def test_a_damaged_export_is_refused_and_its_fingerprint_is_never_taken(run, tmp_path):
    export = tmp_path / "export"
    weights, _ = load_ema_weights(run / "checkpoints" / "last.ckpt")
    path = export_ema(weights, load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["cfg"], export)
    intact = load_model(export)
    good = path.read_bytes()
    for damage, message in ((flipped(good), "ema.safetensors' is corrupted"),
                            (good[: len(good) // 2], "not a readable safetensors file"),
                            (good[:1000], "not a readable safetensors file")):
        path.write_bytes(damage)
        with pytest.raises(CheckpointError, match=message):  # sample.py's loader
            load_model(export)
        with pytest.raises(CheckpointError, match=message):  # init_from's
            load_ema_weights(export)
    # a digest that does not match the tensors (edited metadata, or tensors rewritten by a tool)
    from safetensors.torch import load_file, save_file

    from sdm.core.integrity import DIGEST_KEY

    path.write_bytes(good)
    tensors = load_file(path)
    save_file(tensors, str(path), metadata={DIGEST_KEY: "0" * 64})
    with pytest.raises(CheckpointError, match="is corrupted"):
        load_model(export)
    save_file(tensors, str(path))  # no digest at all (written by another tool): taken as it is
    assert load_model(export).fingerprint == intact.fingerprint


def test_resume_skips_a_damaged_last_checkpoint_and_replaces_it(run, tmp_path, capsys):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(flipped(last.read_bytes()))
    dead = leftover_path(last, "partial")  # a checkpoint write killed mid-way
    dead.write_bytes(b"PK half a checkpoint")
    live = temporary_name(copy / "checkpoints" / "step.ckpt")  # this process is alive: still writing
    live.write_bytes(b"")
    elsewhere = copy / "checkpoints" / f".step.ckpt.partial-another_host-{os.getpid()}-abc123"  # can't tell
    elsewhere.write_bytes(b"")
    assert find_latest_checkpoint(copy).name == "step=0000004.ckpt"
    train(compose_train(copy, "trainer.max_steps=6", "checkpoint.every_n_steps=2", "checkpoint.keep_periodic=-1",
                        "validation.every_n_steps=4", "ckpt_path=last"))
    said = capsys.readouterr().out
    assert f"skipping {last}: '{last}' is corrupted" in said and f"removed {dead}" in said
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert "last-v1.ckpt" not in names and not dead.exists() and live.exists() and elsewhere.exists()
    assert load_checkpoint(last)["global_step"] == 6  # resumed from step 4, replaced the damaged file


def test_ckpt_path_auto_refuses_to_start_over_when_every_checkpoint_is_damaged(run, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    best = [p.name for p in (copy / "checkpoints").glob("best-*.ckpt")]
    assert best  # intact, but no resume point: not listed as damaged, never resumed from
    for path in (copy / "checkpoints").glob("*.ckpt"):
        if not path.name.startswith("best-"):
            path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="none of them is usable") as refused:
        train(compose_train(copy, "ckpt_path=auto"))
    assert "holds last.ckpt, step=0000002.ckpt, step=0000004.ckpt but" in str(refused.value)
    # without run_dir, ckpt_path=last takes the newest run that has checkpoints, damaged or not:
    # never an older run behind the user's back
    from sdm.training.fit import _run_dir

    base = tmp_path / "runs"
    subprocess.run(["mkdir", "-p", str(base)], check=True)
    subprocess.run(["cp", "-r", str(run), str(base / "2026-01-01_00-00-00")], check=True)
    subprocess.run(["cp", "-r", str(copy), str(base / "2026-01-02_00-00-00")], check=True)
    (base / "2026-01-03_00-00-00" / ".hydra").mkdir(parents=True)  # a start that wrote no checkpoint
    assert _run_dir(None, "last", str(base)) == str(base / "2026-01-02_00-00-00")


def test_a_read_failure_is_not_taken_for_damage(run, monkeypatch):
    """An NFS hiccup or a failed allocation says nothing about the file: skipping it for an older
    checkpoint would silently redo steps, so the failure is named instead."""
    import errno

    from sdm.checkpoint.files import CheckpointReadError

    real = torch.load
    for failure in (OSError(errno.ESTALE, "Stale file handle"), OSError(errno.EIO, "Input/output error"),
                    MemoryError()):
        def flaky(path, *args, failure=failure, **kwargs):
            if Path(path).name == "last.ckpt":
                raise failure
            return real(path, *args, **kwargs)

        monkeypatch.setattr(torch, "load", flaky)
        with pytest.raises(CheckpointReadError, match=r"could not read .*last\.ckpt.*not a sign that the file"):
            find_latest_checkpoint(run)
    monkeypatch.setattr(torch, "load", real)
    assert find_latest_checkpoint(run).name == "last.ckpt"


def dev_full_temporary(monkeypatch) -> None:
    """Every checkpoint write goes to /dev/full, which answers each write with ENOSPC, on a disk
    that still has room: the patched write of the issue (the real full disk is a tmpfs below)."""
    import sdm.core.atomic

    original = sdm.core.atomic.temporary_name

    def to_dev_full(path, kind="partial"):
        tmp = original(path, kind)
        if tmp.name.startswith(".last.ckpt") or tmp.name.startswith(".step="):
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(sdm.core.atomic, "temporary_name", to_dev_full)


def test_a_failed_write_names_the_folder_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    save_checkpoint_file({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)
    dev_full_temporary(monkeypatch)
    with pytest.raises(WriteError, match=f"could not write last.ckpt in {tmp_path / 'checkpoints'}"):
        save_checkpoint_file({"global_step": 2, "state_dict": {"w": torch.ones(3)}}, path)
    assert load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_checkpoint_write_during_training_is_named(tmp_path, monkeypatch):
    dev_full_temporary(monkeypatch)
    with pytest.raises(WriteError, match=f"could not write last.ckpt in {tmp_path / 'run' / 'checkpoints'}"):
        train(compose_train(tmp_path / "run", "trainer.max_steps=2", "checkpoint.every_n_steps=2"))


def test_a_full_disk_and_a_read_only_folder_are_named_during_training(tmp_path, tmpfs):
    full = tmpfs("full/checkpoints", size="64k")  # the run dir has room, its checkpoint folder not
    with pytest.raises(WriteError, match=f"the disk holding {full} is full or over quota"):
        train(compose_train(full.parent, "trainer.max_steps=2", "checkpoint.every_n_steps=2"))
    assert list(full.iterdir()) == []  # no half-written checkpoint left
    read_only = tmpfs("ro/checkpoints", read_only=True)
    with pytest.raises(WriteError, match=f"{read_only} is not writable"):
        train(compose_train(read_only.parent, "trainer.max_steps=2", "checkpoint.every_n_steps=2"))
    assert not (read_only.parent / "tb").exists(), "refused before training started"


@pytest.mark.parametrize(
    ("override", "message"),
    [("data.size=0", r"data\.size=0 is invalid: expected an int or \[height, width\], each side in 8\.\.4096"),
     ("data.size=[64]", r"data\.size=\[64\] is invalid"),
     ("model.model_channels=40", r"model=tiny cannot be built.*divisible by 32, got 40"),
     ("data.num_workers=-1", r"data\.num_workers=-1 is invalid: expected an integer >= 0"),
     ("trainer.accelerator=gpu", r"trainer\.accelerator='gpu' is invalid.*no visible GPU"),
     ("optim.lr=1e38", r"optim\.lr=1e\+38 is invalid: expected a learning rate in \(0, 1\]"),
     ("optim.lr=1e12", r"optim\.lr=1000000000000\.0 is invalid"),
     ("loss.diverged_above=0", r"loss\.diverged_above=0 is invalid")],
)
def test_settings_that_used_to_fail_deep_are_named_before_any_work(tmp_path, override, message):
    if override.startswith("trainer.accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=message):
        train(compose_train(tmp_path / "run", override))
    assert not (tmp_path / "data-cache").exists() and not (tmp_path / "run").exists()


def test_a_diverging_loss_stops_the_run_at_its_step(tmp_path, monkeypatch):
    original = SDMModule.diffusion_losses

    def exploding(self, batch, generator, drop_prob, network):
        losses, t = original(self, batch, generator, drop_prob, network)
        if self.training and self.global_step == 5:
            losses = {k: v * 1e28 for k, v in losses.items()}  # what lr 1e12 did: finite, absurd
        return losses, t

    monkeypatch.setattr(SDMModule, "diffusion_losses", exploding)
    with pytest.raises(DivergedError, match=r"training diverged: loss \d.*e\+2\d on rank 0.* at step 5"):
        train(compose_train(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4


class FakeSubmititHandler:
    """Stands in for submitit's SignalHandler: the module name is how StopSignals knows it."""

    __module__ = "submitit.core.job_environment"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def checkpoint_and_try_requeue(self, signum, frame) -> None:
        self.calls.append(signum)


def test_stop_signals_are_recorded_not_fatal_and_handed_on_to_submitit_only(capsys):
    import signal

    from sdm.core.stopping import StopSignals

    submitit = FakeSubmititHandler()
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    signal.signal(signal.SIGUSR2, submitit.checkpoint_and_try_requeue)
    try:
        signals = StopSignals()
        signals.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the process lives on; only the first one counts
        assert signals.received == signal.SIGUSR1
        signals.hand_on("stopped")
        assert submitit.calls == []  # SIGUSR1 had no submitit handler: the caller exits itself
        signals.received = signal.SIGUSR2
        signals.hand_on("stopped")
        assert submitit.calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) == submitit.checkpoint_and_try_requeue  # restored first
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        # requeues used up: submitit raises instead of requeueing; the run still stops cleanly
        from submitit.core.utils import UncompletedJobError

        class Refusing(FakeSubmititHandler):
            __module__ = FakeSubmititHandler.__module__

            def checkpoint_and_try_requeue(self, signum, frame) -> None:
                raise UncompletedJobError("Job not requeued because: timed-out too many times.")

        signal.signal(signal.SIGUSR2, Refusing().checkpoint_and_try_requeue)
        last = StopSignals()
        last.install()
        last.received = signal.SIGUSR2
        last.hand_on("SIGUSR2 after step 9")
        said = capsys.readouterr().err
        assert "submitit did not requeue the job (Job not requeued because: timed-out too many times.)" in said
        assert "hydra.sweep.dir=<this sweep dir>" in said
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_failed_job_is_reported_without_the_launcher_s_traceback(tmp_path, capsys):
    from submitit.core.utils import UncompletedJobError

    from sdm.cluster.launcher import report_failed_job

    report = "\n".join(f"line {i}" for i in range(100)) + "\nJob not requeued because: timed-out too many times."
    with pytest.raises(SystemExit) as code:
        report_failed_job(UncompletedJobError(report), tmp_path / "sweep")
    said = capsys.readouterr().err
    assert code.value.code == 1 and said.startswith("error: a SLURM job did not complete (UncompletedJobError)")
    assert "timed-out too many times" in said and "line 76\n  line 77" in said and "line 75" not in said
    assert f"hydra.sweep.dir={tmp_path / 'sweep'}" in said and "Traceback" not in said


def test_a_job_that_sacct_does_not_know_is_judged_by_squeue(tmp_path, monkeypatch, request):
    """Without accounting, a job whose killed task wrote no result must still end the wait."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    from sdm.cluster.watch import GONE, accounting_off, install_queue_fallback, queue_states

    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "scontrol", "AccountingStorageType   = accounting_storage/slurmdbd\n")
    accounting_off.cache_clear()
    request.addfinalizer(accounting_off.cache_clear)  # the real cluster's answer for later tests
    fake_command(bin_dir, "sacct", "", "Slurm accounting storage is disabled\n", code=1)
    fake_command(bin_dir, "squeue", "12_0|FAILED\n12_1|RUNNING\n13|PENDING\n14|CANCELLED by 0\n15|SUSPENDED\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert queue_states(["15"]) == {"15": "RUNNING"}  # a state submitit does not know: still to come
    fake_command(bin_dir, "squeue", "12_0|FAILED\n12_1|RUNNING\n13|PENDING\n14|CANCELLED by 0\n")
    assert queue_states(["12_0", "12_1", "13", "14", "15"]) == {
        "12_0": "FAILED", "12_1": "RUNNING", "13": "PENDING", "14": "CANCELLED", "15": GONE}
    assert (bin_dir / "squeue.calls").read_text().splitlines()[-1].split() == [  # one call, main ids, each task
        "-h", "-r", "--states=all", "-o", "%i|%T", "-j", "12,13,14,15"]

    # from submitit's own update (another test may have installed the fallback), restored afterwards
    monkeypatch.setattr(SlurmInfoWatcher, "update", getattr(SlurmInfoWatcher.update, "__wrapped__",
                                                            SlurmInfoWatcher.update))
    install_queue_fallback()
    install_queue_fallback()  # twice is once
    (bin_dir / "squeue.calls").unlink()
    watcher = SlurmInfoWatcher(delay_s=1)
    assert not watcher.is_done("13", mode="force")
    assert len((bin_dir / "squeue.calls").read_text().splitlines()) == 1  # asked once per update
    assert watcher.is_done("12_0", mode="force") and watcher.get_state("12_0", mode="cache") == "FAILED"
    assert watcher._info_dict["12_0"] == {"JobID": "12_0", "State": "FAILED", "Source": "squeue"}
    assert not watcher.is_done("12_1", mode="force") and not watcher.is_done("13", mode="force")
    assert not watcher.is_done("15", mode="force")  # never listed (another cluster's?): waited for
    assert not watcher.is_done("14_0", mode="force") and "14_0" not in watcher._finished  # listed as 14, not 14_0
    fake_command(bin_dir, "squeue", "12_1|RUNNING\n13|RUNNING\n15|RUNNING\n")
    assert not watcher.is_done("15", mode="force")
    fake_command(bin_dir, "squeue", "12_1|RUNNING\n13|RUNNING\n")
    assert watcher.is_done("15", mode="force")  # listed once, then purged from squeue, unknown to sacct: ended
    fake_command(bin_dir, "squeue", "12_1|FAILED\n13|RUNNING\n")  # the same jobs, later: asked again
    assert watcher.is_done("12_1", mode="force") and not watcher.is_done("13", mode="force")

    # squeue that cannot reach the controller concludes nothing; an invalid id is a purged job
    fake_command(bin_dir, "squeue", "", "slurm_load_jobs error: Unable to contact slurm controller\n", code=1)
    assert queue_states(["16"]) == {} and not SlurmInfoWatcher(delay_s=1).is_done("16", mode="force")
    fake_command(bin_dir, "squeue", "", "slurm_load_jobs error: Invalid job id specified\n", code=1)
    assert queue_states(["16"]) == {"16": GONE}

    # a cluster with accounting: sacct's answer stands, squeue is not asked
    fake_command(bin_dir, "sacct", "JobID|State|NodeList\n17|RUNNING|n1\n")
    fake_command(bin_dir, "squeue", "17|FAILED\n")
    calls = bin_dir / "squeue.calls"
    calls.unlink()
    assert not SlurmInfoWatcher(delay_s=1).is_done("17", mode="force") and not calls.exists()
    fake_command(bin_dir, "sacct", "JobID|State|NodeList\n13|RUNNING|n1\n")  # sacct catches up on job 13:
    assert not watcher.is_done("13", mode="force")  # its word replaces squeue's: only 14_0 is asked about
    assert [line.split()[-1] for line in calls.read_text().splitlines()] == ["14"]

    # a cluster configured without accounting: sacct is not called (it would print an error at every poll)
    fake_command(bin_dir, "scontrol", "AccountingStorageType   = accounting_storage/none\n")
    accounting_off.cache_clear()
    (bin_dir / "sacct.calls").unlink()
    fake_command(bin_dir, "squeue", "18|TIMEOUT\n")
    quiet = SlurmInfoWatcher(delay_s=1)
    for line in ("AccountingStorageType = (null)\n", "AccountingStorageType = accounting_storage/slurmdbd\n"):
        fake_command(bin_dir, "scontrol", line)  # newer Slurm says (null) where 22.05 says .../none
        accounting_off.cache_clear()
        assert accounting_off() is ("null" in line)
    fake_command(bin_dir, "scontrol", "AccountingStorageType   = accounting_storage/none\n")
    accounting_off.cache_clear()
    assert quiet.is_done("18", mode="force") and quiet.is_done("18", mode="force")  # polled again: same answer
    assert not (bin_dir / "sacct.calls").exists()


def test_a_spawned_rank_s_error_comes_back_as_the_project_s_error_with_its_exit_code():
    import signal

    from sdm.core.atomic import WriteError
    from sdm.core.errors import SDMError
    from sdm.core.stopping import StopSignals, TrainingStopped, error_from_worker

    def report(last: str) -> str:  # what torch.multiprocessing puts in ProcessRaisedException
        return f"\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n  " \
               f"File \"x.py\", line 1, in f\n    raise Boom\n{last}\n"

    stopped = error_from_worker(report("sdm.core.stopping.TrainingStopped: SIGUSR2 after step 8: continue with ..."))
    assert isinstance(stopped, TrainingStopped) and stopped.exit_code == 128 + signal.SIGUSR2
    assert str(stopped) == "SIGUSR2 after step 8: continue with ..."
    other_rank = error_from_worker(report("sdm.core.stopping.TrainingStopped: SIGTERM (or another stop signal) on x"))
    assert other_rank.exit_code == 128 + signal.SIGTERM
    full = error_from_worker(report("sdm.core.atomic.WriteError: could not write /x:\n  the disk is full"))
    assert type(full) is WriteError and str(full) == "could not write /x:\n  the disk is full"
    assert full.exit_code == 2
    assert error_from_worker(report("ValueError: not ours")) is None
    assert error_from_worker(report("sdm.core.errors.functools: not an error class")) is None
    assert error_from_worker(report("sdm.nowhere.Thing: unknown module")) is None
    assert issubclass(type(error_from_worker(report("sdm.core.errors.ConfigError: x"))), SDMError)

    # the launcher passes each stop signal on to its ranks (here a child that dies of it)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        child = subprocess.Popen(["sleep", "30"])
        forwarding = StopSignals(forward_to=lambda: [child.pid])
        forwarding.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM and forwarding.received == signal.SIGTERM
        forwarding.uninstall()
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_submission_problems_are_named_from_the_job_and_the_cluster():
    from omegaconf import OmegaConf

    from sdm.cluster.launcher import cluster_problems, gpu_count, job_problems, parse_sinfo

    def one(cpus, memory_mb, gpus, nodes, default=False):
        return {"default": default, "groups": [{"cpus": cpus, "memory_mb": memory_mb, "gpus": gpus, "nodes": nodes}]}

    assert parse_sinfo("gpu|64|512000|gpu:a100:8(S:0-1)|4\nlocal*|2+|23081|(null)|1\n") == {
        "gpu": one(64, 512000, 8, 4), "local": one(2, 23081, 0, 1, default=True)}
    assert [gpu_count(g) for g in ("gpu", "gpu:2", "gpu:a100:4(IDX:0-3),gpu:v100:2", "(null)", "shard:8")] == [
        1, 2, 6, 0, 0]

    train_job = OmegaConf.create({"trainer": {"devices": 8, "num_nodes": 2}})
    fits = {"tasks_per_node": 8, "nodes": 2, "gpus_per_node": 8, "cpus_per_task": 8, "mem_gb": 256}
    assert job_problems(fits, train_job) == []
    assert job_problems({**fits, "tasks_per_node": 1}, train_job) == [
        "hydra.launcher.tasks_per_node=1 but trainer.devices=8: Lightning needs one task per device"]
    assert job_problems({**fits, "nodes": 1}, train_job) == ["hydra.launcher.nodes=1 but trainer.num_nodes=2"]
    assert "give the number of devices" in job_problems(fits, OmegaConf.create({"trainer": {"devices": "auto",
                                                                                           "num_nodes": 2}}))[0]
    assert job_problems({"tasks_per_node": 1, "nodes": 1}, OmegaConf.create({"devices": 8})) == []
    assert "sample.py runs as one task" in job_problems(fits, OmegaConf.create({"devices": 8}))[0]
    cluster = {"gpu": one(64, 512_000, 8, 4), "cpu": one(32, 128_000, 0, 10, default=True)}
    assert cluster_problems({**fits, "partition": "gpu"}, cluster) == []
    assert cluster_problems({**fits, "partition": "a100"}, cluster) == [
        "hydra.launcher.partition: partition 'a100' does not exist on this cluster; it has gpu, cpu"]
    on_cpu = cluster_problems({**fits, "partition": None}, cluster)  # the default partition: cpu
    assert on_cpu == [
        "hydra.launcher.gpus_per_node=8 but the nodes of partition 'cpu' have no GPUs; for CPU training pass "
        "trainer.accelerator=cpu",
        "hydra.launcher.cpus_per_task x tasks_per_node = 64 CPUs but the nodes of partition 'cpu' have 32",
        "hydra.launcher.mem_gb=256 but the nodes of partition 'cpu' have 125 GB"]
    assert cluster_problems({**fits, "partition": "gpu", "nodes": 5}, cluster) == [
        "hydra.launcher.nodes=5 but partition 'gpu' has 4 node(s) that fit the job"]
    assert cluster_problems({**fits, "partition": "gpu", "gpus_per_node": 9}, cluster)[0].startswith(
        "hydra.launcher.gpus_per_node=9 but the nodes of partition 'gpu' have 8 GPUs")
    assert "no default one" in cluster_problems({**fits, "partition": None}, {"gpu": cluster["gpu"]})[0]
    # a partition of two node types (a line each in sinfo): a job's nodes must each fit one type
    mixed = parse_sinfo("mixed|64|256000|gpu:a100:4|6\nmixed|128|1024000|gpu:h100:8(S:0-1)|2\n")
    assert len(mixed["mixed"]["groups"]) == 2
    eight = {**fits, "partition": "mixed", "mem_gb": 256}
    assert cluster_problems(eight, mixed) == []  # the 2 H100 nodes
    assert cluster_problems({**eight, "nodes": 3}, mixed) == [
        "hydra.launcher.nodes=3 but partition 'mixed' has 2 node(s) that fit the job"]
    four = {**eight, "gpus_per_node": 4, "tasks_per_node": 4, "mem_gb": 200, "nodes": 8}
    assert cluster_problems(four, mixed) == []  # 6 A100 + 2 H100 nodes
    assert cluster_problems({**eight, "gpus_per_node": 16}, mixed) == [
        "hydra.launcher.gpus_per_node=16 but the nodes of partition 'mixed' have 8 GPUs; for CPU training pass "
        "trainer.accelerator=cpu"]


def test_ranks_that_would_resume_from_different_checkpoints_all_stop():
    from types import SimpleNamespace

    from sdm.training.callbacks import SameResumePoint

    def trainer(rank: int, rank0_path: str, world: int = 2):
        decisions = []

        def reduce_boolean_decision(decision, all=True):  # noqa: A002 - Lightning's keyword
            decisions.append(decision)
            return decision  # as if this rank's decision were every rank's

        strategy = SimpleNamespace(broadcast=lambda value, src: rank0_path if world > 1 else value,
                                   reduce_boolean_decision=reduce_boolean_decision)
        return SimpleNamespace(world_size=world, global_rank=rank, strategy=strategy, decisions=decisions)

    agreeing = trainer(1, "/runs/a/checkpoints/last.ckpt")
    SameResumePoint("/runs/a/checkpoints/last.ckpt").setup(agreeing, None, "fit")
    assert agreeing.decisions == [False]
    with pytest.raises(CheckpointError, match=r"rank 1 would resume from /runs/a/checkpoints/step=0000004.ckpt but "
                                              r"rank 0 from /runs/a/checkpoints/last.ckpt: the nodes do not see"):
        SameResumePoint("/runs/a/checkpoints/step=0000004.ckpt").setup(trainer(1, "/runs/a/checkpoints/last.ckpt"),
                                                                    None, "fit")
    with pytest.raises(CheckpointError, match=r"rank 1 would resume from nothing \(a fresh start\) but rank 0 from"):
        SameResumePoint(None).setup(trainer(1, "/runs/a/checkpoints/last.ckpt"), None, "fit")
    alone = trainer(0, "", world=1)
    SameResumePoint(None).setup(alone, None, "fit")
    assert alone.decisions == []  # one process: nothing to agree on
