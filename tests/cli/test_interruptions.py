"""Ctrl-C and killed parents: a command stopped by Ctrl-C says so in one line, exits 130 and
continues when run again; a parent killed with SIGKILL (an OOM killer, `kill -9`, a lost node)
leaves none of its children running (sample.py devices=N's workers, the pipeline's stages).

Ctrl-C is sent as a terminal sends it: SIGINT to the command's whole process group. The
training's Ctrl-C (stop after a checkpoint, exit 130, exact resume) is in tests/training/test_resume.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import REPO
from helpers.generation import SIZE, bands, mask_folder

from sdm.core.exits import INTERRUPTED

SLOW_SAMPLING = ["sampler=ddim", "sampler.num_steps=30", "precision=fp32", "device=cpu", "batch_size=1",
                 "num_per_mask=2"]


def start(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """A command in a fresh interpreter, in its own process group (as a shell starts it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", f"sdm.cli.{module}", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)


def ctrl_c_as_in_a_terminal() -> None:
    """A test run in the background (`pytest &`, CI) hands its children SIGINT ignored, and a
    program started so keeps ignoring Ctrl-C, as Python does: the command gets a terminal's default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended (exit {process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {seconds} s")
        time.sleep(0.1)


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                frontier += kids
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def assert_all_end(pids: list[int], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in pids if alive(p)]
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"children outlived their parent: {survivors}"


def many_masks(root: Path, count: int = 6) -> Path:
    return mask_folder(root, {f"m{i}": bands(SIZE, SIZE, (1 + i, 8 + i % 3)) for i in range(count)})


@pytest.mark.slow  # three sampling runs in fresh interpreters
def test_ctrl_c_during_sampling_is_one_line_exit_130_and_a_rerun_finishes(world, tmp_path):
    masks, out = many_masks(tmp_path / "masks"), tmp_path / "out"
    args = [f"weights={world.run}", f"masks={masks}", f"out_dir={out}", *SLOW_SAMPLING]
    process = start("sample", *args, cwd=tmp_path / "cwd")
    wait_for(lambda: len(list((out / "images").glob("*.png"))) >= 2, process, "two images")
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in stderr
    made = len(list((out / "images").glob("*.png")))
    assert 2 <= made < 12
    again = start("sample", *args, cwd=tmp_path / "cwd")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert f"({made} were there)" in stdout  # continued, not started over
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


@pytest.mark.slow  # spawns two sampling processes
def test_sigkill_of_sample_with_devices_leaves_no_worker(world, tmp_path):
    masks, out = many_masks(tmp_path / "masks"), tmp_path / "out"
    process = start("sample", f"weights={world.run}", f"masks={masks}", f"out_dir={out}", *SLOW_SAMPLING,
                    "devices=2", cwd=tmp_path / "cwd")
    wait_for(lambda: len(list((out / "images").glob("*.png"))) >= 2, process, "images from the workers")
    workers = children_of(process.pid)
    assert len(workers) >= 2  # the two shards (and multiprocessing's resource tracker)
    os.kill(process.pid, signal.SIGKILL)  # the parent only, as the OOM killer does
    process.wait()
    assert_all_end(workers)
    assert not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text())["complete"]


LONG_SEGMENTER = ["data_source=scenes", "data.scenes.num=8", f"data.size=[{SIZE},{SIZE}]",
                  "segmenter.segmenter.max_steps=100000", "segmenter.segmenter.val_every=100000",
                  "segmenter.segmenter.batch_size=2", "segmenter.segmenter.width=8",
                  "segmenter.segmenter.progress_bar=false", "segmenter.segmenter.precision=32-true"]


def start_pipeline(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """The demo pipeline with a segmenter stage that would train for hours."""
    root = tmp_path / "root"
    process = start("pipeline", str(REPO / "conf" / "pipeline" / "demo.yaml"), f"root={root}",
                    f"segmenter.segmenter.cache_dir={tmp_path / 'segmenters'}", *LONG_SEGMENTER, cwd=tmp_path / "cwd")
    wait_for(lambda: (root / "logs" / "segmenter.log").is_file() and children_of(process.pid), process,
             "the segmenter stage")
    wait_for(lambda: "max_steps=100000" in (root / "logs" / "segmenter.log").read_text() and
             any(alive(p) for p in children_of(process.pid)), process, "the stage running")
    return process, root


@pytest.mark.slow  # the pipeline's first stages in fresh interpreters
def test_sigkill_of_the_pipeline_ends_its_running_stage(tmp_path):
    process, _ = start_pipeline(tmp_path)
    time.sleep(3)  # the stage is past its imports, training
    stage = children_of(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert_all_end(stage)


@pytest.mark.slow  # the pipeline's first stages in fresh interpreters
def test_ctrl_c_stops_the_pipeline_and_its_stage_with_exit_130(tmp_path):
    process, root = start_pipeline(tmp_path)
    time.sleep(3)
    stage = children_of(process.pid)
    os.killpg(process.pid, signal.SIGINT)  # the terminal's group: the stage runs in its own session
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in stderr
    assert_all_end(stage, seconds=5)  # it has ended already: the pipeline waited for it
    log = (root / "logs" / "segmenter.log").read_text()
    assert log.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in log, log[-3000:]  # the stage said it once too
