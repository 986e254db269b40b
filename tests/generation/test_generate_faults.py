"""What users' folders do to a generation. Damaged images are never counted as done: a re-run of
sample.py draws a truncated or wrongly sized image again (the same pixels: its seed is its
own), and the export refuses one by name instead of writing a parquet row that cannot be
decoded. The manifest records absolute places, so an evaluation started elsewhere reads the
run's own (and writes nothing where it stands)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers.generation import SIZE, files, sample_cfg
from PIL import Image

from sdm.core.errors import DataError
from sdm.generation import generate
from sdm.generation.export import export_dataset
from sdm.generation.run import absolute_caches


def test_a_rerun_draws_damaged_images_and_masks_again(run_dir, single, tmp_path, capsys):
    masks, reference, _ = single
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    cut = out / "images" / "m0_0.png"
    cut.write_bytes(cut.read_bytes()[:40])  # a copy cut short, a disk that filled under another writer
    small = out / "images" / "m1_1.png"
    Image.new("RGB", (4, 4)).save(small)
    label = out / "labels" / "m2.png"
    label.write_bytes(label.read_bytes()[:30])
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}"))
    assert files(out) == files(reference)  # every file as an uninterrupted run made it
    printed = capsys.readouterr().out
    assert f"{cut} cannot be decoded" in printed
    assert f"{small} is 4x4, expected {SIZE}x{SIZE}: drawing it again" in printed
    assert manifest["images_made"] == 2


def test_the_export_refuses_a_damaged_image_by_name_and_writes_nothing(single, tmp_path):
    _, reference, _ = single
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    cut = damaged / "images" / "m0_1.png"
    cut.write_bytes(cut.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"{re.escape(str(cut))} cannot be decoded .*; re-run the same sample\.py "
                                        "command, which draws a damaged image again, then export"):
        export_dataset(damaged, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))
    Image.new("RGB", (8, 8)).save(cut)
    with pytest.raises(DataError, match=rf"{re.escape(str(cut))} is 8x8, expected {SIZE}x{SIZE}"):
        export_dataset(damaged, tmp_path / "hf")
    label = damaged / "labels" / "m1.png"
    shutil.copy(reference / "images" / "m0_1.png", cut)
    label.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"{re.escape(str(label))} cannot be decoded"):
        export_dataset(damaged, tmp_path / "hf")


def test_the_manifest_records_absolute_places(run_dir, single, tmp_path, monkeypatch):
    masks, _, _ = single
    monkeypatch.chdir(run_dir.parent)
    manifest = generate(sample_cfg(f"weights={run_dir.name}", f"masks={masks}", f"out_dir={tmp_path / 'out'}"))
    assert manifest["weights"]["run_dir"] == str(run_dir) and Path(manifest["weights"]["file"]).is_absolute()
    assert Path(manifest["train_data"]["cache_dir"]).is_absolute()
    data = {"name": "sidewalk", "cache_dir": "runs/data", "hub_cache_dir": "~/hf", "size": [8, 8]}
    assert absolute_caches(data) == {**data, "cache_dir": str(run_dir.parent / "runs" / "data"),
                                     "hub_cache_dir": str(Path("~/hf").expanduser())}
