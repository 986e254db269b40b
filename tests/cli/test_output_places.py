"""Every command against a bad output place: a file where its folder should be, a read-only
mount, a full disk. Each must stop with one `error:` line that names the place, exit non-zero,
write nothing (not even into the folder it was started from), and succeed on a good place.

The commands run as users start them (`python -m sdm.cli.<name>`, a fresh interpreter) from an
empty working folder. The read-only and full places are tmpfs mounts (root, as in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import REPO
from helpers.generation import SIZE
from helpers.places import mount_tmpfs, unmount_all

QUIET_EVALUATION = ["evaluation.segmenter=none", "evaluation.fid=false", "evaluation.lpips=false",
                    "evaluation.progress=false"]
SAMPLING = ["sampler=ddim", "sampler.num_steps=2", "precision=fp32", "device=cpu", "num_per_mask=1"]


@dataclass(frozen=True)
class Command:
    module: str
    args: Callable[[Path, SimpleNamespace], list[str]]
    rerun: bool = True  # a good place succeeds (the pipeline and the download are too long or need the internet)
    work: str | None = None  # what the command prints once its work has begun: never seen before a refusal


SMALL_SCENES = ["data=scenes", "data.scenes.num=4", f"data.size=[{SIZE},{SIZE}]"]
COMMANDS = {
    "prepare": Command("prepare", lambda out, w: [*SMALL_SCENES, f"data.cache_dir={out}"], work="street scenes"),
    "segmenter": Command("segmenter", lambda out, w: [
        *SMALL_SCENES, f"data.cache_dir={w.root / 'segmenter-data'}", f"segmenter.cache_dir={out}",
        "segmenter.max_steps=2", "segmenter.val_every=2", "segmenter.batch_size=2", "segmenter.width=8",
        "segmenter.progress_bar=false", "segmenter.precision=32-true"], work="Trainer.fit"),
    "train": Command("train", lambda out, w: [
        "experiment=quickstart", "debug=fast", f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=8",
        f"data.cache_dir={w.root / 'train-data'}", f"run_dir={out}", "trainer.max_steps=1", "logger=none",
        "validation.every_n_steps=1", "checkpoint.every_n_steps=1"], work="Trainer.fit"),
    "sample": Command("sample", lambda out, w: [f"weights={w.run}", f"masks={w.masks}", f"out_dir={out}", *SAMPLING],
                      work="masks x"),
    "sample+evaluate": Command("sample", lambda out, w: [
        f"weights={w.run}", f"masks={w.masks}", f"out_dir={out}", *SAMPLING, "evaluate=true", *QUIET_EVALUATION]),
    "evaluate": Command("evaluate", lambda out, w: [f"samples={w.samples}", f"out_dir={out}", *QUIET_EVALUATION]),
    "export": Command("export", lambda out, w: [str(w.samples), "--out", str(out)]),
    "pipeline": Command("pipeline", lambda out, w: [str(REPO / "conf" / "pipeline" / "demo.yaml"), f"root={out}"],
                        rerun=False, work="[1/5] prepare"),
    "convert": Command("convert", lambda out, w: [str(w.official), "dataset=coco", "num_classes=9",
                                                  "no_instance=false", f"out={out}"]),
    "scenes": Command("scenes", lambda out, w: ["--num", "2", "--size", "16", "--out", str(out)]),
    "diffusers": Command("diffusers", lambda out, w: [str(w.run), "--out", str(out)]),
    "weights": Command("weights", lambda out, w: ["download", "--dir", str(out)], rerun=False),
}


def run_command(command: Command, out: Path, world: SimpleNamespace, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "SDM_SEGMENTER_DIR": str(world.root / "seg")}
    return subprocess.run([sys.executable, "-m", f"sdm.cli.{command.module}", *command.args(out, world)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def problems_of(done: subprocess.CompletedProcess, place: Path, cwd: Path, written: Path | None,
                work: str | None = None) -> list[str]:
    """What a user would hold against the command's answer to a bad place (empty: none)."""
    problems = []
    if work is not None and work in done.stdout + done.stderr:
        problems.append(f"refused only after its work began ({work!r})")
    if done.returncode == 0:
        problems.append("exit 0")
    if "Traceback (most recent call last)" in done.stderr + done.stdout:
        problems.append("traceback")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if len(errors) != 1:
        problems.append(f"{len(errors)} error: lines")
    elif str(place) not in errors[0]:
        problems.append("place not named")
    if written is not None and any(p.is_file() for p in written.rglob("*")):
        problems.append("half-written: " + ", ".join(str(p.relative_to(written)) for p in written.rglob("*") if p.is_file()))
    if any(cwd.iterdir()):
        problems.append("wrote into the working folder: " + ", ".join(p.name for p in cwd.iterdir()))
    return problems


FAULTS = ("file", "read_only", "full")


def bad_place(fault: str, case: Path) -> tuple[Path, Path, Path | None]:
    """(the out setting, the place the error must name, the folder that must stay empty)."""
    if fault == "file":
        out = case / "taken"
        out.write_text("a file, not a folder")
        return out, out, None
    if fault == "read_only":
        out = mount_tmpfs(case / "read-only", read_only=True)
        return out, out, None
    full = mount_tmpfs(case / "full", size="64k")
    return full / "out", full / "out", full


@dataclass
class Outcome:
    problems: list[str]
    stderr: str
    good: subprocess.CompletedProcess | None = None  # the same command on a good place afterwards
    good_files: int = 0


@pytest.fixture(scope="module")
def outcomes(world, tmp_path_factory) -> dict[tuple[str, str], Outcome]:
    """Every (command, fault), run two at a time: each is a fresh interpreter importing torch for
    seconds on one core, so a pair costs what one does on the CI's two cores."""
    root = tmp_path_factory.mktemp("outcomes")

    def one(case: tuple[str, str]) -> Outcome:
        name, fault = case
        folder = root / f"{name}-{fault}"
        folder.mkdir()
        out, place, written = bad_place(fault, folder)
        done = run_command(COMMANDS[name], out, world, folder / "cwd")
        outcome = Outcome(problems_of(done, place, folder / "cwd", written, COMMANDS[name].work), done.stderr[-3000:])
        if COMMANDS[name].rerun and fault == "file":  # once per command
            outcome.good = run_command(COMMANDS[name], folder / "good", world, folder / "good-cwd")
            outcome.good_files = sum(p.is_file() for p in (folder / "good").rglob("*"))
        return outcome

    cases = [(name, fault) for name in COMMANDS for fault in FAULTS]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            yield dict(zip(cases, pool.map(one, cases), strict=True))
    finally:
        unmount_all(root)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_bad_output_place_is_named_before_any_work_and_a_good_one_then_works(name, fault, outcomes):
    outcome = outcomes[(name, fault)]
    assert not outcome.problems, f"problems: {outcome.problems}\n{outcome.stderr}"
    if outcome.good is not None:
        assert outcome.good.returncode == 0, outcome.good.stderr[-3000:]
        assert outcome.good_files > 0
        work = COMMANDS[name].work  # the sign of work begun is one a working run shows
        assert work is None or work in outcome.good.stdout + outcome.good.stderr, work
