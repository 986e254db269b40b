"""Class tables: the shipped presets, the file-value mapping of the paper's datasets, colours, and a
clear error for every inconsistent table or label file."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from sdm.core.configs import compose
from sdm.core.errors import ConfigError
from sdm.data.classes import SIDEWALK, class_table, preset, table_from_config
from sdm.data.rows import RowError, label_to_ids

PRESETS = {"sidewalk": (35, 0), "ade20k": (151, 150), "cityscapes": (35, 0), "coco_stuff": (183, 182),
           "celebamask": (19, None)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_presets_have_the_paper_s_label_channels(name):
    table = preset(name)
    assert (table.num_classes, table.ignore) == PRESETS[name]
    assert len(set(table.names)) == table.num_classes  # no name twice
    assert table.palette.shape == (table.num_classes, 3) and table.palette.dtype == np.uint8
    data = compose("prepare", [f"data={name}" if name != "sidewalk" else "data=sidewalk"]).data
    assert data.num_classes == table.num_classes and class_table(data).name == name


def test_ade20k_and_coco_stuff_map_their_files_as_the_paper_s_code_does():
    ade = preset("ade20k")
    assert ade.ids_from_values(np.array([[0, 1, 2, 150]])).tolist() == [[150, 0, 1, 149]]  # v - 1, and 0 -> 150
    assert ade.names[0] == "wall" and ade.names[149] == "flag" and ade.names[150] == "unlabeled"
    with pytest.raises(ValueError, match=r"values \[151, 255\] in 2 pixels are not classes of the 'ade20k' table"):
        ade.ids_from_values(np.array([[151, 255, 3]]))
    coco = preset("coco_stuff")
    assert coco.ids_from_values(np.array([[0, 181, 255]])).tolist() == [[0, 181, 182]]
    assert (coco.names[0], coco.names[11], coco.names[91], coco.names[181]) == (
        "person", "street sign (unused)", "banner", "wood")
    with pytest.raises(ValueError, match=r"values \[200\] in 1 pixels"):
        coco.ids_from_values(np.array([[200, 1]]))
    cityscapes = preset("cityscapes")
    assert cityscapes.lookup is None and cityscapes.names[7] == "road" and cityscapes.names[26] == "car"


def test_the_usual_label_mistakes_get_a_hint():
    with pytest.raises(ValueError, match=r"binary 0/255 mask.*data.classes.remap=\{255:1\}"):
        SIDEWALK.ids_from_values(np.array([[0, 255]]))
    with pytest.raises(ValueError, match=r"the files hold ids up to 150: are they another dataset's"):
        SIDEWALK.ids_from_values(np.array([[3, 150]]))
    binary = table_from_config({"name": "fg", "count": 2, "remap": {255: 1}})
    assert binary.ids_from_values(np.array([[0, 255]])).tolist() == [[0, 1]]


def test_an_unmapped_id_can_be_sent_to_a_class_and_cityscapes_train_ids_are_a_remap():
    train_ids = {7: 0, 8: 1, 11: 2, 26: 13}  # a few of cityscapesScripts' labelId -> trainId
    table = table_from_config({"name": "cs19", "count": 20, "remap": train_ids, "unmapped": 19, "ignore": 19})
    assert table.ids_from_values(np.array([[7, 8, 11, 26, 0, 33]])).tolist() == [[0, 1, 2, 13, 19, 19]]


@pytest.mark.parametrize(("settings", "message"), [
    ({"count": 3, "names": ["a", "b"]}, r"data.classes.count=3 but data.classes.names lists 2"),
    ({}, r"give names \(a list\) or count"),
    ({"count": 300}, r"300 classes; a table holds 1 to 256"),
    ({"count": 3, "palette": [[0, 0, 0]]}, r"data.classes.palette: expected 3 colours"),
    ({"count": 3, "palette": "red"}, r"data.classes.palette: expected 'auto' or a list"),
    ({"count": 3, "ignore": 3}, r"data.classes.ignore=3 is not a class id \(0..2\)"),
    ({"count": 3, "remap": {255: 7}}, r"data.classes.remap: 255 -> 7"),
    ({"count": 3, "unmapped": 5}, r"data.classes.unmapped=5 is not a class id"),
    ({"count": 3, "label_format": "rgb"}, r"data.classes.label_format='rgb'"),
    ({"count": 2, "palette": [[1, 1, 1], [1, 1, 1]], "label_format": "color"}, r"one colour per class"),
])
def test_an_inconsistent_table_is_named_by_its_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        table_from_config(settings)


def test_the_data_config_and_its_table_must_agree():
    data = compose("prepare", ["data=scenes", "data/classes=generic", "data.classes.count=4"]).data
    assert class_table(data).num_classes == data.num_classes == 4
    data.num_classes = 5  # set by hand against the table
    with pytest.raises(ConfigError, match=r"data.num_classes=5 but the class table 'generic'.* has 4 classes"):
        class_table(data)
    assert class_table({"num_classes": 35}) is SIDEWALK  # a run saved before tables: sidewalk's
    assert class_table({"num_classes": 151}).names[150] == "class 150"  # any other count: generic


def test_label_images_are_read_through_the_table():
    ade = preset("ade20k")
    values = np.array([[0, 1], [2, 150]], np.uint8)
    assert label_to_ids(Image.fromarray(values), ade).tolist() == [[150, 0], [1, 149]]
    grey_rgb = Image.fromarray(np.repeat(values[..., None], 3, -1))  # an id map saved as RGB
    assert label_to_ids(grey_rgb, ade).tolist() == [[150, 0], [1, 149]]
    coloured = Image.fromarray(ade.colorize(np.array([[0, 1], [2, 3]], np.uint8)))
    with pytest.raises(RowError, match=r"an RGB \(colour-coded\) label map, but the 'ade20k' table reads id maps"):
        label_to_ids(coloured, ade)
    as_colours = table_from_config({"name": "ade-colours", "names": list(ade.names), "label_format": "color"})
    assert label_to_ids(coloured, as_colours).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"several classes one colour"):
        preset("cityscapes").decolorize(np.zeros((2, 2, 3), np.uint8))


def test_colours_past_a_small_table_stay_distinct():
    table = table_from_config({"name": "three", "count": 3})
    assert len({tuple(c) for c in table.full_palette.tolist()}) == 256
    assert table.colorize(np.array([[0, 2, 200]])).shape == (1, 3, 3)
    assert table.decolorize(table.colorize(np.array([[2, 1, 0]], np.uint8))).tolist() == [[2, 1, 0]]


def test_a_tables_settings_are_accepted_at_their_bounds_and_refused_past_them():
    one = table_from_config({"count": 1})
    assert (one.name, one.names, one.ignore, one.label_format, one.instances) == ("custom", ("class 0",), None, "ids",
                                                                                 False)
    assert table_from_config({"count": 256}).num_classes == 256
    with pytest.raises(ConfigError, match=r"257 classes; a table holds 1 to 256"):
        table_from_config({"count": 257})
    with pytest.raises(ConfigError, match=r"got count=0"):
        table_from_config({"count": 0})
    named = table_from_config({"name": "mine", "names": ["a", 2], "ignore": 0, "instances": True})
    assert (named.name, named.names, named.ignore, named.instances) == ("mine", ("a", "2"), 0, True)
    assert table_from_config({"count": 3, "ignore": 2}).ignore == 2
    with pytest.raises(ConfigError, match=r"ignore=-1 is not a class id \(0..2\)"):
        table_from_config({"count": 3, "ignore": -1})
    palette = [[1, 2, 3], [4, 5, 6]]
    assert table_from_config({"count": 2, "palette": palette}).palette.tolist() == palette
    assert table_from_config({"count": 2, "palette": None}).palette.tolist() == table_from_config({"count": 2}).palette.tolist()


def test_file_values_map_through_offset_remap_unmapped_and_max_value_at_their_bounds():
    assert table_from_config({"count": 3}).lookup is None  # ids as they are: no lookup at all
    shifted = table_from_config({"count": 3, "offset": -1})  # ADE20K's v -> v - 1
    assert shifted.lookup.shape == (256,) and shifted.lookup[:5].tolist() == [-1, 0, 1, 2, -1]
    assert shifted.ids_from_values(np.array([1, 2, 3])).tolist() == [0, 1, 2]
    capped = table_from_config({"count": 10, "max_value": 4})  # values above 4 are refused
    assert capped.lookup[[0, 4, 5, 9]].tolist() == [0, 4, -1, -1]
    with pytest.raises(ValueError, match=r"values \[5\] in 1 pixels"):
        capped.ids_from_values(np.array([4, 5]))
    complete = table_from_config({"count": 3, "remap": {0: 2, 255: 0}, "unmapped": 1})
    assert complete.lookup.shape == (256,) and complete.lookup[[0, 1, 254, 255]].tolist() == [2, 1, 1, 0]
    assert table_from_config({"count": 3, "unmapped": 0}).lookup[7] == 0
    assert table_from_config({"count": 3, "unmapped": 2}).lookup[7] == 2
    for bad in (-1, 3):
        with pytest.raises(ConfigError, match=rf"unmapped={bad} is not a class id \(0..2\)"):
            table_from_config({"count": 3, "unmapped": bad})
    assert table_from_config({"count": 3, "remap": {7: 2}}).lookup[7] == 2  # the last class is a target
    for source, target in ((-1, 0), (256, 0), (7, 3), (7, -1)):
        with pytest.raises(ConfigError, match=rf"remap: {source} -> {target}; file values lie in 0..255 and ids in 0..2"):
            table_from_config({"count": 3, "remap": {source: target}})


def test_tables_for_id_maps_drop_the_mapping_and_read_distinct_colours():
    """The project's own label PNGs hold ids already: no file-value mapping, RGB in the table's colours."""
    ade = preset("ade20k")  # a lookup (v -> v - 1), ids format
    own = ade.for_id_maps()
    assert own.lookup is None and own.label_format == "auto" and own.names == ade.names
    assert own.ids_from_values(np.array([0, 150])).tolist() == [0, 150]
    coloured = table_from_config({"count": 3, "label_format": "color"})
    assert coloured.for_id_maps() is coloured  # no mapping, colours already read
    plain = table_from_config({"count": 3})  # no mapping but ids format: colours read as well where distinct
    assert plain.for_id_maps().label_format == "auto"
    twins = table_from_config({"count": 2, "palette": [[5, 5, 5], [5, 5, 5]]})
    assert twins.for_id_maps().label_format == "ids"  # one colour for two classes: ids only


def test_the_hints_name_binary_masks_and_other_datasets_ids_only_when_they_fit():
    table = table_from_config({"count": 3})
    with pytest.raises(ValueError, match=r"binary 0/255 mask.*remap=\{255:1\}"):
        table.ids_from_values(np.array([0, 255]))
    with pytest.raises(ValueError, match=r"binary 0/255 mask"):
        table.ids_from_values(np.array([255]))
    with pytest.raises(ValueError, match=r"ids up to 7: are they another dataset's") as caught:
        table.ids_from_values(np.array([0, 7]))
    assert "binary" not in str(caught.value)
    with pytest.raises(ValueError) as caught:  # a table with a mapping refuses, but without guessing a dataset
        table_from_config({"count": 3, "offset": -1}).ids_from_values(np.array([9]))
    assert "another dataset" not in str(caught.value) and ", after its remap" in str(caught.value)
    with pytest.raises(ValueError) as caught:
        table.ids_from_values(np.array([3]))
    assert ", after its remap" not in str(caught.value)


def test_colours_that_share_bits_across_channels_decode_apart():
    table = table_from_config({"count": 3, "palette": [[1, 0, 0], [0, 128, 0], [0, 0, 2]], "label_format": "color"})
    assert table.decolorize(table.palette[None]).tolist() == [[0, 1, 2]]
    last = table_from_config({"count": 2, "palette": [[0, 0, 0], [255, 255, 255]], "label_format": "color"})
    with pytest.raises(ValueError):
        last.decolorize(np.array([[[255, 255, 254]]], np.uint8))  # past the last colour: no class


def test_the_voc_palette_and_the_colours_past_a_table():
    from sdm.data.classes import voc_colours

    assert voc_colours(5).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert voc_colours(256)[255].tolist() == [224, 224, 192]  # the PASCAL VOC colour map's last entry
    mine = table_from_config({"count": 2, "palette": [[128, 0, 0], [0, 0, 0]]})
    extra = mine.full_palette[2:]
    assert mine.full_palette.shape == (256, 3) and mine.full_palette.dtype == np.uint8
    assert {tuple(c) for c in extra.tolist()}.isdisjoint({(128, 0, 0), (0, 0, 0)})  # never one of the table's
    assert len({tuple(c) for c in mine.full_palette.tolist()}) == 256
    assert table_from_config({"count": 256}).full_palette.shape == (256, 3)
    almost = table_from_config({"count": 255})  # one id left past the table: it gets a colour too
    assert almost.full_palette.shape == (256, 3) and almost.colorize(np.array([[255]])).shape == (1, 1, 3)


def test_an_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"no class table 'kitti'; the shipped ones are \['ade20k', 'celebamask', "
                                          r"'cityscapes', 'coco_stuff', 'generic', 'sidewalk'\]"):
        preset("kitti")
    with pytest.raises(ConfigError, match=r"^data/classes=generic: give names"):
        preset("generic")  # a count to fill in: named by where it came from


def test_values_past_eight_bits_are_refused_by_a_mapped_table():
    """A 16-bit label file can hold 256 and more: no lookup entry covers them, so they are named."""
    shifted = table_from_config({"count": 3, "offset": -1})
    with pytest.raises(ValueError, match=r"values \[256, 300\] in 2 pixels are not classes"):
        shifted.ids_from_values(np.array([1, 256, 300]))
    assert shifted.ids_from_values(np.array([1, 3])).tolist() == [0, 2]
    last_mapped = table_from_config({"count": 3, "remap": {255: 1}})  # the last entry is a class: 256 is not
    assert last_mapped.ids_from_values(np.array([255])).tolist() == [1]
    with pytest.raises(ValueError, match=r"values \[256\] in 1 pixels"):
        last_mapped.ids_from_values(np.array([255, 256]))


def test_a_configs_table_is_named_and_its_errors_name_the_field_they_came_from():
    old_run = class_table({"num_classes": 9})  # a run saved before tables
    assert (old_run.name, old_run.num_classes) == ("generic", 9)
    with pytest.raises(ConfigError, match=r"^data\.num_classes: 300 classes"):
        class_table({"num_classes": 300})
    with pytest.raises(ConfigError, match=r"^data\.classes: 300 classes"):
        class_table({"classes": {"count": 300}})
    assert class_table(None) is SIDEWALK  # no data block at all
    assert class_table({"classes": {"name": "four", "count": 4}}).name == "four"  # a plain dict
    block = OmegaConf.create({"n": 4, "classes": {"name": "four", "count": "${n}"}})
    assert class_table(block).num_classes == 4  # interpolations resolve against the whole config


def _rgb(channels: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(np.broadcast_to(np.array(channels, np.uint8), (2, 2, 3)).copy())


def test_rgb_labels_are_grey_id_maps_only_when_all_three_channels_agree():
    # sidewalk reads colours first (label_format auto), then grey values as ids
    assert label_to_ids(_rgb((5, 5, 5)), SIDEWALK).tolist() == [[5, 5], [5, 5]]  # no class's colour: an id
    assert label_to_ids(_rgb((70, 70, 70)), SIDEWALK).tolist() == [[18, 18], [18, 18]]  # a class's grey colour
    for two_agree in ((5, 5, 9), (9, 5, 5)):
        with pytest.raises(RowError, match="not a palette-coloured mask"):
            label_to_ids(_rgb(two_agree), SIDEWALK)
    ade = preset("ade20k")  # id maps only: a grey that is also a class's colour is still read as a value
    assert label_to_ids(_rgb((128, 128, 128)), ade).tolist() == [[127, 127], [127, 127]]
    colours = table_from_config({"name": "c", "count": 3, "palette": [[10, 0, 0], [0, 10, 0], [0, 0, 10]],
                                 "label_format": "color"})
    for grey in ((1, 1, 1), (200, 200, 200)):  # colours only: a grey is refused, below or past every colour
        with pytest.raises(RowError, match="not a palette-coloured mask"):
            label_to_ids(_rgb(grey), colours)
