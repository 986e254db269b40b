"""The data layer: sources, validation, resizing, the cache and the DataModule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.rows import hub_row, street_like, write_hub_parquet

from sdm.core.errors import DataError
from sdm.data.classes import NUM_CLASSES, PALETTE, colorize, decolorize
from sdm.data.datamodule import (
    PairDataset,
    ResumableShuffleSampler,
    SidewalkDataModule,
    seed_worker,
    split_indices,
)
from sdm.data.prepare import prepare_data
from sdm.data.rows import resize_pair
from sdm.data.sources import load_sidewalk


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """Four 1920x1080 rows in the Hub schema, read back through `load_dataset`."""
    root = tmp_path_factory.mktemp("hub")
    rows = [hub_row(*street_like(1080, 1920, seed)) for seed in range(4)]
    return write_hub_parquet(root, rows)


def cache_entries(cfg) -> list[str]:
    from pathlib import Path

    root = Path(cfg.cache_dir)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_colorize_round_trip_and_unknown_colour():
    ids = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(5, 7)
    assert np.array_equal(decolorize(colorize(ids)), ids)
    assert np.array_equal(colorize(ids)[0, 3], PALETTE[3])
    bad = colorize(ids).copy()
    bad[2, 4] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\) at pixel \(row 2, col 4\)"):
        decolorize(bad)
    # ids past the 35 classes (converted ADE20K / COCO-Stuff models) get colours of their own
    wide = colorize(np.arange(256).reshape(16, 16))
    assert len({tuple(c) for c in wide.reshape(-1, 3)}) == 256
    assert np.array_equal(wide.reshape(-1, 3)[:NUM_CLASSES], PALETTE)
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[256]]))


@pytest.mark.parametrize("mode", ["stretch", "crop"])
def test_resize_keeps_label_ids(mode):
    image, label = street_like(1080, 1920, seed=3)
    label[500:700, 900:1300] = 17  # a block with an id that no neighbour shares
    small_image, small_label = resize_pair(image, label, (64, 96), mode)
    assert small_image.shape == (64, 96, 3) and small_label.shape == (64, 96)
    assert set(np.unique(small_label)) <= set(np.unique(label))
    assert 17 in small_label


def test_crop_keeps_aspect_ratio():
    label = np.zeros((100, 200), dtype=np.uint8)
    label[:, :50] = 1  # left quarter; the centre crop to a square cuts it away
    label[:, 50:] = 2
    _, out = resize_pair(np.zeros((100, 200, 3), np.uint8), label, (50, 50), "crop")
    assert (out == 2).all()
    _, stretched = resize_pair(np.zeros((100, 200, 3), np.uint8), label, (50, 50), "stretch")
    assert 10 <= (stretched == 1).sum(axis=1).mean() <= 15


def test_hub_parquet_prepares_with_its_pictures_and_statistics(hub_folder, data_cfg):
    hub_cfg = data_cfg("sidewalk", path=str(hub_folder), size=[64, 64], val_fraction=0.25,
                       batch_size=2, num_workers=0, export_png=True)
    prepared = prepare_data(hub_cfg, show_progress=False)
    assert prepared.info["rows"] == 4 and prepared.info["source_sizes"] == {"1920x1080": 4}
    assert (prepared.root / "colored_masks" / "000000.png").exists()
    assert (prepared.root / "preview.png").exists() and (prepared.root / "class_frequency.png").exists()
    freq = prepared.info["class_pixel_frequency"]
    assert abs(sum(freq.values()) - 1) < 1e-9


def test_hub_parquet_and_scenes_give_identical_batches(tmp_path, data_cfg):
    """The same rows through the Hub loader and through the scene source: the same tensors."""
    from sdm.data.scenes import scenes_dataset

    scenes = scenes_dataset(8, 32, 32, seed=0)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    scenes.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    common = dict(size=[32, 32], val_fraction=0.25, batch_size=3, num_workers=0, export_png=False,
                  resize="crop", **{"augment.scale": [0.5, 1.0], "augment.hflip": 0.5})
    configs = [data_cfg("sidewalk", path=str(tmp_path / "hub"), **common),
               data_cfg("scenes", **common, **{"scenes.num": 8, "scenes.seed": 0})]
    batches = []
    for cfg in configs:
        dm = SidewalkDataModule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        batches.append([next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))])
    for hub_batch, scene_batch, keys in zip(*batches, ({"image", "label"}, {"image", "label", "index"}), strict=True):
        assert set(hub_batch) == set(scene_batch) == keys  # validation rows carry their index
        assert hub_batch["image"].dtype == torch.float32 and hub_batch["label"].dtype == torch.uint8
        assert hub_batch["image"].shape[1:] == (3, 32, 32) and hub_batch["label"].shape[1:] == (32, 32)
        assert torch.equal(hub_batch["image"], scene_batch["image"])
        assert torch.equal(hub_batch["label"], scene_batch["label"])


def test_cache_is_reused(hub_folder, data_cfg):
    cfg = data_cfg("sidewalk", path=str(hub_folder), size=[32, 48])
    first = prepare_data(cfg, show_progress=False)
    stamp = (first.root / "data.arrow").stat().st_mtime_ns
    second = prepare_data(cfg, show_progress=False)
    assert second.root == first.root and (second.root / "data.arrow").stat().st_mtime_ns == stamp
    other = prepare_data(data_cfg("sidewalk", path=str(hub_folder), size=[32, 48], resize="stretch"),
                         show_progress=False)
    assert other.root != first.root


def bad_rows():
    good = street_like(40, 60, 0)
    wrong_size = hub_row(good[0], good[1][:30])
    out_of_range = hub_row(good[0], np.full((40, 60), 40, np.uint8))
    first_invalid = good[1].copy()
    first_invalid[5, 7] = NUM_CLASSES  # 35: one past the last class
    undecodable = {"pixel_values": {"bytes": b"this is not a png", "path": None},
                   "label": hub_row(*good)["label"]}
    return {
        "size mismatch": (wrong_size, r"row 1: image is 60x40 but label is 60x30"),
        "ids out of range": (out_of_range, r"row 1: field 'label': values \[40\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.34"),
        "id 35": (hub_row(good[0], first_invalid), r"row 1: field 'label': values \[35\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.34"),
        "undecodable": (undecodable, r"row 1: field 'pixel_values': cannot decode image"),
    }


@pytest.mark.parametrize("case", list(bad_rows()))
def test_bad_row_is_named_and_nothing_half_written(case, tmp_path, data_cfg):
    row, message = bad_rows()[case]
    good = hub_row(*street_like(40, 60, 1))
    folder = write_hub_parquet(tmp_path / case.replace(" ", "_"), [good, row, good])
    cfg = data_cfg("sidewalk", path=str(folder), size=[16, 16], export_png=True)
    with pytest.raises(DataError, match=message):
        prepare_data(cfg, show_progress=False)
    assert cache_entries(cfg) == []  # no cache and no temporary folder left behind

    skipped = prepare_data(data_cfg("sidewalk", path=str(folder), size=[16, 16], on_bad_row="skip"),
                           show_progress=False)
    assert skipped.info["rows"] == 2 and skipped.info["skipped"] == 1
    assert skipped.info["problems"][0]["row"] == 1


def test_rgba_and_grayscale_are_converted_and_counted(tmp_path, data_cfg):
    image, label = street_like(40, 60, 2)
    rgba = np.concatenate([image, np.full((40, 60, 1), 255, np.uint8)], -1)
    rows = [hub_row(rgba, label), hub_row(image[..., 0], label), hub_row(image, label)]
    folder = write_hub_parquet(tmp_path / "modes", rows)
    prepared = prepare_data(data_cfg("sidewalk", path=str(folder), size=[16, 16]), show_progress=False)
    assert prepared.info["rows"] == 3
    assert prepared.info["converted_to_rgb"] == {"RGBA": 1, "L": 1}
    twice = write_hub_parquet(tmp_path / "twice", [hub_row(rgba, label), hub_row(rgba, label)])
    assert prepare_data(data_cfg("sidewalk", path=str(twice), size=[16, 16]),
                        show_progress=False).info["converted_to_rgb"] == {"RGBA": 2}


def test_empty_dataset_and_wrong_columns(tmp_path, data_cfg):
    import datasets

    empty = write_hub_parquet(tmp_path / "empty", [])
    cfg = data_cfg("sidewalk", path=str(empty), size=[16, 16])
    with pytest.raises(DataError, match="empty"):
        prepare_data(cfg, show_progress=False)
    assert cache_entries(cfg) == []

    wrong = tmp_path / "wrong" / "data"
    wrong.mkdir(parents=True)
    datasets.Dataset.from_dict({"image": ["a"], "mask": ["b"]}).to_parquet(str(wrong / "train.parquet"))
    with pytest.raises(DataError, match=r"missing \['pixel_values', 'label'\]; found \['image', 'mask'\]"):
        prepare_data(data_cfg("sidewalk", path=str(wrong.parent), size=[16, 16]), show_progress=False)


def test_unreachable_hub_explains_what_to_do(tmp_path):
    with pytest.raises(DataError) as info:
        load_sidewalk("segments/sidewalk-semantic", cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    for hint in ("HF_TOKEN", "data.path=", "data=scenes"):
        assert hint in message


def test_split_is_fixed_across_runs_and_ranks():
    train_a, val_a = split_indices(100, 0.1, seed=3)
    train_b, val_b = split_indices(100, 0.1, seed=3)
    assert np.array_equal(train_a, train_b) and np.array_equal(val_a, val_b)
    assert len(val_a) == 10 and not set(train_a) & set(val_a)
    assert not np.array_equal(val_a, split_indices(100, 0.1, seed=4)[1])
    shards = [list(ResumableShuffleSampler(90, seed=5, rank=r, world_size=3)) for r in range(3)]
    indices = [i for shard in shards for i, _ in shard]
    assert sorted(indices) == list(range(90))  # disjoint and complete
    assert shards[0] == list(ResumableShuffleSampler(90, seed=5, rank=0, world_size=3))


def test_sampler_resume_continues_the_epoch():
    full = ResumableShuffleSampler(20, seed=1)
    full.set_epoch(2)
    expected = list(full)
    resumed = ResumableShuffleSampler(20, seed=1)
    resumed.resume(epoch=2, consumed=8)
    resumed.set_epoch(2)
    assert list(resumed) == expected[8:]
    assert list(resumed) == expected  # the skip applies once


def test_workers_get_different_augmentations(data_cfg):
    cfg = data_cfg("scenes", size=[32, 32], **{"scenes.num": 2})
    prepared = prepare_data(cfg, show_progress=False)
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    same_row = PairDataset(prepared, np.zeros(8, dtype=np.int64), dm.train_set.transform)
    loader = torch.utils.data.DataLoader(same_row, batch_size=1, num_workers=2,
                                         worker_init_fn=seed_worker)
    images = [batch["image"][0] for batch in loader]
    distinct = {tuple(img.flatten()[::97].tolist()) for img in images}
    assert len(distinct) >= 6, "workers repeated each other's augmentation stream"
    # seeded per sample through the sampler: the same (index, seed) gives the same crop
    a, b = same_row[(0, 123)], same_row[(0, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_prepare_cli(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "HOME": str(tmp_path)}
    ok = subprocess.run(
        [sys.executable, "-m", "sdm.cli.prepare", "data.scenes.num=6", "data.size=32",
         f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "prepared 6 rows at 32x32" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "sdm.cli.prepare", "data=sidewalk", f"data.path={tmp_path / 'nowhere'}",
         f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run2'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr or "neither a folder" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_streaming_from_a_local_copy_splits_by_rank(tmp_path, data_cfg):
    from sdm.data.sources import load_sidewalk
    from sdm.data.streaming import StreamingPairs, in_validation

    folder = write_hub_parquet(tmp_path / "stream", [hub_row(*street_like(54, 96, s)) for s in range(12)])
    cfg = data_cfg("sidewalk", path=str(folder), size=[32, 32], streaming=True, val_fraction=0.25,
                   batch_size=2, num_workers=0)
    rows = list(load_sidewalk(str(folder), streaming=True, cache_dir=cfg.hub_cache_dir))
    val_rows = sum(in_validation(r, 0.25, 0) for r in rows)
    assert 0 < val_rows < len(rows)
    one_pass = [[bytes(item["label"].numpy()) for item in StreamingPairs(cfg, "train", rank, 2, None, repeat=False)]
                for rank in range(2)]
    assert len(set(one_pass[0]) | set(one_pass[1])) == len(rows) - val_rows  # ranks cover the train split
    assert not set(one_pass[0]) & set(one_pass[1])  # and never share a row within a pass
    val = list(StreamingPairs(cfg, "val", 0, 1, None))
    assert len(val) == val_rows and all(v["image"].shape == (3, 32, 32) for v in val)

    dm = SidewalkDataModule(cfg)
    dm.prepare_data()  # nothing to cache when streaming
    dm.setup("fit")
    stream = iter(dm.train_dataloader())
    batches = [next(stream) for _ in range(len(rows))]  # the training stream repeats
    assert batches[0]["image"].shape == (2, 3, 32, 32) and batches[0]["label"].dtype == torch.uint8
    assert not Path(cfg.cache_dir).exists()


# --- exact mappings and the training transform ---------------------------------------------


def test_label_ids_up_to_34_are_accepted_and_35_refused():
    from PIL import Image

    from sdm.data.rows import RowError, label_to_ids

    ids = np.arange(35, dtype=np.uint8).reshape(5, 7)
    assert np.array_equal(label_to_ids(Image.fromarray(ids)), ids)
    assert np.array_equal(label_to_ids(Image.fromarray(colorize(ids))), ids)  # palette colours
    ids[4, 6] = 35
    with pytest.raises(RowError, match=r"values \[35\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.34"):
        label_to_ids(Image.fromarray(ids))


def test_batch_item_maps_pixels_exactly():
    from sdm.data.transforms import to_item

    image = np.array([[[0, 255, 51]], [[127, 128, 204]]], dtype=np.uint8)  # 2 x 1 x 3
    label = np.array([[0], [34]], dtype=np.uint8)
    item = to_item(image, label)
    assert item["image"].shape == (3, 2, 1) and item["image"].dtype == torch.float32
    expected = torch.tensor(image, dtype=torch.float64).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(item["image"].double(), expected, rtol=0, atol=1e-6)
    assert item["image"].min() == -1 and item["image"].max() == 1
    assert item["label"].dtype == torch.uint8 and item["label"].tolist() == [[0], [34]]
    image[0, 0, 0] = 9
    assert item["image"][0, 0, 0] == -1  # a copy: the cache's memory is never aliased


def test_augmented_image_still_lines_up_with_its_mask(tmp_path, data_cfg):
    """Images that are the colouring of their own mask: after random crops and flips, every
    pixel away from a class boundary still has its mask's colour, and no id is interpolated."""
    from sdm.data.prepare import PreparedData

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(3):
        blocks = rng.choice([1, 9, 20, 34], size=(6, 8))
        label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)  # 48 x 64, blocks of 8
        label[:, :8] = 9  # class ids 1 and 9 side by side: linear interpolation would show 2..8
        label[:, 8:16] = 1
        rows.append(hub_row(colorize(label), label))
    folder = write_hub_parquet(tmp_path / "coloured", rows)
    cfg = data_cfg("sidewalk", path=str(folder), size=[48, 64], val_fraction=0.0, batch_size=1,
                   num_workers=0, export_png=False, **{"augment.scale": [0.3, 0.6], "augment.hflip": 0.5})
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    assert isinstance(dm.prepared, PreparedData)
    flipped = 0
    for seed in range(12):
        item = dm.train_set[(seed % 3, seed)]
        image = ((item["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        label = item["label"].numpy()
        assert set(np.unique(label)) <= {1, 9, 20, 34}
        padded = np.pad(label, 1, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        interior = (windows == label[:, :, None, None]).all(axis=(2, 3))
        assert interior.mean() > 0.5
        diff = np.abs(image.astype(int) - colorize(label).astype(int)).max(axis=2)
        assert diff[interior].max() <= 2, f"seed {seed}: image and mask no longer line up"
        flipped += int(label[0, -1] == 9)  # the 9-stripe sits on the left unless flipped
    assert 0 < flipped < 12


def test_augmentation_seeds_change_with_epoch_and_position():
    sampler = ResumableShuffleSampler(16, seed=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(i for i, _ in epoch0) == sorted(i for i, _ in epoch1) == list(range(16))
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]  # a new order each epoch
    seeds0 = {i: s for i, s in epoch0}
    assert all(seeds0[i] != s for i, s in epoch1)  # a row is never cropped the same way twice
    assert len({s for _, s in epoch0}) == 16 and all(0 <= s < 2**32 for _, s in epoch0)
    assert list(ResumableShuffleSampler(16, seed=3)) == epoch0
    assert [s for _, s in ResumableShuffleSampler(16, seed=4)] != [s for _, s in epoch0]


# --- what preparation writes ------------------------------------------------------------------


def test_prepared_statistics_and_exports_are_exact(tmp_path, data_cfg):
    from PIL import Image

    from sdm.data.classes import CLASS_NAMES
    from sdm.data.prepare import decode_row, describe

    first = np.zeros((8, 8), np.uint8)
    first[:2] = 3  # 16 pixels of class 3, 48 of class 0
    second = np.full((8, 8), 5, np.uint8)
    second[:, :4] = 3  # 32 of class 3, 32 of class 5
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    rows = [hub_row(rgb, first), hub_row(np.zeros((6, 6, 3), np.uint8), np.full((4, 6), 2, np.uint8)),
            hub_row(rgb, second)]
    folder = write_hub_parquet(tmp_path / "known", rows)
    cfg = data_cfg("sidewalk", path=str(folder), size=[8, 8], on_bad_row="skip", export_png=True)
    prepared = prepare_data(cfg, show_progress=False)
    info = prepared.info
    assert set(info) == {"key", "source", "path", "rows", "source_rows", "skipped", "problems", "converted_to_rgb",
                         "source_sizes", "size", "resize", "num_classes", "class_table", "instances", "ignore", "class_names",
                         "class_pixel_frequency", "images_per_class", "classes_present", "seconds"}
    assert (info["key"], info["source"], info["path"]) == (prepared.root.name, "sidewalk", str(folder))
    assert (info["class_table"], info["ignore"]) == ("sidewalk", 0)
    assert info["seconds"] >= 0 and info["seconds"] == round(info["seconds"], 2)
    assert sorted(p.name for p in prepared.root.iterdir()) == [
        "class_frequency.png", "colored_masks", "data.arrow", "dataset_info.json", "images", "labels", "preview.png"]
    assert (info["rows"], info["source_rows"], info["skipped"]) == (2, 3, 1)
    assert info["problems"] == [{"row": 1, "reason": "image is 6x6 but label is 6x4 (width x height); they must match"}]
    assert info["size"] == [8, 8] and info["resize"] == "crop" and info["num_classes"] == 35
    assert info["source_sizes"] == {"8x8": 2} and info["classes_present"] == 3
    freq = info["class_pixel_frequency"]
    assert freq[CLASS_NAMES[0]] == 48 / 128 and freq[CLASS_NAMES[3]] == 48 / 128 and freq[CLASS_NAMES[5]] == 32 / 128
    assert info["images_per_class"][CLASS_NAMES[3]] == 2 and info["images_per_class"][CLASS_NAMES[5]] == 1
    assert info["images_per_class"][CLASS_NAMES[0]] == 1 and info["class_names"] == list(CLASS_NAMES)
    stored = prepared.open()
    assert [r["index"] for r in stored] == [0, 2]  # the source row numbers survive the skip
    image, label = decode_row(stored[1], prepared.size)
    assert np.array_equal(image, rgb) and np.array_equal(label, second)
    with Image.open(prepared.root / "labels" / "000002.png") as png:
        assert np.array_equal(np.asarray(png), second)
    with Image.open(prepared.root / "colored_masks" / "000000.png") as png:
        assert np.array_equal(np.asarray(png), colorize(first))
    with Image.open(prepared.root / "images" / "000002.png") as png:
        assert np.array_equal(np.asarray(png), rgb)
    assert sorted(p.name for p in (prepared.root / "images").iterdir()) == ["000000.png", "000002.png"]
    names = [CLASS_NAMES[i] for i in (0, 3, 5)]  # the classes found, most pixels first; no 0.0 % entries
    assert describe(prepared).splitlines() == [
        f"prepared 2 rows at 8x8 (crop) in {prepared.root}",
        "  classes found: 3 of 35 (table sidewalk); skipped rows: 1; converted to RGB: none",
        "  pixel shares:",
        "    " + ", ".join(f"{n} {f}" for n, f in zip(names, ["37.5%", "37.5%", "25.0%"], strict=True)),
        f"  look at: {prepared.root / 'preview.png'} and {prepared.root / 'class_frequency.png'}",
    ]
    # the same settings with the strict policy: the cached refusal is reported, not silently used
    with pytest.raises(DataError, match=r"(?s)1 of 3 rows are unusable.*row 1: image is 6x6"):
        prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8], on_bad_row="error"), show_progress=False)


def test_refusal_lists_at_most_ten_rows_and_bad_policy_is_named(tmp_path, data_cfg):
    bad = hub_row(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 99, np.uint8))
    folder = write_hub_parquet(tmp_path / "many", [bad] * 12 + [hub_row(*street_like(8, 8, 0))])
    with pytest.raises(DataError) as caught:
        prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8]), show_progress=False)
    message = str(caught.value)
    assert "12 of 13 rows are unusable" in message and "row 9:" in message and "row 10:" not in message
    assert "... and 2 more" in message and "data.on_bad_row=skip" in message
    all_bad = write_hub_parquet(tmp_path / "all", [bad, bad])
    with pytest.raises(DataError, match=r"all 2 rows are unusable; first: row 0: field 'label': values \[99\]"):
        prepare_data(data_cfg("sidewalk", path=str(all_bad), size=[8, 8], on_bad_row="skip"), show_progress=False)
    with pytest.raises(DataError, match="data.on_bad_row must be 'error' or 'skip', got 'ignore'"):
        prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8], on_bad_row="ignore"), show_progress=False)


def test_size_and_resize_settings_are_checked():
    from sdm.data.rows import parse_size

    assert parse_size(16) == (16, 16) and parse_size([8, 4096]) == (8, 4096)
    for bad in ([7, 16], [16, 4097], [16], "big", [0, 0]):
        with pytest.raises(ValueError, match="data.size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="data.resize must be one of"):
        resize_pair(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), (2, 2), "squash")


# --- the DataModule's pieces -------------------------------------------------------------------


def test_split_sizes_and_refusals():
    for rows, fraction, expected in [(20, 0.05, 1), (3, 0.01, 1), (10, 0.0, 0), (100, 0.3, 30)]:
        train, val = split_indices(rows, fraction, seed=1)
        assert len(val) == expected and len(train) == rows - expected
        assert list(train) == sorted(train) and list(val) == sorted(val)
        assert sorted([*train, *val]) == list(range(rows))
    assert not np.array_equal(split_indices(100, 0.3, 1)[1], split_indices(100, 0.3, 2)[1])
    for fraction in (1.0, -0.1):
        with pytest.raises(DataError, match=r"data.val_fraction must lie in \[0, 1\)"):
            split_indices(10, fraction, 0)
    with pytest.raises(DataError, match="1 rows leave nothing to train on with data.val_fraction=0.5"):
        split_indices(1, 0.5, 0)


def test_sampler_shards_drop_the_remainder_and_resume_only_its_epoch():
    shards = [ResumableShuffleSampler(10, seed=0, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    items = [list(s) for s in shards]
    assert all(len(i) == 3 for i in items)
    assert len({i for shard in items for i, _ in shard}) == 9  # one row left out, none shared
    with pytest.raises(DataError, match="2 training rows cannot be shared by 3 ranks"):
        ResumableShuffleSampler(2, seed=0, world_size=3)
    sampler = ResumableShuffleSampler(12, seed=2)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    sampler.resume(epoch=0, consumed=5)  # a skip for another epoch is not applied here
    assert list(sampler) == epoch1
    sampler.set_epoch(0)
    fresh = list(ResumableShuffleSampler(12, seed=2))
    assert list(sampler) == fresh[5:]


def test_datamodule_loaders_and_resume_state(data_cfg):
    from types import SimpleNamespace

    cfg = data_cfg("scenes", size=[16, 16], batch_size=3, num_workers=2, **{"scenes.num": 12})
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    first_train = dm.train_set
    dm.setup("fit")
    assert dm.train_set is first_train  # set up once
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert (train.batch_size, train.num_workers, train.drop_last, train.persistent_workers) == (3, 2, True, True)
    assert train.worker_init_fn is seed_worker and isinstance(train.sampler, ResumableShuffleSampler)
    assert (val.batch_size, val.drop_last) == (3, False) and not isinstance(val.sampler, ResumableShuffleSampler)
    assert dm.val_set.transform is None and dm.train_set.transform is not None
    assert dm.state_dict() == {}  # no trainer yet
    progress = SimpleNamespace(current=SimpleNamespace(ready=2))
    dm.trainer = SimpleNamespace(current_epoch=1, global_rank=0, world_size=1,
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    assert dm.state_dict() == {"epoch": 1, "consumed": 6}
    dm.trainer.current_epoch = 0  # Lightning restores its epoch counter after the loaders exist
    dm.load_state_dict({"epoch": 1, "consumed": 6})
    # iterated before any set_epoch, as DataLoader workers do on a resume: epoch 1 all the same
    resumed = dm.train_dataloader().sampler
    whole = ResumableShuffleSampler(len(dm.train_set), int(cfg.split_seed))
    whole.set_epoch(1)
    assert list(resumed) == list(whole)[6:]
    dm.load_state_dict({})
    dm.trainer.current_epoch = 1
    assert list(dm.train_dataloader().sampler) == list(whole)
    # saved at the last batch of epoch 1: Lightning resumes in epoch 2, so the stream does too
    progress.current.ready = len(dm.sampler) // 3
    assert dm.state_dict() == {"epoch": 2, "consumed": 0}
    progress.current.ready -= 1
    assert dm.state_dict() == {"epoch": 1, "consumed": 3 * progress.current.ready}


def test_too_few_rows_for_a_batch_is_named(data_cfg):
    cfg = data_cfg("scenes", size=[16, 16], batch_size=8, num_workers=0, **{"scenes.num": 6})
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"\d+ training rows over 1 rank\(s\) do not fill one batch of 8"):
        dm.train_dataloader()


def test_pair_dataset_opens_lazily_and_pickles_without_the_memory_map(data_cfg):
    import pickle

    cfg = data_cfg("scenes", size=[16, 16], **{"scenes.num": 3})
    prepared = prepare_data(cfg, show_progress=False)
    dataset = PairDataset(prepared, np.array([2, 0]), None)
    assert dataset._rows is None and len(dataset) == 2
    item = dataset[0]
    from sdm.data.prepare import decode_row

    image, label = decode_row(prepared.open()[2], prepared.size)
    assert torch.equal(item["label"], torch.from_numpy(label.copy()))
    assert dataset._rows is not None
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._rows is None and torch.equal(clone[1]["image"], dataset[1]["image"])
    assert torch.equal(dataset[(0, 5)]["image"], item["image"])  # no transform: the seed changes nothing


def test_seed_worker_seeds_every_stream_of_its_worker(monkeypatch):
    import random
    from types import SimpleNamespace

    from sdm.data.transforms import train_transform

    transform = train_transform((16, 16), scale=(0.3, 1.0))
    image, label = street_like(32, 32, 0)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(dataset=SimpleNamespace(transform=transform)))

    def draws(seed: int):
        torch.manual_seed(seed)  # what the DataLoader does per worker before worker_init_fn
        seed_worker(0)
        crop = transform(image=image, mask=label)["mask"]
        return random.random(), float(np.random.rand()), crop.tobytes()

    assert draws(1234) == draws(1234)
    other = draws(98765)
    assert all(a != b for a, b in zip(draws(1234), other, strict=True))
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)
    seed_worker(0)  # in the main process: nothing to seed but the global streams


def test_batch_label_is_a_copy_of_the_cache():
    from sdm.data.transforms import to_item

    label = np.array([[1, 2]], dtype=np.uint8)
    item = to_item(np.zeros((1, 2, 3), np.uint8), label)
    label[0, 0] = 7
    assert item["label"].tolist() == [[1, 2]]
    frozen = np.frombuffer(bytes([3, 4]), dtype=np.uint8).reshape(1, 2)  # read-only, like the Arrow cache
    assert to_item(np.zeros((1, 2, 3), np.uint8), frozen)["label"].tolist() == [[3, 4]]


def test_setup_wires_augmentations_splits_and_ranks(tmp_path, data_cfg):
    from types import SimpleNamespace

    def augmentations(transform):
        crop, flip = transform.transforms
        return tuple(crop.scale), crop.size, flip.p

    cfg = data_cfg("scenes", size=[16, 24], num_workers=0, **{"scenes.num": 8, "augment.scale": [0.4, 0.9],
                                                              "augment.hflip": 0.25})
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    assert augmentations(dm.train_set.transform) == ((0.4, 0.9), (16, 24), 0.25) and dm.val_set.transform is None
    assert len(dm.train_set) + len(dm.val_set) == 8 and dm.prepared is not None
    bare = data_cfg("scenes", size=[16, 16], num_workers=0, **{"scenes.num": 8})
    bare.augment = None  # no augment group: no random crop, no flip
    plain = SidewalkDataModule(bare)
    plain.setup("fit")
    (flip,) = plain.train_set.transform.transforms  # scale [1, 1]: no crop at all
    assert flip.p == 0.0

    folder = write_hub_parquet(tmp_path / "stream", [hub_row(*street_like(40, 40, s)) for s in range(6)])
    stream_cfg = data_cfg("sidewalk", path=str(folder), size=[16, 16], streaming=True, num_workers=3,
                          batch_size=2, **{"augment.scale": [0.5, 1.0], "augment.hflip": 0.5})
    streaming = SidewalkDataModule(stream_cfg)
    streaming.trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=0)
    streaming.setup("fit")
    train, val = streaming.train_set, streaming.val_set
    assert (train.split, train.rank, train.world_size, val.split, val.rank) == ("train", 1, 2, "val", 1)
    assert augmentations(train.transform) == ((0.5, 1.0), (16, 16), 0.5) and val.transform is None
    assert streaming.train_dataloader().num_workers == 0  # one shard per rank cannot feed several workers
    assert streaming.state_dict() == {}


def test_cache_root_defaults_to_runs_data():
    from omegaconf import OmegaConf

    from sdm.data.prepare import cache_root_for

    assert cache_root_for(OmegaConf.create({"cache_dir": None})) == Path("runs/data")
    assert cache_root_for(OmegaConf.create({})) == Path("runs/data")
    assert cache_root_for(OmegaConf.create({"cache_dir": "~/sdm-cache"})) == Path.home() / "sdm-cache"
