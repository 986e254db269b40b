"""Export of a generation as a Hub-schema dataset: it loads with `datasets`, carries where each
image came from, trains through this project's own data path, and refuses bad folders."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import datasets
import numpy as np
import pytest
from helpers.configs import compose_train
from helpers.generation import bands, mask_folder, pixels, sample_cfg
from helpers.processes import leftover_path
from PIL import Image

from sdm.cli import export as export_command
from sdm.cli.export import main
from sdm.core.atomic import WriteError
from sdm.core.errors import ConfigError, DataError
from sdm.generation import generate
from sdm.generation.export import EXTRA_COLUMNS, export_dataset

SIZE = 16


@pytest.fixture(scope="module")
def samples(run_dir, tmp_path_factory):  # noqa: F811
    """A finished generation: 3 masks x 2 samples."""
    root = tmp_path_factory.mktemp("export")
    masks = mask_folder(root / "masks", {f"m{i}": bands(SIZE, SIZE, (1 + i, 9, 20 + i)) for i in range(3)})
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={root / 'samples'}"))
    return root / "samples"


def decoded(value: dict) -> np.ndarray:
    with Image.open(io.BytesIO(value["bytes"])) as image:
        return np.asarray(image)


def test_the_export_loads_with_datasets_in_the_hub_schema_with_its_origin(samples, tmp_path):
    out = export_dataset(samples, tmp_path / "hf", rows_per_shard=4)
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["pixel_values"], datasets.Image) and isinstance(ds.features["label"], datasets.Image)
    assert set(ds.column_names) == {"pixel_values", "label", *EXTRA_COLUMNS} and len(ds) == 6
    manifest = json.loads((samples / "manifest.json").read_text())
    raw = ds.cast_column("pixel_values", datasets.Image(decode=False)).cast_column("label", datasets.Image(decode=False))
    for row in raw:
        item = next(i for i in manifest["items"] if i["mask"] == row["source_mask"])
        k = row["sample_index"]
        assert np.array_equal(decoded(row["pixel_values"]), pixels(samples / item["images"][k]))
        assert np.array_equal(decoded(row["label"]), pixels(samples / item["label"]))
        assert row["seed"] == item["sample_seeds"][k]
        assert (row["sampler"], row["num_steps"], row["guidance_scale"]) == ("ddim", 2, 1.5)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-nc-4.0\n") and "CC BY-NC 4.0" in card
    for fact in ("6 images generated", "from 3 label maps, 2 per map", "Images are 16x16 (the model's training size)",
                 "sampler ddim with 2 steps", "s = 1.5, precision fp32", f"weights `{manifest['weights']['file']}`",
                 f"masks from `{manifest['settings']['masks']}`", f"(run `{manifest['weights']['run']}`)"):
        assert fact in " ".join(card.split()), fact
    assert json.loads((out / "sdm_export.json").read_text()) == {"samples": str(samples), "rows": 6, "shards": 2,
                                                                "size": None, "filter": None}


def test_the_export_trains_through_this_projects_data_path(samples, tmp_path):
    from sdm.data.datamodule import SidewalkDataModule
    from sdm.data.prepare import prepare_data

    out = export_dataset(samples, tmp_path / "hf")
    cfg = compose_train(tmp_path / "run", "data=sidewalk", f"data.path={out}", f"data.size=[{SIZE},{SIZE}]",
                        "data.batch_size=2", "data.val_fraction=0.2")
    prepared = prepare_data(cfg.data, show_progress=False)
    assert len(prepared) == 6
    module = SidewalkDataModule(cfg.data)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["label"].shape == (2, SIZE, SIZE)
    assert set(batch["label"].unique().tolist()) <= {1, 2, 3, 9, 20, 21, 22}  # the masks' own classes


def test_the_export_can_be_resized_with_labels_kept_exact(samples, tmp_path):
    out = export_dataset(samples, tmp_path / "hf", size=(24, 20))
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    row = ds[0]
    assert row["pixel_values"].size == (20, 24) and row["label"].size == (20, 24)
    assert set(np.unique(np.asarray(row["label"])).tolist()) <= {1, 2, 3, 9, 20, 21, 22}  # nearest: no new ids
    with Image.open(samples / "images" / f"{row['source_mask']}_{row['sample_index']}.png") as image:
        lanczos = np.asarray(image.resize((20, 24), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(row["pixel_values"]), lanczos)
    assert "Images are 20x24." in " ".join((out / "README.md").read_text().split())
    assert json.loads((out / "sdm_export.json").read_text())["size"] == [24, 20]
    for bad in [(0, 4), (4,), (4, -1)]:
        with pytest.raises(DataError, match=r"export size must be \(height, width\) >= 1"):
            export_dataset(samples, tmp_path / "bad", size=bad)
    assert not (tmp_path / "bad").exists()
    one = export_dataset(samples, tmp_path / "thin", size=(1, 3))  # 1 pixel high is still a size
    assert datasets.load_dataset("parquet", data_files=str(one / "data" / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "cache"))[0]["label"].size == (3, 1)


def test_a_new_export_replaces_an_old_one_and_foreign_folders_are_refused(samples, tmp_path):
    out = export_dataset(samples, tmp_path / "hf", rows_per_shard=1)
    assert len(list((out / "data").iterdir())) == 6
    export_dataset(samples, out)
    assert len(list((out / "data").iterdir())) == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not an sdm export"):
        export_dataset(samples, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_unfinished_or_foreign_sample_folder_is_refused_and_nothing_written(samples, tmp_path, capsys):
    with pytest.raises(DataError, match="no manifest.json there"):
        export_dataset(tmp_path, tmp_path / "hf")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "manifest.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(DataError, match="not finished"):
        export_dataset(unfinished, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(SystemExit) as code:
        main([str(unfinished), "--out", str(tmp_path / "hf")])
    assert code.value.code == 2 and "error:" in capsys.readouterr().err


def test_sample_py_settings_for_export_are_checked_before_generating(run_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="export_size"):
        generate(sample_cfg(f"weights={run_dir}", f"out_dir={out}", "export=true", "export_size=[0,4]"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(ConfigError, match="is not an sdm export"):
        generate(sample_cfg(f"weights={run_dir}", f"out_dir={out}", "export=true", f"export_dir={foreign}"))
    assert not out.exists()


def test_the_command_line_exports_with_its_options(samples, tmp_path, capsys):
    main([str(samples), "--out", str(tmp_path / "cli"), "--size", "24", "20", "--rows-per-shard", "4"])
    out = tmp_path / "cli"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00002.parquet",
                                                               "train-00001-of-00002.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds[0]["pixel_values"].size == (20, 24)  # --size HEIGHT WIDTH
    assert f"exported 6 images in 2 parquet shard(s) to {out}" in capsys.readouterr().out
    main([str(samples)])  # the default: <samples>/hf, 500 rows per shard
    assert [p.name for p in (samples / "hf" / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for phrase in ("a finished sample.py output folder", "export folder (default: <samples>/hf)",
                   "resize (labels nearest)"):  # each help text whole, on its own line
        assert re.search(rf"(?m)\s{re.escape(phrase)}$", text), phrase
    assert "sdm-export <samples folder>" in text and "--size HEIGHT WIDTH" in text
    assert "--rows-per-shard ROWS_PER_SHARD" in text
    assert export_command.__doc__.strip() in text  # the synopsis and paragraphs as written, not re-wrapped


def test_resized_photos_are_lanczos_and_labels_nearest(samples, tmp_path):
    from sdm.generation.export import png_bytes

    photo, label = samples / "images" / "m0_0.png", samples / "labels" / "m0.png"
    with Image.open(photo) as image:
        lanczos = np.asarray(image.resize((20, 24), Image.Resampling.LANCZOS))
    with Image.open(label) as image:
        nearest = np.asarray(image.resize((20, 24), Image.Resampling.NEAREST))
    size = (SIZE, SIZE)  # the generation's
    assert np.array_equal(decoded({"bytes": png_bytes(photo, size, (24, 20), label=False)}), lanczos)
    assert np.array_equal(decoded({"bytes": png_bytes(label, size, (24, 20), label=True)}), nearest)
    assert png_bytes(photo, size, None, label=False) == photo.read_bytes()  # no size: the file as it is


def test_a_damaged_generation_fails_clearly_and_leaves_no_temporary_folder(samples, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(samples, damaged, ignore=shutil.ignore_patterns("hf"))
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / manifest["items"][1]["images"][0]).unlink()
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    stale = leftover_path(tmp_path / "out", "tmp")  # left by a killed export
    stale.mkdir()
    (stale / "junk.txt").write_text("old")
    with pytest.raises(DataError, match=r"m1_0.png is listed in manifest.json but missing"):
        export_dataset(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not stale.exists()
    manifest["items"][1]["sample_seeds"] = manifest["items"][1]["sample_seeds"][:1]
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="mask 'm1' lists 2 images but 1 seeds"):
        export_dataset(damaged, tmp_path / "out")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    stale.mkdir()
    (stale / "junk.txt").write_text("old")
    done = export_dataset(samples, tmp_path / "out")  # a killed export's temporary is cleared first
    assert not (done / "junk.txt").exists() and not stale.exists()


def test_the_export_is_staged_beside_its_folder_under_a_name_its_clean_up_knows(samples, tmp_path, monkeypatch):
    """The staging folder sits beside the export (one rename on one disk) under the name that
    remove_leftovers(out.parent, "tmp", out.name) clears once its writer is killed; the next export
    clears only those of its own folder, not a killed writer's of a sibling."""
    import sdm.generation.export as export

    out = tmp_path / "out"
    sibling = leftover_path(tmp_path / "other", "tmp")  # a killed export to another folder: its own to clear
    sibling.mkdir()
    staged, card = [], export.dataset_card

    def card_while_staged(*args):  # written last, into the staging folder
        staged.extend(p for p in tmp_path.iterdir() if p.name.startswith(".") and p != sibling)
        return card(*args)

    monkeypatch.setattr(export, "dataset_card", card_while_staged)
    export_dataset(samples, out)
    mine = leftover_path(out, "tmp").name  # the name this process would leave, with a dead pid
    assert len(staged) == 1 and staged[0].parent == out.parent
    assert staged[0].name.rsplit("-", 2)[0] == mine.rsplit("-", 2)[0]  # .out.tmp-<host>-<pid>-<tag>
    assert staged[0].name.split("-")[-2] == str(os.getpid()) and not staged[0].exists()
    assert sibling.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == sorted([sibling.name, "out"])


def test_a_failure_while_writing_leaves_the_old_export_and_no_temporary(samples, tmp_path, monkeypatch):
    import sdm.generation.export as export

    out = export_dataset(samples, tmp_path / "hf", rows_per_shard=2)
    before = sorted(p.name for p in (out / "data").iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "dataset_card", disk_full)  # after the parquet shards are written
    with pytest.raises(WriteError, match=f"the export to {out} failed: the disk holding .* is full"):
        export_dataset(samples, out)
    assert sorted(p.name for p in (out / "data").iterdir()) == before  # the previous export, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
