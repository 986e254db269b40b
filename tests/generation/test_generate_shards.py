"""Sharded generation: shards (and local processes) make exactly the files of one run, the last
shard writes one manifest, a killed shard resumes, and bad shard specs write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.generation import files, masks_of, sample_cfg, stable

from sdm.core.errors import ConfigError, SDMError
from sdm.generation import generate
from sdm.generation.shards import parse_shard, shard_masks, shard_record_path

SIZE = 16
TIMING = ("seconds", "images_made", "device", "shards")  # what may differ between a sharded run and one run


def test_parse_shard_accepts_i_of_n_and_null():
    assert parse_shard(None) == (0, 1) and parse_shard("") == (0, 1)
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 4 ") == (3, 4) and parse_shard("12/100") == (12, 100)
    assert [m for m in shard_masks(list("abcdefg"), 1, 3)] == ["b", "e"]


@pytest.mark.parametrize("spec", ["3/2", "2/2", "1/0", "0/0", "-1/2", "a/b", "1", "1/2/3"])
def test_a_bad_shard_spec_is_refused_before_anything_is_written(run_dir, tmp_path, spec):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"shard='.*': expected i/n with 0 <= i < n"):
        generate(sample_cfg(f"weights={run_dir}", f"out_dir={out}", f"shard='{spec}'"))
    assert not out.exists()


def test_devices_must_be_a_positive_count(run_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="devices"):
        generate(sample_cfg(f"weights={run_dir}", f"out_dir={tmp_path / 'out'}", "devices=0"))
    assert not (tmp_path / "out").exists()


def test_two_shards_make_the_files_of_one_run_and_the_last_writes_the_manifest(single, run_dir, tmp_path, capsys):  # noqa: F811
    masks, reference, manifest = single
    out = tmp_path / "out"
    first = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=1/2"))
    # done, but shard 0 is not: the answer says where this shard's record lies
    assert first == {"complete": False, "shard": [1, 2], "shard_record": str(shard_record_path(out, 1, 2)),
                     "out_dir": str(out)}
    assert capsys.readouterr().out.startswith("shard 1/2: 2 of 5 masks x 2 samples, ddim 2 steps")
    record = json.loads(shard_record_path(out, 1, 2).read_text())
    assert record["complete"] is True and record["shard"] == [1, 2]
    assert not (out / "manifest.json").exists() and not list((out / "grids").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == ["m1_0.png", "m1_1.png", "m3_0.png", "m3_1.png"]
    merged = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=0/2"))
    assert files(out) == files(reference)  # images, labels, coloured masks and grids, byte for byte
    written = json.loads((out / "manifest.json").read_text())
    assert stable(written) == stable(json.loads((reference / "manifest.json").read_text()))
    assert stable(merged) == stable(manifest) and merged["out_dir"] == str(out)
    images = [image for item in written["items"] for image in item["images"]]
    assert len(images) == len(set(images)) == 10  # each image listed once
    assert written["shards"] == 2 and written["images_made"] == 10 and written["complete"] is True
    assert written["device"] == ["cpu"]
    again = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=0/2"))
    assert again["complete"] is True and again["images_made"] == 4 and files(out) == files(reference)  # 4 + 0 made
    for index in range(2):
        record = json.loads(shard_record_path(out, index, 2).read_text())
        assert record["complete"] and [item["mask"] for item in record["items"]] == [f"m{i}" for i in range(index, 5, 2)]


def test_more_shards_than_masks_leaves_some_shards_empty(run_dir, tmp_path):  # noqa: F811
    masks = masks_of(tmp_path, 2)
    out = tmp_path / "out"
    for index in (2, 0):
        assert generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}",
                                   f"shard={index}/3"))["complete"] is False
    assert not (out / "manifest.json").exists()
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=1/3"))
    assert manifest["shards"] == 3 and [item["mask"] for item in manifest["items"]] == ["m0", "m1"]
    assert json.loads(shard_record_path(out, 2, 3).read_text())["items"] == []


def test_a_killed_shard_resumes_and_the_merge_waits_for_it(single, run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation

    masks, reference, _ = single
    out = tmp_path / "out"
    cfg = [f"weights={run_dir}", f"masks={masks}", f"out_dir={out}"]
    real_sample, passes = generation.sample, []

    def dies_on_the_second_pass(*args, **kwargs):
        passes.append(1)
        if len(passes) == 2:
            raise KeyboardInterrupt  # a node lost mid-shard
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(generation, "sample", dies_on_the_second_pass)
    with pytest.raises(KeyboardInterrupt):
        generate(sample_cfg(*cfg, "shard=0/2"))
    monkeypatch.setattr(generation, "sample", real_sample)
    assert len(list((out / "images").iterdir())) == 4  # shard 0: 3 masks x 2 = 6 images, 4 per pass
    assert json.loads(shard_record_path(out, 0, 2).read_text())["complete"] is False
    generate(sample_cfg(*cfg, "shard=1/2"))
    assert not (out / "manifest.json").exists()  # shard 0 is not complete
    generate(sample_cfg(*cfg, "shard=0/2"))
    assert files(out) == files(reference)


def test_shards_of_other_settings_are_refused(single, run_dir, tmp_path):  # noqa: F811
    masks, _, _ = single
    out = tmp_path / "out"
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=0/2"))
    with pytest.raises(ConfigError, match=r"other settings \(seed: 0 there, 1 now\)"):
        generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "shard=1/2", "seed=1"))


def test_shards_need_a_shared_folder_when_the_weights_sit_outside_a_run(run_dir, tmp_path):  # noqa: F811
    import shutil

    loose = tmp_path / "loose"
    shutil.copytree(run_dir / "export", loose)
    with pytest.raises(ConfigError, match="shard=0/2 needs out_dir"):
        generate(sample_cfg(f"weights={loose}", f"output_root={tmp_path / 'runs'}", "shard=0/2"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_cli_shards_as_a_slurm_array_would(run_dir, tmp_path):  # noqa: F811
    """Each array task reads its shard from SLURM's variables; a bad spec exits 2 without a traceback."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    out = tmp_path / "out"
    command = [sys.executable, "sample.py", f"weights={run_dir}", "limit=3", "num_per_mask=1", "sampler.num_steps=2",
               f"out_dir={out}", "export=true",
               "shard=${oc.env:SLURM_ARRAY_TASK_ID}/${oc.env:SLURM_ARRAY_TASK_COUNT}"]
    for task in ("1", "0"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": "2"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        if task == "1":  # the first to finish leaves the manifest and the export to the last one
            assert not (out / "hf").exists() and "the last one to finish does it" in done.stdout
    assert "all 2 shards complete" in done.stdout and "exported 3 images" in done.stdout
    assert (out / "hf" / "data" / "train-00000-of-00001.parquet").is_file()
    assert json.loads((out / "manifest.json").read_text())["shards"] == 2
    assert len(list((out / "images").glob("*.png"))) == 3
    failed = subprocess.run([*command[:-1], "shard=3/2"], cwd=REPO, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert failed.returncode == 2 and "error: shard='3/2'" in failed.stderr and "Traceback" not in failed.stderr


def test_a_process_is_one_shard_and_reports_a_clear_error(single, run_dir, tmp_path, capsys):  # noqa: F811
    """The body of each devices=N process, run here in-process (spawned children hide it)."""
    from omegaconf import OmegaConf

    from sdm.generation.processes import _worker, process_plan

    masks, reference, _ = single
    cfg = sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'out'}", "devices=2", "shard=1/3")
    plan = process_plan(cfg)
    assert plan == [{"shard": "2/6", "devices": 1, "device": "cpu"}, {"shard": "3/6", "devices": 1, "device": "cpu"}]
    import torch

    threads = torch.get_num_threads()
    # the worker's own config asks for one process: whatever a broken worker does, it cannot spawn more
    single_process = OmegaConf.to_yaml(sample_cfg(f"weights={run_dir}", f"masks={masks}",
                                                  f"out_dir={tmp_path / 'out'}"))
    try:
        _worker(1, single_process, [{"shard": "0/2", "devices": 1, "device": "cpu"},
                                    {"shard": "1/2", "devices": 1, "device": "cpu"}], 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert json.loads(shard_record_path(tmp_path / "out", 1, 2).read_text())["complete"] is True
    assert not (tmp_path / "out" / "manifest.json").exists()  # shard 1 of 2 only: the plan was applied
    with pytest.raises(SystemExit) as code:
        _worker(0, single_process, [{"shard": "5/2", "devices": 1, "device": "cpu"}], 1)
    assert code.value.code == 2
    assert "error: process 0 (5/2): shard='5/2': expected i/n" in capsys.readouterr().err


def test_devices_start_one_spawned_process_per_shard(single, run_dir, tmp_path, monkeypatch):  # noqa: F811
    """run_in_processes with the processes run one after the other in this process (the real
    spawn is tests/generation/test_generate_processes.py): same files, the merged manifest, clear failures."""
    import torch.multiprocessing as mp

    import sdm.generation.processes as processes

    masks, reference, manifest = single
    calls = []

    def in_process(fn, args, nprocs, join, start_method):
        calls.append((nprocs, join, start_method, args[2]))
        for j in range(nprocs):
            fn(j, *args)

    monkeypatch.setattr(processes.mp, "start_processes", in_process)
    out = tmp_path / "out"
    merged = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "devices=2"))
    assert calls == [(2, True, "spawn", max(1, (__import__("os").cpu_count() or 1) // 2))]
    assert files(out) == files(reference) and stable(merged) == stable(manifest)
    assert merged["out_dir"] == str(out) and merged["shards"] == 2
    # without out_dir every process gets the run's default folder, decided once by the parent
    default = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", "devices=2"))
    assert default["complete"] is True and Path(default["out_dir"]).parent == run_dir / "samples"
    # this node's shards done, other nodes' not: no manifest yet, and no error
    partial = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'p'}", "devices=2",
                                  "shard=0/2"))
    assert partial == {"complete": False, "out_dir": str(tmp_path / "p")}

    def dies(fn, args, nprocs, join, start_method):
        raise mp.ProcessExitedException("exit 2", error_index=1, error_pid=7, exit_code=2)

    monkeypatch.setattr(processes.mp, "start_processes", dies)
    with pytest.raises(SDMError, match=r"generation process 1 \(1/2\) failed with exit code 2 .*re-run the same command"):
        generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'd'}", "devices=2"))

    def raises(fn, args, nprocs, join, start_method):
        raise mp.ProcessRaisedException("Traceback ...\nValueError: broken", error_index=0, error_pid=7)

    monkeypatch.setattr(processes.mp, "start_processes", raises)
    with pytest.raises(SDMError, match=r"a generation process failed: ValueError: broken; re-run"):
        generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'd'}", "devices=2"))


def test_the_slurm_launcher_submits_one_single_task_job_per_shard():
    """sample.py under hydra/launcher=slurm: a job per shard, one task on `devices` GPUs."""

    from sdm.core.configs import compose

    cfg = compose("sample", ["hydra/launcher=slurm", "weights=x", "devices=4"], return_hydra_config=True)
    from sdm.cluster.launcher import gpus_per_node_for

    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, None)
    assert gpus_per_node_for(cfg) == 4  # what the launcher asks for at submission
    cfg.device = "cpu"
    assert gpus_per_node_for(cfg) == 0


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_a_hydra_multirun_over_shards_makes_the_whole_generation(run_dir, tmp_path):  # noqa: F811
    """`sample.py -m shard=0/2,1/2`: the form a submitit launcher runs as one job per shard."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    out = tmp_path / "out"
    command = [sys.executable, "sample.py", "-m", f"weights={run_dir}", "limit=3", "num_per_mask=2",
               "sampler.num_steps=2", f"out_dir={out}", "shard=0/2,1/2", f"output_root={tmp_path}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards"] == 2
    images = [name for item in manifest["items"] for name in item["images"]]
    assert len(images) == len(set(images)) == 6 == len(list((out / "images").glob("*.png")))
