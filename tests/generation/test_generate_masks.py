"""Which masks a generation uses: a split of the run's data (val, train, all), another data
source laid over it, or variations of them (mirrored, cropped) for layouts the data lacks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers.generation import SIZE, sample_cfg
from omegaconf import OmegaConf
from PIL import Image

from sdm.core.errors import ConfigError
from sdm.data.prepare import decode_row, prepare_data, split_indices
from sdm.generation import generate, load_model
from sdm.generation.masks import CROP_SIDE, Mask, crop_box, load_masks, split_masks, vary_mask


def rows_of(cfg: dict, indices) -> list[str]:
    prepared = prepare_data(OmegaConf.create(cfg["data"]), show_progress=False)
    return [f"{int(prepared.open()[int(i)]['index']):06d}" for i in indices]


def test_train_val_and_all_are_the_runs_split(run_dir):  # noqa: F811
    model = load_model(run_dir)
    data = model.cfg["data"]
    train, val = split_indices(12, float(data["val_fraction"]), int(data["split_seed"]))
    masks = {split: split_masks(model.cfg, split, None) for split in ("train", "val", "all")}
    assert [m.name for m in masks["train"]] == rows_of(model.cfg, train)
    assert [m.name for m in masks["val"]] == rows_of(model.cfg, val)
    assert [m.name for m in masks["all"]] == rows_of(model.cfg, range(12))
    assert [m.index for m in masks["train"]] == list(range(len(train)))  # positions: the seed offsets
    prepared = prepare_data(OmegaConf.create(data), show_progress=False)
    image, label = decode_row(prepared.open()[int(train[2])], prepared.size)
    assert np.array_equal(masks["train"][2].label, label) and np.array_equal(masks["train"][2].real, image)
    assert [m.name for m in split_masks(model.cfg, "train", 3)] == [m.name for m in masks["train"][:3]]


def test_mask_source_takes_masks_from_another_source_at_the_models_size(run_dir):  # noqa: F811
    model = load_model(run_dir)
    own = split_masks(model.cfg, "all", None)
    other = split_masks(model.cfg, "all", None, {"scenes": {"seed": 7, "num": 5}})
    assert len(other) == 5 and other[0].label.shape == (SIZE, SIZE)
    assert not np.array_equal(other[0].label, own[0].label)  # other scenes, not the run's
    with pytest.raises(ConfigError, match=r"mask_source.size=\[8, 8\]: this source is read at the model's size \[16, 16\]"):
        split_masks(model.cfg, "all", None, {"size": [8, 8]})
    with pytest.raises(ConfigError, match=re.escape("mask_source is for masks=val|train|all, not for a folder")):
        load_masks("/some/folder", model, None, {"scenes": {"seed": 7}})
    mixed = {**model.cfg, "data": {**model.cfg["data"], "extra": "/not/there"}}
    assert [m.name for m in split_masks(mixed, "all", None)] == [m.name for m in own]  # real rows only


def mask_with_photo(height: int = SIZE, width: int = SIZE) -> Mask:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 35, (height, width), dtype=np.uint8)
    return Mask("000003", 3, label, np.repeat(label[..., None] * 7, 3, axis=2).astype(np.uint8))


def test_hflip_mirrors_label_and_photo():
    mask = mask_with_photo()
    flipped = vary_mask(mask, ["hflip"], seed=0)
    assert flipped.name == "000003-flip" and flipped.index == 3
    assert np.array_equal(flipped.label, mask.label[:, ::-1]) and np.array_equal(flipped.real, mask.real[:, ::-1])
    assert flipped.label.flags.c_contiguous


def test_crop_is_seeded_keeps_the_size_and_label_and_photo_agree():
    mask = mask_with_photo()
    cropped = vary_mask(mask, ["crop"], seed=4)
    assert cropped.name == "000003-crop" and cropped.label.shape == mask.label.shape
    top, left, height, width = crop_box(mask.label.shape, np.random.default_rng([4, 3]))
    assert CROP_SIDE[0] * SIZE - 1 <= height <= CROP_SIDE[1] * SIZE + 1 and height == width
    expected = Image.fromarray(mask.label).crop((left, top, left + width, top + height))
    assert np.array_equal(cropped.label, np.asarray(expected.resize((SIZE, SIZE), Image.Resampling.NEAREST)))
    photo = Image.fromarray(mask.real).crop((left, top, left + width, top + height))
    assert np.array_equal(cropped.real, np.asarray(photo.resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
    assert np.array_equal(vary_mask(mask, ["crop"], seed=4).label, cropped.label)
    assert not np.array_equal(vary_mask(mask, ["crop"], seed=5).label, cropped.label)
    both = vary_mask(mask, ["hflip", "crop"], seed=4)
    assert both.name == "000003-flip-crop"
    flipped_then = vary_mask(vary_mask(mask, ["hflip"], 4), ["crop"], 4)
    assert np.array_equal(both.label, flipped_then.label)


def test_generate_from_training_masks_with_variations(run_dir, tmp_path):  # noqa: F811
    manifest = generate(sample_cfg(f"weights={run_dir}", "masks=train", "limit=2", "num_per_mask=1",
                                   "mask_variation=[hflip]", f"out_dir={tmp_path / 'out'}"))
    train_names = [m.name for m in split_masks(load_model(run_dir).cfg, "train", 2)]
    assert [item["mask"] for item in manifest["items"]] == [f"{n}-flip" for n in train_names]
    assert manifest["settings"]["masks"] == "train" and manifest["settings"]["mask_variation"] == ["hflip"]
    written = np.asarray(Image.open(tmp_path / "out" / "labels" / f"{train_names[0]}-flip.png"))
    assert written.shape == (SIZE, SIZE)


@pytest.mark.parametrize(("override", "message"), [
    ("mask_variation=[rotate]", r"mask_variation=\['rotate'\] is invalid"),
    ("mask_variation=hflip", "mask_variation=.hflip. is invalid: expected a list"),
    ("mask_source=7", "mask_source=7 is invalid"),
    ("mask_variation=[[hflip]]", r"mask_variation=\[\['hflip'\]\] is invalid"),
])
def test_bad_mask_options_are_refused_before_anything_is_written(run_dir, tmp_path, override, message):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        generate(sample_cfg(f"weights={run_dir}", override, f"out_dir={out}"))
    assert not out.exists()


def test_crop_of_a_wide_mask_keeps_its_aspect_and_size():
    mask = mask_with_photo(16, 24)
    cropped = vary_mask(mask, ["crop"], seed=1)
    assert cropped.label.shape == (16, 24) and cropped.real.shape == (16, 24, 3)
    top, left, height, width = crop_box((16, 24), np.random.default_rng([1, 3]))
    assert width / height == pytest.approx(24 / 16, rel=0.1) and top + height <= 16 and left + width <= 24
    expected = Image.fromarray(mask.label).crop((left, top, left + width, top + height)).resize((24, 16), Image.Resampling.NEAREST)
    assert np.array_equal(cropped.label, np.asarray(expected))


def test_mask_source_path_reads_a_hub_schema_folder_on_a_scenes_run(run_dir, tmp_path):  # noqa: F811
    from sdm.data.scenes import scenes_dataset

    folder = tmp_path / "other"
    (folder / "data").mkdir(parents=True)
    scenes_dataset(6, SIZE, SIZE, seed=11).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    model = load_model(run_dir)
    masks = split_masks(model.cfg, "all", None, {"path": str(folder)})
    expected = scenes_dataset(6, SIZE, SIZE, seed=11)[0]["label"]
    assert len(masks) == 6 and np.array_equal(masks[0].label, np.asarray(expected))


def test_streamed_runs_and_empty_splits_get_clear_errors(run_dir):  # noqa: F811
    from sdm.core.errors import DataError

    model = load_model(run_dir)
    streamed = {**model.cfg, "data": {**model.cfg["data"], "streaming": True}}
    with pytest.raises(ConfigError, match=r"masks=train: the run's data is streamed .*'mask_source=\{streaming:false\}'"):
        split_masks(streamed, "train", None)
    assert len(split_masks(streamed, "all", None, {"streaming": False})) == 12
    with pytest.raises(DataError, match=r"masks=val: the val split of mask_source is empty \(data.val_fraction=0.0\)"):
        split_masks(model.cfg, "val", None, {"val_fraction": 0.0})


def test_other_sources_need_what_they_read():
    from sdm.data.sources import overlay_source

    sidewalk = {"name": "sidewalk", "path": "segments/sidewalk-semantic", "size": [64, 64], "extra": "/x"}
    scenes = overlay_source(sidewalk, {"scenes": {"num": 5, "seed": 2}}, "mask_source")
    assert scenes.name == "scenes" and scenes.extra is None and scenes.scenes.num == 5
    with pytest.raises(ConfigError, match=r"mask_source names the embedded scenes without a count"):
        overlay_source(sidewalk, {"scenes": {"seed": 2}}, "mask_source")
    with pytest.raises(ConfigError, match=r"segmenter.test='/data/test': expected data settings"):
        overlay_source(sidewalk, "/data/test", "segmenter.test")


def test_variations_are_recorded_in_order_and_name_the_default_folder(run_dir, tmp_path):  # noqa: F811
    manifest = generate(sample_cfg(f"weights={run_dir}", "masks=train", "limit=1", "num_per_mask=1",
                                   "mask_variation=[crop,hflip,crop]"))
    assert manifest["settings"]["mask_variation"] == ["hflip", "crop"]
    assert manifest["out_dir"].endswith("-train-hflip-crop")
    name = manifest["items"][0]["mask"]
    source = split_masks(load_model(run_dir).cfg, "train", 1)[0]
    assert name == f"{source.name}-flip-crop"
    written = np.asarray(Image.open(f"{manifest['out_dir']}/labels/{name}.png"))
    assert np.array_equal(written, vary_mask(source, ["hflip", "crop"], 0).label)
    plain = generate(sample_cfg(f"weights={run_dir}", "masks=train", "limit=1", "num_per_mask=1",
                                "mask_variation=[hflip]"))
    flipped = np.asarray(Image.open(f"{plain['out_dir']}/labels/{source.name}-flip.png"))
    assert np.array_equal(flipped, source.label[:, ::-1])  # the written label is the mirrored one


def test_crop_boxes_reach_every_edge_and_stay_inside():
    boxes = [crop_box((16, 24), np.random.default_rng([seed, 0])) for seed in range(300)]
    assert all(top >= 0 and left >= 0 and top + h <= 16 and left + w <= 24 for top, left, h, w in boxes)
    assert any(top == 0 for top, _, _, _ in boxes) and any(left == 0 for _, left, _, _ in boxes)
    assert any(top + h == 16 for top, _, h, _ in boxes) and any(left + w == 24 for _, left, _, w in boxes)
    assert crop_box((1, 1), np.random.default_rng(0)) == (0, 0, 1, 1)  # a 1-pixel mask still crops


def test_load_masks_passes_source_split_and_seed_on(run_dir):  # noqa: F811
    model = load_model(run_dir)
    other = load_masks("all", model, None, {"scenes": {"seed": 7, "num": 5}})
    assert [m.name for m in other] == [m.name for m in split_masks(model.cfg, "all", None, {"scenes": {"seed": 7, "num": 5}})]
    assert np.array_equal(other[0].label, split_masks(model.cfg, "all", None, {"scenes": {"seed": 7, "num": 5}})[0].label)
    assert [m.name for m in load_masks("train", model, None)] == [m.name for m in split_masks(model.cfg, "train", None)]
    cropped = load_masks("train", model, 1, variations=["crop"])  # the seed defaults to 0
    assert np.array_equal(cropped[0].label, vary_mask(split_masks(model.cfg, "train", 1)[0], ["crop"], 0).label)
    with pytest.raises(ConfigError, match=r"mask_variation=\['rotate'\]: unknown \['rotate'\]"):
        load_masks("train", model, None, variations=["rotate"])


def test_mask_source_paths_are_recorded_resolved(tmp_path, monkeypatch):
    from sdm.generation.masks import mask_source

    (tmp_path / "labels").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"mask_source": {"path": "labels", "split": "train"}})
    assert mask_source(cfg) == {"path": str((tmp_path / "labels").resolve()), "split": "train"}
    missing = OmegaConf.create({"mask_source": {"path": "segments/sidewalk-semantic"}})
    assert mask_source(missing) == {"path": "segments/sidewalk-semantic"}  # a Hub id stays as written
    assert mask_source(OmegaConf.create({"mask_source": None})) is None
    linked = OmegaConf.create({"root": "/data", "mask_source": {"path": "${root}/more"}})
    assert mask_source(linked) == {"path": "/data/more"}  # interpolations resolved, as in the manifest


def test_variations_of_a_mask_without_photo_keep_none():
    mask = Mask("a", 0, np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE) % 35)
    for variations in (["hflip"], ["crop"], ["hflip", "crop"]):
        assert vary_mask(mask, variations, 0).real is None
