"""A folder of image/label files in each common layout, and any Hub dataset with its own columns:
paired by name, mapped through the dataset's class table, refused with the file named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.folders import PATHS, write_layout
from helpers.rows import png_bytes, street_like
from PIL import Image

from sdm.core.configs import compose
from sdm.core.errors import DataError
from sdm.data.classes import preset
from sdm.data.datamodule import SidewalkDataModule
from sdm.data.folders import detect_layout
from sdm.data.prepare import decode_instance, decode_row, describe, prepare_data

PRESET_OF = {"plain": "folder", "ade20k": "ade20k", "cityscapes": "cityscapes", "coco_stuff": "coco_stuff",
             "celebamask": "celebamask"}
TABLE_OF = {"plain": "generic", "ade20k": "ade20k", "cityscapes": "cityscapes", "coco_stuff": "coco_stuff",
            "celebamask": "celebamask"}


def folder_cfg(tmp_path, layout: str, root, *overrides: str):
    extra = ["data.classes.count=5"] if layout == "plain" else []
    return compose("prepare", [f"data={PRESET_OF[layout]}", f"data.path={root}", "data.size=[12,16]",
                               "data.resize=stretch", f"data.cache_dir={tmp_path / 'cache'}", *extra, *overrides]).data


@pytest.mark.parametrize("layout", list(PATHS))
def test_each_layout_prepares_with_its_own_table(tmp_path, layout):
    root = tmp_path / layout
    values = write_layout(root, layout, ["b", "a", "c"])
    assert detect_layout(root, "train") == layout
    cfg = folder_cfg(tmp_path, layout, root)
    prepared = prepare_data(cfg, show_progress=False)
    table = preset(TABLE_OF[layout]) if layout != "plain" else None
    assert prepared.info["rows"] == 3 and prepared.info["num_classes"] == cfg.num_classes
    assert prepared.info["class_table"] == TABLE_OF[layout]
    assert f"classes found: {prepared.info['classes_present']} of {cfg.num_classes} (table {TABLE_OF[layout]})" \
        in describe(prepared)
    rows = prepared.open()
    for i, name in enumerate(["a", "b", "c"]):  # sorted by name
        image, label = decode_row(rows[i], (12, 16))
        expected = values[name] if table is None else table.ids_from_values(values[name])
        assert np.array_equal(label, expected), (layout, name)
    if layout == "ade20k":  # the file's 0 is the unlabeled class 150, 1 is wall (0)
        assert 150 in np.unique(decode_row(rows[0], (12, 16))[1])
    if layout == "coco_stuff":
        assert 182 in np.unique(decode_row(rows[0], (12, 16))[1])  # 255 -> unlabeled


def test_a_layout_with_splits_reads_the_one_asked_for(tmp_path):
    root = tmp_path / "ade"
    write_layout(root, "ade20k", ["t1", "t2", "t3"], split="train")
    write_layout(root, "ade20k", ["v1"], split="validation")
    assert len(prepare_data(folder_cfg(tmp_path, "ade20k", root), show_progress=False)) == 3
    assert len(prepare_data(folder_cfg(tmp_path, "ade20k", root, "data.split=val"), show_progress=False)) == 1


def test_unpaired_files_are_named_or_left_out(tmp_path):
    root = tmp_path / "plain"
    write_layout(root, "plain", ["a", "b", "c"], instances=False)
    (root / "labels" / "b.png").unlink()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "labels" / "orphan.png")
    with pytest.raises(DataError, match=r"1 images have no label \(.*images/b.jpg\); 1 labels have no image "
                                        r"\(.*labels/orphan.png\).*data.on_bad_row=skip"):
        prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached
    kept = prepare_data(folder_cfg(tmp_path, "plain", root, "data.on_bad_row=skip"), show_progress=False)
    assert len(kept) == 2


def test_a_bad_label_file_is_named_and_nothing_is_cached(tmp_path):
    root = tmp_path / "plain"
    write_layout(root, "plain", ["a", "b"], instances=False)
    Image.fromarray(np.where(np.arange(16) < 8, 0, 255).astype(np.uint8)[None].repeat(12, 0)).save(root / "labels" / "b.png")
    with pytest.raises(DataError, match=r"row 1: .*labels/b.png: field 'label': values \[255\] in 96 pixels .*binary "
                                        r"0/255 mask"):
        prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "labels" / "b.png")
    with pytest.raises(DataError, match=r"row 1: .*labels/b.png: image is 16x12 but label is 5x5"):
        prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    colours = np.zeros((12, 16, 3), np.uint8)
    colours[:, 8:] = (0, 128, 0)  # a colour-coded label map, and a table that reads ids
    Image.fromarray(colours).save(root / "labels" / "b.png")
    with pytest.raises(DataError, match=r"row 1: .*labels/b.png: field 'label': an RGB \(colour-coded\) label map, "
                                        r"but the 'generic' table reads id maps .*label_format=color"):
        prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())  # no cache, no temporary folder left


def test_a_changed_file_makes_a_new_cache(tmp_path):
    root = tmp_path / "plain"
    write_layout(root, "plain", ["a", "b"], instances=False)
    first = prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    assert prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False).root == first.root
    Image.fromarray(np.full((12, 16), 3, np.uint8)).save(root / "labels" / "b.png")
    again = prepare_data(folder_cfg(tmp_path, "plain", root), show_progress=False)
    assert again.root != first.root and decode_row(again.open()[1], (12, 16))[1].max() == 3


def test_a_folder_without_a_known_layout_lists_what_it_holds(tmp_path):
    (tmp_path / "x" / "pictures").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no known layout .* found \['pictures'\]"):
        prepare_data(folder_cfg(tmp_path, "plain", tmp_path / "x"), show_progress=False)


def test_any_hub_dataset_with_its_own_column_names(tmp_path):
    import datasets

    image, label = street_like(12, 16, 0)
    ade_values = np.where(label > 0, label, 0)  # ids 0..34 as ADE file values: 0 -> unlabeled, v -> v - 1
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image(), "id": datasets.Value("int64")})
    rows = {"image": [{"bytes": png_bytes(image), "path": None}] * 3,
            "annotation": [{"bytes": png_bytes(ade_values), "path": None}] * 3, "id": [0, 1, 2]}
    (tmp_path / "hub" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "hub" / "data" / "train.parquet"))
    base = ["data=hub", f"data.path={tmp_path / 'hub'}", "data/classes=ade20k", "data.size=[12,16]", "data.resize=stretch",
            f"data.cache_dir={tmp_path / 'cache'}", f"data.hub_cache_dir={tmp_path / 'hf'}"]
    with pytest.raises(DataError, match=r"missing \['label'\]; found \['image', 'annotation', 'id'\]. Expected the "
                                        r"columns data.image_column='image' and data.label_column='label'"):
        prepare_data(compose("prepare", base).data, show_progress=False)
    prepared = prepare_data(compose("prepare", [*base, "data.label_column=annotation"]).data, show_progress=False)
    stored = decode_row(prepared.open()[0], (12, 16))[1]
    assert np.array_equal(stored, preset("ade20k").ids_from_values(ade_values))
    assert json.loads((prepared.root / "dataset_info.json").read_text())["num_classes"] == 151


def test_instance_maps_are_cached_and_cropped_and_flipped_with_their_labels(tmp_path):
    """Cityscapes' _instanceIds: kept beside the labels (nearest, the label's geometry), and every
    augmentation moves them with the label, so the edge channel marks the instances of the scene shown."""
    root = tmp_path / "cityscapes"
    values = write_layout(root, "cityscapes", ["a", "b", "c", "d"], size=(24, 32))
    for name, label in values.items():  # an instance id that names its class: id // 1000 is the label
        instance = (label.astype(np.int32) * 1000 + (np.arange(32)[None, :] // 8)).astype(np.uint16)
        Image.fromarray(instance).save(root / "gtFine" / "train" / "aachen" / f"{name}_gtFine_instanceIds.png")
    cfg = folder_cfg(tmp_path, "cityscapes", root, "data.size=[12,16]", "data.resize=crop", "data.val_fraction=0",
                     "data.batch_size=4", "data.num_workers=0", "data.augment.scale=[0.5,1.0]", "data.augment.hflip=0.5")
    prepared = prepare_data(cfg, show_progress=False)
    assert prepared.info["instances"] and prepared.root.name.endswith("-inst")
    row = prepared.open()[0]
    instance = decode_instance(row, (12, 16))
    assert instance.dtype == np.int32 and np.array_equal(instance // 1000, decode_row(row, (12, 16))[1])
    module = SidewalkDataModule(cfg)
    module.setup("fit")
    for _ in range(3):  # random crops and flips: the instances stay on their classes
        batch = next(iter(module.train_dataloader()))
        assert batch["instance"].dtype == torch.int32
        assert torch.equal(batch["instance"] // 1000, batch["label"].long().int())
    plain = tmp_path / "plain"
    write_layout(plain, "plain", ["a", "b"], instances=False)
    assert "instance" not in prepare_data(folder_cfg(tmp_path, "plain", plain), show_progress=False).open()[0]
