"""The data layer's edges: image modes, exact resize geometry, cache keys and defaults, the
DataModule's rank and resume wiring. Written from the data package's mutation run."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.rows import hub_row, street_like, write_hub_parquet
from omegaconf import OmegaConf
from PIL import Image

from sdm.core.errors import DataError
from sdm.data.classes import colorize, decolorize
from sdm.data.datamodule import ResumableShuffleSampler, SidewalkDataModule, seed_worker
from sdm.data.prepare import decode_row, describe, prepare_data
from sdm.data.rows import (
    RowError,
    clean_row,
    image_to_rgb,
    label_to_ids,
    open_image,
    parse_size,
    read_rgb_file,
    resize_pair,
)

# --- image modes ----------------------------------------------------------------------------


def test_transparent_images_are_composited_on_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 0], [128, 255]]
    rgb, mode = image_to_rgb(Image.fromarray(rgba, "RGBA"))
    assert mode == "RGBA" and rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [200, 100, 50] and rgb[0, 1].tolist() == [0, 0, 0]  # transparent -> black
    assert np.abs(rgb[1, 0].astype(int) - [100, 50, 25]).max() <= 1  # half transparent: half the colour

    la = np.stack([np.full((2, 2), 90, np.uint8), np.array([[255, 0], [0, 255]], np.uint8)], -1)
    rgb, mode = image_to_rgb(Image.fromarray(la, "LA"))
    assert mode == "LA" and rgb[:, :, 0].tolist() == [[90, 0], [0, 90]] and (rgb[..., 1] == rgb[..., 0]).all()

    pa = Image.fromarray(la[..., 0], "L").convert("RGBA")
    pa.putalpha(Image.fromarray(la[..., 1]))
    pa = pa.convert("PA")
    rgb, mode = image_to_rgb(pa)
    assert mode == "PA" and rgb[0, 1].tolist() == [0, 0, 0] and rgb[0, 0].tolist() == [90, 90, 90]

    keyed = Image.fromarray(np.array([[90, 40]], np.uint8), "L")
    keyed.info["transparency"] = 40  # a grey level marked transparent: black, like alpha 0
    rgb, mode = image_to_rgb(keyed)
    assert mode == "L" and rgb.tolist() == [[[90, 90, 90], [0, 0, 0]]]

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    rgb, mode = image_to_rgb(palette)
    assert mode == "P" and rgb.tolist() == [[[10, 20, 30], [40, 50, 60]]]  # no transparency: plain colours
    palette.info["transparency"] = 1
    rgb, _ = image_to_rgb(palette)
    assert rgb.tolist() == [[[10, 20, 30], [0, 0, 0]]]  # the transparent index becomes black


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16_bit_images_are_scaled_to_8_bits(mode):
    deep = np.array([[0, 1000, 65535]], np.uint16)
    raw = deep.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    image = (Image.frombytes(mode, (3, 1), raw) if mode != "I" else Image.fromarray(deep.astype(np.int32), "I"))
    rgb, reported = image_to_rgb(image)
    assert reported == mode and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, int(1000 * 255 / 65535), 255] and (rgb[..., 2] == rgb[..., 0]).all()
    near = Image.frombytes("I;16", (3, 1), np.array([[0, 128, 256]], "<u2").tobytes())  # past 255: 16-bit
    assert image_to_rgb(near)[0][0, :, 0].tolist() == [0, 0, 0]
    shallow = Image.fromarray(np.array([[0, 17, 255]], np.int32), "I")  # already in 0..255: kept as is
    assert image_to_rgb(shallow)[0][0, :, 1].tolist() == [0, 17, 255]
    black = Image.fromarray(np.zeros((1, 2), np.int32), "I")  # a peak of 0 must not divide by zero
    assert image_to_rgb(black)[0].tolist() == [[[0, 0, 0], [0, 0, 0]]]


def test_images_open_from_arrays_paths_and_bytes(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(np.asarray(open_image(array, "pixel_values")), array)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    by_path = open_image({"bytes": None, "path": str(path)}, "pixel_values")
    assert np.array_equal(np.asarray(by_path), array)
    by_bytes = open_image({"bytes": path.read_bytes(), "path": "/nowhere.png"}, "pixel_values")
    assert np.array_equal(np.asarray(by_bytes), array)  # bytes win over a stale path
    for empty in ({"bytes": None, "path": None}, {}):
        with pytest.raises(RowError, match="field 'label': expected an image, got dict"):
            open_image(empty, "label")
    with pytest.raises(RowError, match="field 'pixel_values': expected an image, got str"):
        open_image("a.png", "pixel_values")


def test_label_modes_and_the_class_count_of_a_row():
    ids = np.array([[0, 3], [7, 34]], np.uint8)
    for mode in ("I;16", "I;16B", "I;16L"):
        raw = ids.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        assert label_to_ids(Image.frombytes(mode, (2, 2), raw)).tolist() == ids.tolist()
    assert label_to_ids(Image.fromarray(ids.astype(np.int32), "I")).tolist() == ids.tolist()
    palette = Image.fromarray(ids, "P")
    assert label_to_ids(palette).tolist() == ids.tolist()  # palette index = class id
    rgba = Image.fromarray(np.concatenate([colorize(ids), np.full((2, 2, 1), 255, np.uint8)], -1), "RGBA")
    assert label_to_ids(rgba).tolist() == ids.tolist()
    assert label_to_ids(Image.fromarray(ids)).dtype == np.uint8
    with pytest.raises(RowError, match="unsupported label mode 'F'"):
        label_to_ids(Image.fromarray(ids.astype(np.float32)))
    many = np.arange(50, 60, dtype=np.uint8).reshape(2, 5)
    with pytest.raises(RowError, match=r"values \[50, 51, 52, 53, 54, 55, 56, 57\] ... in 10 pixels"):
        label_to_ids(Image.fromarray(many))  # at most eight listed

    image = street_like(4, 4, 0)[0]
    row = hub_row(image, np.full((4, 4), 7, np.uint8))
    assert clean_row(row).label.max() == 7
    with pytest.raises(RowError, match=r"values \[7\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.4"):
        clean_row(row, 5)
    broken = {"pixel_values": row["pixel_values"], "label": {"bytes": b"not a png", "path": None}}
    with pytest.raises(RowError, match="field 'label': cannot decode image"):
        clean_row(broken)


def test_decolorize_refuses_what_is_not_an_rgb_mask():
    for shape in [(4, 3), (4, 4, 4), (4,)]:
        with pytest.raises(ValueError, match="expected an H x W x 3 RGB mask"):
            decolorize(np.zeros(shape, np.uint8))
    assert decolorize(colorize(np.array([[2, 9]], np.uint8))).dtype == np.uint8


def test_read_rgb_file_converts_resizes_and_names_a_bad_file(tmp_path):
    grey = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (6, 1))  # 6 x 12, mode L
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    same = read_rgb_file(path)
    assert same.shape == (6, 12, 3) and np.array_equal(same[..., 1], grey)
    assert np.array_equal(read_rgb_file(path, (6, 12)), same)  # the right size is not resampled
    small = read_rgb_file(path, (3, 4))  # (H, W): 3 rows of 4
    expected = np.asarray(Image.fromarray(grey).convert("RGB").resize((4, 3), Image.Resampling.LANCZOS))
    assert small.shape == (3, 4, 3) and np.array_equal(small, expected)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match=f"real image '{bad}' cannot be read"):
        read_rgb_file(bad, None, "real image")
    with pytest.raises(DataError, match="image file '.*missing.png' cannot be read"):
        read_rgb_file(tmp_path / "missing.png")


# --- sizes and resizing ---------------------------------------------------------------------


def test_size_limits_per_side():
    assert parse_size([4096, 8]) == (4096, 8) and parse_size([8, 4096]) == (8, 4096)
    for bad in ([16, 7], [4097, 16], [16, 4097], [7, 7]):
        with pytest.raises(ValueError, match="8..4096 per side"):
            parse_size(bad)


def test_crop_geometry_is_centred_and_exact():
    # 40 x 94 -> 32 x 32: scale 0.8, scaled to 75 x 32, centre crop from column 21 (43 // 2: an odd
    # margin, where a rounded half would start at 22)
    rows, cols = np.meshgrid(np.arange(40), np.arange(94), indexing="ij")
    label = ((rows // 5) * 3 + cols // 13).astype(np.uint8) % 35
    image = np.stack([label * 7] * 3, -1).astype(np.uint8)
    out_image, out_label = resize_pair(image, label, (32, 32), "crop")
    scaled = Image.fromarray(label).resize((75, 32), Image.Resampling.NEAREST)
    assert np.array_equal(out_label, np.asarray(scaled.crop((21, 0, 53, 32))))
    tall_rows, tall_cols = np.meshgrid(np.arange(94), np.arange(40), indexing="ij")
    tall = ((tall_rows // 13) * 3 + tall_cols // 5).astype(np.uint8)  # 94 x 40: crop from row 21
    _, out_tall = resize_pair(np.zeros((94, 40, 3), np.uint8), tall, (32, 32), "crop")
    scaled = Image.fromarray(tall).resize((32, 75), Image.Resampling.NEAREST)
    assert np.array_equal(out_tall, np.asarray(scaled.crop((0, 21, 32, 53))))
    # the image goes through Lanczos (reducing_gap 2: PIL's fast path, within 1 level of exact)
    lanczos = Image.fromarray(image).resize((75, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    assert np.array_equal(out_image, np.asarray(lanczos.crop((21, 0, 53, 32))))
    stretched = resize_pair(image, label, (16, 16))  # the default mode stretches
    assert np.array_equal(stretched[1], np.asarray(Image.fromarray(label).resize((16, 16), Image.Resampling.NEAREST)))


def test_downscaling_uses_lanczos_with_a_reducing_gap_of_two():
    image = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    out, _ = resize_pair(image, np.zeros((128, 128), np.uint8), (24, 24))
    for gap, equal in ((2.0, True), (None, False), (3.0, False)):
        reference = np.asarray(Image.fromarray(image).resize((24, 24), Image.Resampling.LANCZOS, reducing_gap=gap))
        assert np.array_equal(out, reference) == equal, gap
    bicubic = np.asarray(Image.fromarray(image).resize((24, 24), reducing_gap=2.0))
    assert not np.array_equal(out, bicubic)


def test_augmentation_keeps_the_aspect_ratio_within_ten_percent():
    from sdm.data.transforms import train_transform

    for size in [(16, 16), (16, 32)]:
        crop = train_transform(size, (0.5, 1.0)).transforms[0]
        aspect = size[1] / size[0]
        low, high = crop.ratio
        assert low <= aspect <= high and high / low == pytest.approx(1 / 0.81)
    for bad in [(0.0, 1.0), (0.5, 1.5), (0.9, 0.5)]:
        with pytest.raises(ValueError, match="0 < low <= high <= 1"):
            train_transform((16, 16), bad)


def test_a_scale_of_one_keeps_every_pixel_and_only_flips():
    """scale [1, 1] is no crop at all: no resize that would blur the image against its mask."""
    from sdm.data.transforms import train_transform

    rng = np.random.default_rng(0)
    image, label = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 35, (32, 32), dtype=np.uint8)
    transform = train_transform((32, 32), (1.0, 1.0), hflip=0.5)
    seen = set()
    for seed in range(8):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=label)
        flipped = np.array_equal(out["image"], image[:, ::-1])
        assert flipped or np.array_equal(out["image"], image)
        assert np.array_equal(out["mask"], label[:, ::-1] if flipped else label)
        seen.add(flipped)
    assert seen == {True, False}
    blurry = train_transform((32, 32), (0.99, 1.0), hflip=0.0)  # any crop resizes
    assert len(blurry.transforms) == 2


# --- preparation: defaults, keys, counting --------------------------------------------------


def minimal_cfg(folder, tmp_path, **extra):
    """A data config with only the keys a user must give: everything else takes its default."""
    return OmegaConf.create({"name": "sidewalk", "path": str(folder), "size": [8, 8],
                             "cache_dir": str(tmp_path / "cache"), "hub_cache_dir": str(tmp_path / "hf"), **extra})


def test_preparation_defaults_when_keys_are_absent(tmp_path):
    bad = hub_row(*street_like(8, 8, 1))
    bad["label"] = hub_row(np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 34, np.uint8))["label"]
    folder = write_hub_parquet(tmp_path / "src", [hub_row(*street_like(8, 16, 0)), bad])
    cfg = minimal_cfg(folder, tmp_path / "a")
    prepared = prepare_data(cfg, show_progress=False)  # 34 is valid with the default 35 classes
    assert (prepared.info["resize"], prepared.info["num_classes"], prepared.info["rows"]) == ("stretch", 35, 2)
    assert not (prepared.root / "images").exists()  # no PNG export unless asked
    nested = minimal_cfg(folder, tmp_path / "b", num_classes=20)
    nested.cache_dir = str(tmp_path / "b" / "deep" / "er")  # parents are created
    with pytest.raises(DataError, match=r"values \[34\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.19"):  # policy defaults to error
        prepare_data(nested, show_progress=False)


def test_cache_key_follows_the_data_and_both_sides_of_the_size(tmp_path, data_cfg):
    folder = write_hub_parquet(tmp_path / "src", [hub_row(*street_like(16, 16, 0))])
    cfg = data_cfg("sidewalk", path=str(folder), size=[16, 32])
    first = prepare_data(cfg, show_progress=False)
    assert prepare_data(data_cfg("sidewalk", path=str(folder), size=[32, 32]), show_progress=False).root != first.root
    time.sleep(0.01)
    write_hub_parquet(folder, [hub_row(*street_like(16, 16, 5))])  # new content at the same path
    second = prepare_data(cfg, show_progress=False)
    assert second.root != first.root, "a changed source must not be served from the old cache"
    _, label = decode_row(second.open()[0], second.size)
    expected = resize_pair(*street_like(16, 16, 5), (16, 32), str(cfg.resize))[1]
    assert np.array_equal(label, expected)


def test_scenes_record_their_source_and_describe_height_then_width(data_cfg):
    prepared = prepare_data(data_cfg("scenes", size=[16, 24], **{"scenes.num": 2}), show_progress=False)
    assert prepared.info["path"] == "scenes" and prepared.info["source"] == "scenes"
    assert describe(prepared).splitlines()[0].startswith("prepared 2 rows at 16x24 (")


def test_every_bad_row_is_counted_and_the_listing_is_exact(tmp_path, data_cfg):
    good = hub_row(*street_like(8, 8, 0))
    bad = hub_row(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 99, np.uint8))
    folder = write_hub_parquet(tmp_path / "two", [good, bad, good, bad, good])
    cfg = data_cfg("sidewalk", path=str(folder), size=[8, 8])
    with pytest.raises(DataError) as caught:
        prepare_data(cfg, show_progress=False)
    lines = str(caught.value).splitlines()
    reason = ("field 'label': values [99] in 16 pixels are not classes of the 'sidewalk' table (ids 0..34); the files "
              "hold ids up to 99: are they another dataset's (data/classes=ade20k, coco_stuff, cityscapes, celebamask) "
              "or does the table need a remap?")
    assert lines == [f"{folder.name}-train-{lines[0].split('-')[2]}-8x8-{cfg.resize}: 2 of 5 rows are unusable, so the "
                     "dataset is refused:", f"  row 1: {reason}", f"  row 3: {reason}",
                     "Fix the rows, or pass data.on_bad_row=skip to leave them out."]
    ten = write_hub_parquet(tmp_path / "ten", [bad] * 10 + [good])
    with pytest.raises(DataError) as caught:
        prepare_data(data_cfg("sidewalk", path=str(ten), size=[8, 8]), show_progress=False)
    assert "row 9:" in str(caught.value) and "more" not in str(caught.value)


def test_at_most_a_hundred_problems_are_kept(tmp_path, data_cfg):
    bad = hub_row(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 99, np.uint8))
    folder = write_hub_parquet(tmp_path / "many", [bad] * 101 + [hub_row(*street_like(8, 8, 0))])
    info = prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8], on_bad_row="skip"),
                        show_progress=False).info
    assert info["skipped"] == 101 and len(info["problems"]) == 100 and info["problems"][-1]["row"] == 99


def test_single_pixel_classes_count_images_and_one_row_is_enough(tmp_path, data_cfg):
    from sdm.data.classes import CLASS_NAMES

    label = np.zeros((8, 8), np.uint8)
    label[3, 3] = 12  # one pixel of class 12
    folder = write_hub_parquet(tmp_path / "one", [hub_row(np.zeros((8, 8, 3), np.uint8), label)])
    started = time.perf_counter()
    info = prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8]), show_progress=False).info
    elapsed = time.perf_counter() - started
    assert info["rows"] == 1 and info["images_per_class"][CLASS_NAMES[12]] == 1
    assert isinstance(info["seconds"], float) and 0 <= info["seconds"] <= elapsed + 0.01


def test_preview_shows_images_above_masks_and_at_most_sixteen(tmp_path, data_cfg):
    from sdm.data.pictures import pairs_grid

    rows = [street_like(8, 8, s) for s in range(20)]
    folder = write_hub_parquet(tmp_path / "twenty", [hub_row(*r) for r in rows])
    prepared = prepare_data(data_cfg("sidewalk", path=str(folder), size=[8, 8]), show_progress=False)
    with Image.open(prepared.root / "preview.png") as png:
        preview = np.asarray(png.convert("RGB"))
    assert np.array_equal(preview, pairs_grid([r[0] for r in rows[:16]], [r[1] for r in rows[:16]]))


def test_a_cache_finished_by_another_process_is_used_and_ours_removed(tmp_path, data_cfg, monkeypatch):
    from pathlib import Path

    folder = write_hub_parquet(tmp_path / "race", [hub_row(*street_like(8, 8, 0))])
    cfg = data_cfg("sidewalk", path=str(folder), size=[8, 8])
    theirs = prepare_data(cfg, show_progress=False)
    stamp = (theirs.root / "data.arrow").stat().st_mtime_ns
    info_file = theirs.root / "dataset_info.json"
    saved = info_file.read_text()
    info_file.unlink()  # look unfinished to us, so we build our own ...
    rename = Path.rename

    def lose_the_race(self, target):
        info_file.write_text(saved)  # ... and the other process finishes first
        raise OSError("Directory not empty")

    monkeypatch.setattr(Path, "rename", lose_the_race)
    ours = prepare_data(cfg, show_progress=False)
    monkeypatch.setattr(Path, "rename", rename)
    assert ours.root == theirs.root and (ours.root / "data.arrow").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in ours.root.parent.iterdir()) == [theirs.root.name]  # no temporary folder left

    info_file.unlink()  # a rename that fails for another reason is an error, and cleans up
    monkeypatch.setattr(Path, "rename", lambda self, target: (_ for _ in ()).throw(OSError("read-only")))
    with pytest.raises(OSError, match="read-only"):
        prepare_data(cfg, show_progress=False)
    assert sorted(p.name for p in theirs.root.parent.iterdir()) == [theirs.root.name]


# --- the DataModule's wiring ----------------------------------------------------------------


def test_ranks_shard_the_training_rows(data_cfg):
    cfg = data_cfg("scenes", size=[16, 16], batch_size=2, num_workers=1, val_fraction=0.0, **{"scenes.num": 8})
    alone = SidewalkDataModule(cfg)
    alone.setup("fit")
    loader = alone.train_dataloader()
    assert list(loader.sampler) == list(ResumableShuffleSampler(8, int(cfg.split_seed)))  # rank 0 of 1
    assert loader.persistent_workers  # one worker is kept between epochs too
    second = SidewalkDataModule(cfg)
    second.trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=0)
    second.setup("fit")
    sampler = second.train_dataloader().sampler
    assert (sampler.rank, sampler.world_size, len(sampler)) == (1, 2, 4)
    assert list(sampler) == list(ResumableShuffleSampler(8, int(cfg.split_seed), 1, 2))
    exact = SidewalkDataModule(data_cfg("scenes", size=[16, 16], batch_size=4, num_workers=0, val_fraction=0.0,
                                        **{"scenes.num": 8}))
    exact.trainer = SimpleNamespace(global_rank=0, world_size=2, current_epoch=0)
    exact.setup("fit")
    assert len(exact.train_dataloader().sampler) == 4  # 8 rows over 2 ranks fill one batch of 4 exactly
    assert len(ResumableShuffleSampler(3, 0, 2, 3)) == 1  # as many rows as ranks is enough


def test_ranks_share_out_the_validation_rows_and_the_grid_shows_the_same_masks(data_cfg):
    cfg = data_cfg("scenes", size=[16, 16], batch_size=2, num_workers=0, val_fraction=0.5, **{"scenes.num": 12})
    ranks = []
    for rank in range(2):
        dm = SidewalkDataModule(cfg)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
        dm.setup("fit")
        ranks.append([b["index"].tolist() for b in dm.val_dataloader()])
    alone = SidewalkDataModule(cfg)
    alone.setup("fit")
    everything = [i for b in alone.val_dataloader() for i in b["index"].tolist()]
    assert everything == list(range(len(alone.val_set)))
    assert sorted(i for r in ranks for b in r for i in b) == everything
    assert [i for b in ranks[1] for i in b] == everything[1::2]
    grid = alone.first_val_rows(2)  # rows 0 and 1 of the set, whichever rank draws the grid
    assert torch.equal(grid["label"], torch.stack([alone.val_set[0]["label"], alone.val_set[1]["label"]]))


def test_a_resume_applies_to_one_loader_only(data_cfg):
    dm = SidewalkDataModule(data_cfg("scenes", size=[16, 16], batch_size=2, num_workers=0, **{"scenes.num": 10}))
    dm.setup("fit")
    dm.load_state_dict({"epoch": 0, "consumed": 4})
    resumed = list(dm.train_dataloader().sampler)
    fresh = list(dm.train_dataloader().sampler)  # e.g. Lightning reloading the loader later
    assert resumed == fresh[4:] and len(fresh) == len(dm.train_set)


def test_streaming_defaults_and_loaders(tmp_path, data_cfg):
    folder = write_hub_parquet(tmp_path / "stream", [hub_row(*street_like(40, 40, s)) for s in range(6)])
    cfg = data_cfg("sidewalk", path=str(folder), size=[16, 16], streaming=True, num_workers=0, batch_size=2)
    cfg.augment = None
    dm = SidewalkDataModule(cfg)
    dm.setup("fit")
    (flip,) = dm.train_set.transform.transforms  # no augment group: no crop, no flip
    assert flip.p == 0.0
    assert (dm.train_set.rank, dm.train_set.world_size, dm.val_set.world_size) == (0, 1, 1)
    assert dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last


def test_worker_seeds_keep_every_bit_below_two_to_the_32(monkeypatch):
    import random

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(dataset=SimpleNamespace()))

    def draws(seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        seed_worker(0)  # a dataset without a transform is fine
        return random.random(), float(np.random.rand())

    assert draws(1234) != draws(1236)  # seeds of the same parity differ too
    assert draws(2**32 + 7) == draws(7)  # 64-bit worker seeds are folded into numpy's range


def test_png_bytes_helper_round_trips():
    """The helper the tests build rows with keeps pixels exactly (a broken helper would hide bugs)."""
    image = street_like(8, 8, 3)[0]
    with Image.open(io.BytesIO(hub_row(image, np.zeros((8, 8), np.uint8))["pixel_values"]["bytes"])) as png:
        assert np.array_equal(np.asarray(png), image)


WORKER_SCRIPT = """
import subprocess, time
from torch.utils.data import DataLoader
from sdm.data.datamodule import seed_worker
loader = DataLoader(list(range(100)), batch_size=1, num_workers=1, worker_init_fn=seed_worker,
                    persistent_workers=True)
kept = iter(loader)  # alive until exit, like an iterator a crash leaves behind
next(kept)
worker = kept._workers[0].pid
for name in ("TERM", "USR1", "USR2"):  # what SLURM sends every process of a job
    subprocess.run(["kill", "-" + name, str(worker)], check=True)
time.sleep(1)
print("served after the signals:", int(next(kept)), flush=True)
"""


def test_dataloader_workers_outlive_slurm_s_signals_and_end_with_their_trainer():
    """Workers ignore stop signals from other processes (the trainer must live to write its
    checkpoint), but end on the SIGTERM their own trainer sends at exit: a worker that ignored
    that too made every process exit hang in multiprocessing's join (a CI run hung so)."""
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served after the signals: 1" in done.stdout


# --- colours past the 35 classes and the class-frequency chart ----------------------------------


def _voc_colour(i):
    """The PASCAL VOC colour of id `i`, written the way the VOC devkit does (bits peeled off 3 at a time)."""
    r = g = b = 0
    for j in range(8):
        r |= (i & 1) << (7 - j)
        g |= ((i >> 1) & 1) << (7 - j)
        b |= ((i >> 2) & 1) << (7 - j)
        i >>= 3
    return (r, g, b)


def test_more_colours_are_the_voc_pattern_without_the_palette_s_own():
    """Ids past 35 (ADE20K, COCO-Stuff models) get the VOC colours in id order, none the palette
    already uses, as uint8; past id 255 the pattern goes on, still distinct."""
    from sdm.data.classes import FULL_PALETTE, PALETTE, voc_colours

    def _more_colours(count):
        return voc_colours(count, avoid=PALETTE)

    assert [_voc_colour(i) for i in (1, 2, 3, 4, 8, 255)] == [
        (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (64, 0, 0), (224, 224, 192)]  # devkit anchors
    own = {tuple(int(v) for v in c) for c in PALETTE}
    expected = [_voc_colour(i) for i in range(256) if _voc_colour(i) not in own]
    assert len(expected) == 256 - 2  # black (unlabeled) and (128, 64, 128) (flat-road) are VOC colours too
    first = _more_colours(4)
    assert first.dtype == np.uint8 and first.tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    every = _more_colours(300)
    assert every.dtype == np.uint8 and every.shape == (300, 3)
    assert [tuple(c) for c in every[:254].tolist()] == expected
    assert len({tuple(c) for c in every.tolist()} | own) == 300 + len(own)  # none repeats, none is the palette's
    assert _more_colours(0).shape[0] == 0
    assert FULL_PALETTE.tolist() == PALETTE.tolist() + every[:256 - len(PALETTE)].tolist()


def _chart_expected(names, frequencies, counts, colours):
    """The chart drawn by hand: texts at their documented places on white, then bars painted in numpy
    (black 1-pixel outline, class colour inside), each row 16 pixels, bars up to 420 pixels at x = 330."""
    from PIL import ImageDraw

    height, width = 16 * (len(names) + 2), 330 + 420 + 20
    texts = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(texts)
    draw.text((4, 2), "class (images containing it)        pixel frequency", fill=(0, 0, 0))
    bars = []
    for i, (name, freq, count) in enumerate(zip(names, frequencies, counts, strict=True)):
        y = 16 * i + 20
        length = int(420 * freq / max(frequencies))
        draw.text((4, y), f"{i:2d} {name} ({count})", fill=(0, 0, 0))
        draw.text((330 + length + 4, y), f"{freq:.2%}", fill=(0, 0, 0))
        bars.append((y, max(length, 1), colours[i]))
    expected = np.array(texts)
    for y, length, colour in bars:
        expected[y : y + 13, 330 : 330 + length + 1] = 0
        expected[y + 1 : y + 12, 331 : 330 + length] = colour
    return expected


def test_class_frequency_chart_pixels():
    """Every pixel of a small chart: size, white ground, header and row texts where they belong, bars
    scaled to the most frequent class (not to 1) in their class colours, a 1-pixel stub for 0 %."""
    from sdm.data.classes import PALETTE
    from sdm.data.pictures import class_frequency_chart

    names, frequencies, counts = ["aa", "bb", "cc", "dd", "ee"], [0.05, 0.5, 0.25, 0.2, 0.0], [3, 7, 12, 5, 0]
    chart = class_frequency_chart(frequencies, counts, names)
    assert chart.dtype == np.uint8 and chart.shape == (16 * 7, 770, 3)
    assert chart[-1, -1].tolist() == [255, 255, 255] and chart[0, 0].tolist() == [255, 255, 255]
    # bar of row 1 (50 %, the largest): 420 pixels, outlined, flat-road's colour inside
    assert chart[36:49, 330].tolist() == [[0, 0, 0]] * 13 and chart[35, 330].tolist() == [255, 255, 255]
    assert chart[37, 331].tolist() == chart[47, 749].tolist() == PALETTE[1].tolist()
    assert chart[37:48, 750].tolist() == [[0, 0, 0]] * 11 and chart[49, 331].tolist() == [255, 255, 255]
    # 0 %: a bar 1 pixel wide (two outline columns), white right after it
    assert (chart[84:97, 330:332] == 0).all() and (chart[84:97, 332:334] == 255).all()
    expected = _chart_expected(names, frequencies, counts, [tuple(PALETTE[i]) for i in range(5)])
    assert np.array_equal(chart, expected), np.argwhere((chart != expected).any(-1))[:5].tolist()

    header = chart[:16, :330]
    assert (header < 128).any()  # the header is drawn, in black
    with pytest.raises(ValueError):  # one frequency per class, strictly
        class_frequency_chart([0.5, 0.5], [1, 1, 1], ["aa", "bb", "cc"])
    with pytest.raises(ValueError):
        class_frequency_chart([0.5, 0.5, 0.0], [1, 1, 1], ["aa", "bb"])


def test_real_and_synthetic_rows_are_prepared_and_mixed_for_training_only(tmp_path, data_cfg):
    """With data.extra both sources are prepared; training indexes real rows then the synthetic
    ones (through the same transform), the mix records the counts and share; validation stays real."""
    from sdm.data.mixing import MixedPairs

    real = write_hub_parquet(tmp_path / "real", [hub_row(*street_like(16, 16, s)) for s in range(10)])
    synthetic = write_hub_parquet(tmp_path / "syn", [hub_row(np.full((16, 16, 3), 9 * s, np.uint8),
                                                             np.full((16, 16), 7, np.uint8)) for s in range(3)])
    cfg = data_cfg("sidewalk", path=str(real), size=[16, 16], extra=str(synthetic), extra_ratio=0.25,
                   val_fraction=0.2, num_workers=0, batch_size=2)
    cfg.augment = None
    dm = SidewalkDataModule(cfg)
    dm.prepare_data()
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2  # real + synthetic
    dm.setup("fit")
    assert isinstance(dm.train_set, MixedPairs)
    n_real, n_val = len(dm.train_set.real), len(dm.val_set)
    assert n_real + n_val == 10 and n_val == 2 and len(dm.train_set) == n_real + 3
    assert dm.mix == (n_real, 3, 0.25) and dm.train_set.synthetic.transform is dm.train_set.real.transform
    for k in range(3):
        item = dm.train_set[(n_real + k, 0)]
        assert (item["label"] == 7).all() and item["image"].shape == (3, 16, 16)
    assert not any((dm.val_set[i]["label"] == 7).all() for i in range(n_val))
    assert len(dm.train_dataloader().sampler) == n_real + round(n_real * 0.25 / 0.75)


def test_validation_rows_are_split_only_when_every_rank_gets_one(data_cfg):
    """As many rows as ranks: one each. Fewer: every rank scores them all (none sits idle or empty)."""
    shares = {}
    for rows in (2, 1):
        cfg = data_cfg("scenes", size=[16, 16], batch_size=2, num_workers=0, val_fraction=0.5,
                       **{"scenes.num": 2 * rows})
        for rank in range(2):
            dm = SidewalkDataModule(cfg)
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
            dm.setup("fit")
            assert len(dm.val_set) == rows
            shares[rows, rank] = [i for b in dm.val_dataloader() for i in b["index"].tolist()]
    assert shares == {(2, 0): [0], (2, 1): [1], (1, 0): [0], (1, 1): [0]}


def test_a_killed_preparations_cache_is_removed_and_only_its_own(data_cfg, tmp_path, monkeypatch, capsys):
    """The unfinished cache of a dead writer beside this cache goes; another cache's, another kind's and a
    live writer's stay. The cache is written under a hidden temporary name beside its place, never in
    the working folder."""
    import os
    import re
    import subprocess
    import sys

    import sdm.data.prepare as prepare
    from sdm.core.atomic import _HOST

    cfg = data_cfg("scenes", size=[16, 16], **{"scenes.num": 2})
    root = prepare_data(cfg, show_progress=False).root
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine = root.parent / f".{root.name}.tmp-{_HOST}-{dead}-abc123"
    others = [root.parent / f".other-16x16.tmp-{_HOST}-{dead}-abc123",  # another cache's
              root.parent / f".{root.name}.partial-{_HOST}-{dead}-abc123",  # another kind of writer's
              root.parent / f".{root.name}.tmp-{_HOST}-{os.getpid()}-abc123"]  # a live writer's
    for folder in (mine, *others):
        folder.mkdir()
        (folder / "part.arrow").write_bytes(b"half")
    capsys.readouterr()
    prepare_data(cfg, show_progress=False)
    assert capsys.readouterr().out == f"removed {mine}: the unfinished cache of a killed preparation\n"
    assert not mine.exists() and all(folder.is_dir() for folder in others)

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    written = []

    def fail_while_writing(rows, tmp, *args, **kwargs):
        written.append(tmp)
        assert tmp.is_dir()
        raise RuntimeError("disk gone")

    monkeypatch.setattr(prepare, "_write_cache", fail_while_writing)
    with pytest.raises(RuntimeError, match="disk gone"):
        prepare_data(data_cfg("scenes", size=[8, 8], **{"scenes.num": 2}), show_progress=False)
    (tmp,) = written
    assert tmp.parent == root.parent and re.fullmatch(rf"\.scenes.*-8x8-.*\.tmp-{re.escape(_HOST)}-{os.getpid()}-[0-9a-f]{{6}}",
                                                      tmp.name), tmp.name
    assert not tmp.exists() and not list(work.iterdir())  # the failed cache is gone, the working folder untouched


def test_instance_maps_decode_grey_and_packed_rgb_ids():
    from sdm.data.rows import instance_ids

    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1], rgb[0, 2] = (0, 1, 2), (3, 0, 255)  # ids 0, 1 * 256 + 2 and 3 * 65536 + 255
    assert instance_ids(Image.fromarray(rgb)).tolist() == [[0, 258, 196863]]
    rgba = np.dstack([rgb, np.full((1, 3), 7, np.uint8)])  # the alpha channel is not part of the id
    assert instance_ids(Image.fromarray(rgba)).tolist() == [[0, 258, 196863]]
    grey16 = Image.fromarray(np.array([[0, 1000, 65535]], np.uint16))
    ids = instance_ids(grey16)
    assert ids.dtype == np.int32 and ids.tolist() == [[0, 1000, 65535]]
    assert instance_ids(Image.fromarray(rgb)).dtype == np.int32


def test_an_item_owns_its_tensors_in_their_dtypes():
    """Items are copies: a transform or collate that writes in place never reaches the cached arrays."""
    from sdm.data.transforms import to_item

    image = np.full((2, 2, 3), 255, np.uint8)
    label, instance = np.full((2, 2), 3, np.uint8), np.full((2, 2), 70_000, np.int32)
    item = to_item(image, label, instance)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 2, 2) and (item["image"] == 1).all()
    assert item["label"].dtype == torch.uint8 and item["instance"].dtype == torch.int32
    assert int(item["instance"][0, 0]) == 70_000
    item["label"][0, 0], item["instance"][0, 0] = 9, 1
    assert label[0, 0] == 3 and instance[0, 0] == 70_000
    wide = to_item(image.astype(np.int64), label.astype(np.int64), instance.astype(np.int64))
    assert wide["label"].dtype == torch.uint8 and wide["instance"].dtype == torch.int32
    assert "instance" not in to_item(image, label)


def test_a_tables_summary_and_palette_bounds():
    from sdm.data.classes import table_from_config

    table = table_from_config({"name": "two", "names": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]], "ignore": 1})
    assert table.summary() == {"table": "two", "ignore": 1, "names": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]]}
    assert table.palette.dtype == np.uint8
    for bad in ([[0, 0, -1], [0, 0, 0]], [[0, 0, 256], [0, 0, 0]]):
        with pytest.raises(Exception, match=r"palette: expected 2 colours \[r, g, b\] in 0..255"):
            table_from_config({"count": 2, "palette": bad})


def test_the_summary_of_a_prepared_cache_lists_every_class_found(data_cfg):
    from sdm.data.prepare import describe

    prepared = prepare_data(data_cfg("scenes", size=[16, 16], **{"scenes.num": 3}), show_progress=False)
    text = describe(prepared)
    lines = text.splitlines()
    assert "(table sidewalk)" in lines[1]
    shares = lines[lines.index("  pixel shares:") + 1 : -1]
    assert shares and all(line.startswith("    ") and len(line) <= 100 for line in shares)
    older = type(prepared)(prepared.root, {k: v for k, v in prepared.info.items() if k != "class_table"})
    assert "(table sidewalk)" in describe(older).splitlines()[1]  # a cache written before tables: sidewalk's


def test_rows_without_instance_maps_give_their_labels_as_instances_when_asked(data_cfg):
    """Synthetic rows (no instance maps) beside real ones that have them: the label stands in, so
    the edge channel marks class borders; a run without instances carries none."""
    from sdm.data.datamodule import PairDataset
    from sdm.data.transforms import train_transform

    prepared = prepare_data(data_cfg("scenes", size=[16, 16], **{"scenes.num": 2}), show_progress=False)
    plain = PairDataset(prepared, np.arange(2), None)
    assert "instance" not in plain[0]
    asked = PairDataset(prepared, np.arange(2), None, instances=True)
    item = asked[1]
    assert item["instance"].dtype == torch.int32 and torch.equal(item["instance"], item["label"].int())
    flipped = PairDataset(prepared, np.arange(2), train_transform((16, 16), hflip=1.0), instances=True)[(1, 3)]
    assert torch.equal(flipped["instance"], flipped["label"].int())  # augmented with the label


def test_the_training_order_follows_order_seed_where_set_and_the_split_seed_otherwise():
    from sdm.data.datamodule import order_seed

    assert order_seed(OmegaConf.create({"split_seed": 4})) == 4
    assert order_seed(OmegaConf.create({"split_seed": 4, "order_seed": None})) == 4
    assert order_seed(OmegaConf.create({"split_seed": 4, "order_seed": "7"})) == 7


def test_a_rows_label_file_is_named_only_for_rows_read_from_files():
    from sdm.data.rows import _file_of

    assert _file_of({"label": {"path": "/data/labels/a.png", "bytes": None}}) == "/data/labels/a.png: "
    assert _file_of({"label": {"path": "a.png", "bytes": b"\x89PNG"}}) == ""  # Hub rows carry the bytes
    assert _file_of({"label": b"\x89PNG"}) == "" and _file_of({"label": {"path": None}}) == ""


def test_a_row_without_the_instance_map_the_others_have_is_named_and_the_rows_after_it_are_kept(tmp_path, data_cfg):
    import datasets
    from helpers.rows import png_bytes

    rows = [hub_row(*street_like(8, 8, i)) for i in range(3)]
    instance = {"bytes": png_bytes(np.full((8, 8), 7, np.uint8)), "path": None}
    features = datasets.Features({name: datasets.Image() for name in ("pixel_values", "label", "instance")})
    (tmp_path / "hub" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"pixel_values": [r["pixel_values"] for r in rows], "label": [r["label"] for r in rows],
                                "instance": [instance, None, {"bytes": b"not a png", "path": None}]},
                               features=features).to_parquet(
        str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    cfg = data_cfg("sidewalk", path=str(tmp_path / "hub"), size=[8, 8], on_bad_row="skip")
    info = prepare_data(cfg, show_progress=False).info
    assert info["problems"][0] == {"row": 1, "reason": "the row has no instance map, and the others do"}
    assert info["problems"][1]["row"] == 2 and "field 'instance'" in info["problems"][1]["reason"]  # unreadable
    assert (info["rows"], info["skipped"], info["instances"]) == (1, 2, True)  # row 2, after row 1, is still read


def test_a_cache_dir_that_is_a_file_is_refused_by_its_setting_before_any_row_is_read(tmp_path, data_cfg):
    from sdm.core.atomic import WriteError

    (tmp_path / "taken").write_text("not a folder")
    cfg = data_cfg("scenes", size=[8, 8], cache_dir=str(tmp_path / "taken"), **{"scenes.num": 2})
    with pytest.raises(WriteError, match=rf"^data\.cache_dir={tmp_path / 'taken'} is a file, not a folder"):
        prepare_data(cfg, show_progress=False)
    assert (tmp_path / "taken").read_text() == "not a folder"
