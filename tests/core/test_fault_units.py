"""Fast checks of the fault handling's small parts, without a cluster, a full disk or a signal:
write-failure wording, leftovers, content digests, and the SLURM submission checks in front of
Hydra's launcher (a fake sinfo on PATH, a fake launcher)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.commands import fake_command

from sdm.core.atomic import (
    WriteError,
    _is_io_failure,
    describe_write_failure,
    ensure_writable,
    remove_leftovers,
    temporary_name,
    write_atomically,
    write_json,
)
from sdm.core.integrity import content_digest

MiB = 2**20


def disk_with(monkeypatch, free: int) -> None:
    monkeypatch.setattr("sdm.core.atomic.shutil.disk_usage", lambda path: SimpleNamespace(free=free))


def test_a_write_failure_is_described_by_its_cause_and_folder(tmp_path, monkeypatch):
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"  # its folder does not exist yet
    disk_with(monkeypatch, 5 * MiB + MiB // 2)
    full = f"the disk holding {target.parent} is full or over quota (5.5 MiB free): could not write last.ckpt. Free space or " \
           "point the run elsewhere"
    for err in (OSError(errno.ENOSPC, "x"), OSError(errno.EDQUOT, "x"), RuntimeError("No space left on device"),
                RuntimeError("Disk quota exceeded")):
        assert describe_write_failure(target, err) == full, err
    other = OSError(errno.EIO, "Input/output error")
    assert describe_write_failure(target, other) == f"could not write last.ckpt in {target.parent}: {other}"
    assert describe_write_failure(target, RuntimeError("No space")) .startswith("could not write")
    disk_with(monkeypatch, MiB - 1)  # whatever the error says, a disk with under 1 MiB free is full
    assert describe_write_failure(target, other).startswith(f"the disk holding {target.parent} is full")
    disk_with(monkeypatch, MiB)
    assert describe_write_failure(target, other).startswith("could not write")
    for code in (errno.EROFS, errno.EACCES, errno.EPERM):
        assert describe_write_failure(target, OSError(code, "x")) == (
            f"{target.parent} is not writable (read-only or no permission): could not write last.ckpt")

    # the nearest existing folder decides whether the place is writable (root ignores modes: mocked)
    monkeypatch.setattr("sdm.core.atomic.os.access", lambda path, mode: Path(path) != tmp_path)
    assert "is not writable" in describe_write_failure(target, other)
    seen = []
    monkeypatch.setattr("sdm.core.atomic.os.access", lambda path, mode: seen.append(Path(path)) or True)
    monkeypatch.setattr("sdm.core.atomic.shutil.disk_usage", lambda path: seen.append(Path(path)) or SimpleNamespace(
        free=10 * MiB))
    describe_write_failure(target, other)
    assert seen == [tmp_path, tmp_path]


@pytest.mark.parametrize("text", ["[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed",
                                  "unexpected pos 64 vs 0",
                                  "PytorchStreamWriter failed writing file data/0: file write failed",
                                  "basic_ios::clear: iostream error", "No space left on device",
                                  "Disk quota exceeded", "Read-only file system", "I/O error"])
def test_library_errors_that_mean_a_failed_write_become_write_errors(tmp_path, text):
    assert _is_io_failure(RuntimeError(text))

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError(text)

    with pytest.raises(WriteError, match=str(tmp_path)):
        write_atomically(tmp_path / "f.bin", failing)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_other_errors_pass_through_and_a_good_write_leaves_one_file(tmp_path):
    assert not _is_io_failure(RuntimeError("shape mismatch"))

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise ValueError("not a write failure")

    (tmp_path / "f.bin").write_bytes(b"old")
    with pytest.raises(ValueError, match="not a write failure"):
        write_atomically(tmp_path / "f.bin", failing)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"old"
    write_atomically(tmp_path / "f.bin", lambda tmp: tmp.write_bytes(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"new"
    ensure_writable(tmp_path / "deep" / "er")
    assert (tmp_path / "deep" / "er").is_dir() and list((tmp_path / "deep" / "er").iterdir()) == []


def test_leftovers_of_dead_writers_on_this_host_go_and_no_others(tmp_path):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temporary_name(tmp_path / "last.ckpt")
    assert mine.name.startswith(".last.ckpt.partial-") and mine.name.split("-")[-2] == str(os.getpid())
    assert len(mine.name.split("-")[-1]) == 6 and temporary_name(tmp_path / "last.ckpt") != mine
    host = mine.name.split(".partial-")[1].rsplit("-", 2)[0]
    dead_file = tmp_path / f".last.ckpt.partial-{host}-{dead.pid}-abc123"
    dead_dir = tmp_path / f".cache.tmp-{host}-{dead.pid}-abc123"
    (dead_dir / "inner").mkdir(parents=True)
    (dead_dir / "inner" / "x").write_bytes(b"x")
    alive = tmp_path / f".last.ckpt.partial-{host}-{os.getpid()}-abc123"
    elsewhere = tmp_path / f".last.ckpt.partial-otherhost-{dead.pid}-abc123"
    for path in (dead_file, alive, elsewhere):
        path.write_bytes(b"x")
    assert remove_leftovers(tmp_path) == [dead_file]
    assert remove_leftovers(tmp_path, kind="tmp", name="cache") == [dead_dir]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])


def test_a_live_writer_is_only_looked_up_never_signalled(tmp_path):
    """remove_leftovers asks whether a writer lives with signal 0: a live writer on this host (a
    running train.py) keeps its temporary and is not disturbed, whatever it does on a signal."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_DFL)\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"  # its default handlers are in place: any real signal ends it
        host = temporary_name(tmp_path / "last.ckpt").name.split(".partial-")[1].rsplit("-", 2)[0]
        alive = tmp_path / f".last.ckpt.partial-{host}-{child.pid}-abc123"
        alive.write_bytes(b"x")
        assert remove_leftovers(tmp_path) == [] and alive.exists()
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # still running
    finally:
        child.kill()
        child.wait()


def test_json_is_written_whole_indented_and_with_paths_as_text(tmp_path):
    """Manifests, records and reports: two-space indented JSON that people read, paths (which
    json cannot hold) as their text, replacing the old file in one rename with no temporary left."""
    target = tmp_path / "record.json"
    target.write_text("old")
    write_json(target, {"out_dir": tmp_path / "samples", "steps": [1, 2], "done": True})
    assert target.read_text() == (f'{{\n  "out_dir": "{tmp_path / "samples"}",\n  "steps": [\n    1,\n    2\n  ],\n'
                                  '  "done": true\n}')
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_the_content_digest_tells_every_nesting_apart():
    t = torch.arange(4.0)
    values = [{"a": 1}, {"a": "1"}, {"b": 1}, [1, 2], (1, 2), [[1], 2], [1, [2]], [1], [[1]], {"a": [1]},
              {"a": 1, "b": 2}, [{"a": 1}, {"b": 2}], [{"a": 1, "b": 2}], {"a": t}, {"a": t.double()},
              {"a": t.reshape(2, 2)}, {"a": t + 1}, [t], (t,), None, [None], {"a": None}, 1, 1.0, "1"]
    digests = [content_digest(v) for v in values]
    assert len(set(digests)) == len(values)
    assert content_digest({"a": [1, (2, t)]}) == content_digest({"a": [1, (2, t.clone())]})
    # checkpoints store this digest: a change of the scheme would refuse every earlier file as damaged
    pinned = {"a": [1, (2.0, "x", None)], "t": torch.arange(3, dtype=torch.float32), "b": {"c": True}}
    assert content_digest(pinned) == "7b97de9ad45ec960f75de3710a2ac2e770f3d187112ebaad50d83a82cf941957"


# --- the checks in front of Hydra's SLURM launcher -------------------------------------------

def test_gpus_per_node_follow_the_devices_and_the_accelerator():
    from omegaconf import OmegaConf

    from sdm.cluster.launcher import gpus_per_node_for

    def gpus(**cfg):
        return gpus_per_node_for(OmegaConf.create(cfg))

    assert gpus(trainer={"accelerator": "gpu", "devices": 8}) == 8
    assert gpus(trainer={"accelerator": "cpu", "devices": 2}) == 0
    assert gpus(trainer={"accelerator": "auto", "devices": "auto"}) == 1
    assert gpus(device="cuda", devices=4) == 4  # sample.py
    assert gpus(device="cpu", devices=4) == 0
    assert gpus(device="cuda") == 1


def test_partitions_are_read_from_sinfo_and_none_without_it(tmp_path, monkeypatch):
    from sdm.cluster.launcher import partitions

    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "sinfo", "gpu|64+|512000+|gpu:a100:8|4\nlocal*|2|23081|(null)|1\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    found = partitions()
    assert found["gpu"]["groups"] == [{"cpus": 64, "memory_mb": 512000, "gpus": 8, "nodes": 4}]
    assert found["local"]["default"] and not found["gpu"]["default"]
    assert (bin_dir / "sinfo.calls").read_text().split() == ["-h", "-o", "%P|%c|%m|%G|%D"]
    fake_command(bin_dir, "sinfo", "", "sinfo: error: Unable to contact slurm controller", code=1)
    assert partitions() is None
    (bin_dir / "sinfo").unlink()
    assert partitions() is None


def fake_launcher(tmp_path: Path, configs: dict[str, dict], **params):
    """What check_submission reads of Hydra's SlurmLauncher: its params, config and loader."""
    from omegaconf import OmegaConf

    sweep = tmp_path / "multirun" / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})

    def load_sweep_config(master, overrides):
        assert master is config
        return OmegaConf.create(configs[overrides[0]])

    loader = SimpleNamespace(load_sweep_config=load_sweep_config)
    return SimpleNamespace(params={"tasks_per_node": 1, "nodes": 1, "gpus_per_node": None, "partition": "local",
                                   **params},
                           config=config, hydra_context=SimpleNamespace(config_loader=loader)), sweep


def test_unset_launcher_and_trainer_values_take_their_defaults():
    from omegaconf import OmegaConf

    from sdm.cluster.launcher import cluster_problems, gpu_count, job_problems, parse_sinfo

    no_nodes = OmegaConf.create({"trainer": {"devices": 2}})  # trainer.num_nodes unset: 1
    assert job_problems({"tasks_per_node": 2, "nodes": 1}, no_nodes) == []
    assert job_problems({"tasks_per_node": 2, "nodes": 2}, no_nodes) == [
        "hydra.launcher.nodes=2 but trainer.num_nodes=1"]
    assert "sample.py runs as one task" in job_problems({"tasks_per_node": 1, "nodes": 2},
                                                        OmegaConf.create({"devices": 1}))[0]
    assert gpu_count("gpu:a100") == 1
    one_node = parse_sinfo("p*|4|8192|gpu:1|1\n")
    # unset cpus_per_task, nodes and gpus_per_node: 1 CPU, 1 node, no GPU; memory may fill the node
    assert cluster_problems({"tasks_per_node": 4, "mem_gb": 8}, one_node) == []
    assert cluster_problems({"tasks_per_node": 5}, one_node) == [
        "hydra.launcher.cpus_per_task x tasks_per_node = 5 CPUs but the nodes of partition 'p' have 4"]
    assert cluster_problems({"tasks_per_node": 4, "cpus_per_task": 2}, one_node)[0].endswith("= 8 CPUs but the "
                                                                                            "nodes of partition 'p' have 4")
    assert cluster_problems({"tasks_per_node": None, "cpus_per_task": 4, "gpus_per_node": None}, one_node) == []
    assert cluster_problems({"gpus_per_node": 2}, one_node)[0].startswith("hydra.launcher.gpus_per_node=2")
    assert cluster_problems({"mem_gb": 9}, one_node) == [
        "hydra.launcher.mem_gb=9 but the nodes of partition 'p' have 8 GB"]
    assert cluster_problems({"partition": None}, {"p": {**one_node["p"], "default": False}}) == [
        "hydra.launcher.partition: no partition (and the cluster has no default one) does not exist on this "
        "cluster; it has p"]


def test_a_misconfigured_sweep_is_refused_before_anything_is_queued(tmp_path, monkeypatch, capsys):
    from sdm.cluster.launcher import check_submission

    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "sinfo", "local*|2|23081|(null)|1\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    cpu = {"trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1}}
    two = {"trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1}}
    launcher, sweep = fake_launcher(tmp_path, {"a": cpu, "b": cpu})
    check_submission(launcher, [["a"], ["b"]])  # fits: nothing said, the sweep dir stays
    assert launcher.params["gpus_per_node"] == 0 and sweep.is_dir() and capsys.readouterr().err == ""

    launcher, sweep = fake_launcher(tmp_path / "2", {"a": two, "b": two, "c": cpu}, partition="gpu")
    with pytest.raises(SystemExit) as code:
        check_submission(launcher, [["a"], ["b"], ["c"]])
    said = capsys.readouterr().err
    assert code.value.code == 2 and said.startswith("error: nothing was submitted:\n  ")
    assert said.count("trainer.devices=2: Lightning needs one task per device") == 1  # each problem once
    assert "partition 'gpu' does not exist on this cluster; it has local" in said
    assert not sweep.exists() and sweep.parent.is_dir()  # the empty sweep dir is gone, its parent kept

    launcher, sweep = fake_launcher(tmp_path / "3", {"a": two})
    (sweep / "0").mkdir()  # a sweep dir with earlier work in it is never removed
    with pytest.raises(SystemExit):
        check_submission(launcher, [["a"]])
    assert sweep.is_dir()
    gpu = {"trainer": {"accelerator": "gpu", "devices": 1, "num_nodes": 1}}
    launcher, _ = fake_launcher(tmp_path / "4", {"a": gpu})
    with pytest.raises(SystemExit):
        check_submission(launcher, [["a"]])
    assert "gpus_per_node=1 but the nodes of partition 'local' have no GPUs" in capsys.readouterr().err
    launcher, _ = fake_launcher(tmp_path / "5", {"a": gpu}, gpus_per_node=0)  # asked for: kept
    check_submission(launcher, [["a"]])
    assert launcher.params["gpus_per_node"] == 0


def test_the_installed_launcher_adds_kill_on_bad_exit_and_reports_failed_jobs(tmp_path, monkeypatch, capsys):
    import importlib

    from hydra.core.plugins import Plugins
    from submitit.core.utils import UncompletedJobError

    from sdm.cluster import launcher as slurm_launcher

    Plugins.instance()  # its scan re-executes the plugin modules: the class it keeps is the one patched
    SlurmLauncher = importlib.import_module("hydra_plugins.hydra_submitit_launcher.submitit_launcher").SlurmLauncher

    outcome = {}

    def original(self, job_overrides, initial_job_idx):
        outcome["setup"] = list(self.params["setup"])
        outcome["args"] = (job_overrides, initial_job_idx)
        if "raise" in outcome:
            raise outcome["raise"]
        return ["returns"]

    from submitit.slurm.slurm import SlurmInfoWatcher

    monkeypatch.setattr(SlurmLauncher, "launch", original)
    monkeypatch.setattr(SlurmInfoWatcher, "update", SlurmInfoWatcher.update)  # installed below: undone after
    checked = []
    monkeypatch.setattr(slurm_launcher, "check_submission", lambda launcher, overrides: checked.append(
        (launcher, overrides)))
    slurm_launcher.install_checks()
    slurm_launcher.install_checks()  # twice is once
    assert SlurmLauncher.launch.__name__ == "checked_launch"
    launcher = SimpleNamespace(params={"setup": ["module load cuda"]},
                               config=SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path)))))
    assert SlurmLauncher.launch(launcher, [["a=1"]], 7) == ["returns"]
    assert checked == [(launcher, [["a=1"]])] and outcome["args"] == ([["a=1"]], 7)
    assert outcome["setup"] == [slurm_launcher.KILL_ON_BAD_EXIT, "module load cuda"]
    assert slurm_launcher.with_kill_on_bad_exit(outcome["setup"]) == outcome["setup"]  # not added twice
    assert slurm_launcher.with_kill_on_bad_exit(None) == [slurm_launcher.KILL_ON_BAD_EXIT]

    outcome["raise"] = UncompletedJobError("task 0 wrote nothing\nthe disk is full")
    with pytest.raises(SystemExit) as code:
        SlurmLauncher.launch(launcher, [["a=1"]], 0)
    said = capsys.readouterr().err
    assert code.value.code == 1 and "error: a SLURM job did not complete (UncompletedJobError)" in said
    assert "the disk is full" in said and f"Its full logs are in {tmp_path}/.submitit/" in said
    outcome["raise"] = KeyError("a bug of ours, not a job's failure")
    with pytest.raises(KeyError):
        SlurmLauncher.launch(launcher, [["a=1"]], 0)
