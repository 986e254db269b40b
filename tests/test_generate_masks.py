"""Which masks a generation uses: a split of the run's data (val, train, all), another data
source laid over it, or variations of them (mirrored, cropped) for layouts the data lacks."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from test_generate import SIZE, run_dir, sample_cfg  # noqa: F401

from sdm.data.prepare import decode_row, prepare_data, split_indices
from sdm.errors import ConfigError
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
    with pytest.raises(ConfigError, match=r"mask_source.size=\[8, 8\]: masks are made at the model's size"):
        split_masks(model.cfg, "all", None, {"size": [8, 8]})
    with pytest.raises(ConfigError, match="mask_source is for masks=val|train|all"):
        load_masks("/some/folder", model, None, {"scenes": {"seed": 7}})
    mixed = {**model.cfg, "data": {**model.cfg["data"], "extra": "/not/there"}}
    assert [m.name for m in split_masks(mixed, "all", None)] == [m.name for m in own]  # real rows only


def mask_with_photo() -> Mask:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 35, (SIZE, SIZE), dtype=np.uint8)
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
])
def test_bad_mask_options_are_refused_before_anything_is_written(run_dir, tmp_path, override, message):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        generate(sample_cfg(f"weights={run_dir}", override, f"out_dir={out}"))
    assert not out.exists()
