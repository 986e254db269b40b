"""The augmentation study's arithmetic: paired differences within a seed, an arm's worth read
off the real-only learning curve, and its tables and figure."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

sys.path.insert(0, str(REPO / "experiments"))
from _augmentation_report import (  # noqa: E402
    arms_table,
    learning_curve,
    paired_differences,
    plot_curve,
    worth_in_real_scenes,
)

CURVE = {25: 0.40, 100: 0.60, 400: 0.70, 2000: 0.75}


def runs_of(table: dict[tuple[int, str], list[float]]) -> list[dict]:
    return [{"num": num, "arm": arm, "seed": seed, "test_miou": v, "steps": 10, "seconds": 60.0}
            for (num, arm), values in table.items() for seed, v in enumerate(values)]


def test_paired_differences_subtract_real_of_the_same_seed_only():
    runs = runs_of({(100, "real"): [0.50, 0.60, 0.70], (100, "mixed"): [0.55, 0.62]})
    runs.append({"num": 400, "arm": "real", "seed": 0, "test_miou": 0.9})  # another size is not a partner
    diffs = paired_differences(runs, 100, "mixed")
    assert list(diffs) == [0, 1] and diffs[0] == pytest.approx(0.05) and diffs[1] == pytest.approx(0.02)
    assert paired_differences(runs, 400, "mixed") == {}


def test_worth_interpolates_in_log_n_between_the_bracketing_sizes():
    assert worth_in_real_scenes(CURVE, 0.60) == "100"
    assert worth_in_real_scenes(CURVE, 0.65) == "200"  # halfway in mIoU between 100 and 400: their geometric mean
    assert worth_in_real_scenes(CURVE, 0.50) == "50"
    assert worth_in_real_scenes(CURVE, 0.30) == "< 25" and worth_in_real_scenes(CURVE, 0.80) == "> 2000"
    bumpy = {25: 0.4, 100: 0.6, 400: 0.55, 2000: 0.7}  # not monotone: the first bracket counts
    assert worth_in_real_scenes(bumpy, 0.58) == f"{math.exp(math.log(25) + 0.9 * math.log(4)):.0f}"
    assert worth_in_real_scenes({}, 0.5) == "-"
    dip = {25: 0.5, 100: 0.45, 400: 0.6}  # below the first size, but the curve dips below it too: read there
    assert worth_in_real_scenes(dip, 0.47) == f"{math.exp(math.log(25) + 0.6 * math.log(4)):.0f}" == "57"
    assert worth_in_real_scenes(dip, 0.40) == "< 25"


def test_the_arms_table_reads_mean_paired_difference_and_worth():
    runs = runs_of({(25, "real"): [0.40, 0.40], (100, "real"): [0.58, 0.62], (400, "real"): [0.70, 0.70],
                    (100, "mixed"): [0.63, 0.67]})
    assert learning_curve(runs) == {25: pytest.approx(0.40), 100: pytest.approx(0.60), 400: pytest.approx(0.70)}
    table = arms_table(runs, ["mixed"], {"mixed": {"images": {100: "475"}}})
    row = next(line for line in table.splitlines() if "| mixed |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["100", "mixed", "475", "10", "2"]
    assert cells[5] == "0.650 ± 0.028" and cells[6] == "+5.0 ± 0.0" and cells[7] == "200" and cells[8] == "1.0"
    # a gain paired within seeds is worth more real scenes, even where the arm's own mean (here from
    # the weaker seed only) lies below the curve's mean
    runs = runs_of({(100, "real"): [0.60, 0.70], (400, "real"): [0.75, 0.75], (100, "one seed"): [0.62]})
    row = next(line for line in arms_table(runs, ["one seed"], {}).splitlines() if "| one seed |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "0.620" and cells[6] == "+2.0" and cells[7] == f"{math.exp(math.log(100) + 0.2 * math.log(4)):.0f}"


def test_the_figure_draws_the_curve_and_each_arm(tmp_path):
    runs = runs_of({(25, "real"): [0.40], (100, "real"): [0.60], (400, "real"): [0.70], (100, "mixed"): [0.66]})
    plot_curve(runs, ["mixed", "never run"], tmp_path / "curve.png")
    with Image.open(tmp_path / "curve.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    red = np.all(pixels == (196, 78, 82), axis=-1)  # the first arm's colour: its marker and its legend key
    assert red.sum() >= 2 * 81 and (np.all(pixels == (85, 168, 104), axis=-1)).sum() == 0  # nothing for an arm never run
    with pytest.raises(ValueError, match="no real-only runs"):
        plot_curve(runs_of({(100, "mixed"): [0.5]}), ["mixed"], tmp_path / "none.png")


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_a_tiny_setting_and_resumes(tmp_path):
    import json
    import os
    import subprocess

    command = [sys.executable, str(REPO / "experiments" / "study_augmentation.py"), "--sizes", "20", "--arm-sizes", "20",
               "--seeds", "0", "--steps", "4", "--generator-steps", "4", "--root", str(tmp_path / "study"),
               "--results", str(tmp_path / "results"), "--arms", "synthetic, then real, filtered"]  # filter, export, init
    env = {**os.environ, "SDM_DATA_DIR": str(tmp_path / "data")}  # the prepared scenes stay in the test's folder
    first = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = json.loads((tmp_path / "results" / "results_augmentation.json").read_text())["runs"]
    assert sorted((r["arm"], r["steps"]) for r in runs) == [
        ("real", 4), ("synthetic only, filtered", 4), ("synthetic, then real, filtered", 8)]
    assert all(0 <= r["test_miou"] <= 1 for r in runs)
    tuned = next((tmp_path / "study" / "n20" / "segmenters").glob("synthetic__then_real__filtered/*/segmenter.json"))
    assert json.loads(tuned.read_text())["init"]  # fine-tuned from the synthetic-only one (its 4 steps count too)
    export = tmp_path / "study" / "n20" / "samples" / "five" / "hf_filtered" / "sdm_export.json"
    assert json.loads(export.read_text())["filter"]["tolerance"] == 1.25
    text = (tmp_path / "results" / "results_augmentation.md").read_text()
    assert "## Real only: the learning curve" in text and "| 20 | synthetic, then real, filtered |" in text
    assert (tmp_path / "results" / "results_augmentation.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("segmenter.safetensors")}
    note = "\n<!-- notes: kept as written -->\nStages after the first ran on one core.\n"
    (tmp_path / "results" / "results_augmentation.md").write_text(text + note)
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # every stage was done: nothing trained again
    rewritten = (tmp_path / "results" / "results_augmentation.md").read_text()
    assert rewritten.endswith("<!-- notes: kept as written -->\nStages after the first ran on one core.\n")
    assert rewritten.count("notes: kept as written") == 1  # the figures are rewritten, the note kept once
