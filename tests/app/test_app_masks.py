"""The page's mask rules without a browser: strokes snap to class colours, uploads are refused with
the reason, and the download holds what sample.py would write for the mask."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from sdm.app.masks import MaskError, bundle, painted_ids, snap_to_palette, uploaded_ids
from sdm.data.classes import SIDEWALK, preset

SIZE = (8, 12)  # height, width: not square, so a swapped size is seen


def stripes() -> np.ndarray:
    ids = np.zeros(SIZE, np.uint8)
    ids[:, 4:8], ids[:, 8:] = 8, 34  # unlabeled | flat-sidewalk | the last class
    return ids


def test_an_anti_aliased_stroke_snaps_to_the_classes_it_lies_between():
    palette = SIDEWALK.palette.astype(np.float64)
    rgb = SIDEWALK.colorize(stripes()).astype(np.float64)
    rgb[0, 0] = palette[0] + [3, 0, 2]  # a colour a few levels off class 0
    halfway = 0.5 * palette[0] + 0.5 * palette[8]  # black to person's red: bicycle's colour, nearly
    assert int(((palette - halfway) ** 2).sum(-1).argmin()) == 15
    rgb[:, 3] = halfway  # a one-pixel soft edge between class 0 and class 8
    rgb[:, 7] = 0.7 * palette[8] + 0.3 * palette[34]  # and one between class 8 and class 34
    ids = snap_to_palette(rgb.round().astype(np.uint8), SIDEWALK)
    assert ids.dtype == np.uint8
    assert set(ids[:, 3]) <= {0, 8} and set(ids[:, 7]) <= {8, 34}  # never a third class
    expected = stripes()
    assert np.array_equal(np.delete(ids, [3, 7], axis=1), np.delete(expected, [3, 7], axis=1))
    exact = SIDEWALK.colorize(np.repeat(np.repeat(np.arange(35, dtype=np.uint8).reshape(5, 7), 2, 0), 2, 1))
    assert np.array_equal(snap_to_palette(exact, SIDEWALK), np.repeat(np.repeat(np.arange(35).reshape(5, 7), 2, 0), 2, 1))
    with_alpha = np.dstack([exact, np.full(exact.shape[:2], 255, np.uint8)])
    assert np.array_equal(snap_to_palette(with_alpha, SIDEWALK), snap_to_palette(exact, SIDEWALK))
    flat = np.broadcast_to(halfway.round().astype(np.uint8), (3, 3, 3))  # no neighbours to tell a blend by
    assert (snap_to_palette(flat, SIDEWALK) == 15).all()


def test_a_painted_canvas_must_be_whole_and_at_the_models_size():
    colours = SIDEWALK.colorize(stripes())
    assert np.array_equal(painted_ids({"composite": colours}, SIDEWALK, SIZE), stripes())
    with pytest.raises(MaskError, match="nothing painted yet"):
        painted_ids(None, SIDEWALK, SIZE)
    with pytest.raises(MaskError, match="nothing painted yet"):
        painted_ids({"composite": None}, SIDEWALK, SIZE)
    with pytest.raises(MaskError, match=r"the painted mask is 8x12 \(width x height\); this model makes 12x8"):
        painted_ids({"composite": colours.transpose(1, 0, 2)}, SIDEWALK, SIZE)
    erased = np.dstack([colours, np.full(SIZE, 255, np.uint8)])
    assert np.array_equal(painted_ids({"composite": erased}, SIDEWALK, SIZE), stripes())
    erased[2, 3, 3] = 0
    with pytest.raises(MaskError, match="transparent"):
        painted_ids({"composite": erased}, SIDEWALK, SIZE)
    with pytest.raises(MaskError, match=r"H x W x 3 colour image, got shape \(8, 12\)"):
        painted_ids({"composite": stripes()}, SIDEWALK, SIZE)


def test_uploads_of_ids_or_colours_are_read_and_bad_ones_named(tmp_path):
    ids_file, colour_file = tmp_path / "ids.png", tmp_path / "colours.png"
    Image.fromarray(stripes(), "L").save(ids_file)
    Image.fromarray(SIDEWALK.colorize(stripes())).save(colour_file)
    assert np.array_equal(uploaded_ids(ids_file, SIDEWALK, SIZE), stripes())
    assert np.array_equal(uploaded_ids(colour_file, SIDEWALK, SIZE), stripes())

    wrong_size = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(wrong_size)
    with pytest.raises(MaskError, match=r"^big\.png is 16x16 \(width x height\); this model makes 12x8 images"):
        uploaded_ids(wrong_size, SIDEWALK, SIZE)
    out_of_range = tmp_path / "ids99.png"
    Image.fromarray(np.full(SIZE, 99, np.uint8), "L").save(out_of_range)
    with pytest.raises(MaskError, match=r"^ids99\.png: .*99"):
        uploaded_ids(out_of_range, SIDEWALK, SIZE)
    unknown = tmp_path / "unknown.png"
    rgb = SIDEWALK.colorize(stripes())
    rgb[0, 0] = (1, 2, 250)  # in no class's colour
    Image.fromarray(rgb).save(unknown)
    with pytest.raises(MaskError, match=r"^unknown\.png: RGB label is not a palette-coloured mask"):
        uploaded_ids(unknown, SIDEWALK, SIZE)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(MaskError, match=r"^broken\.png cannot be read as an image"):
        uploaded_ids(broken, SIDEWALK, SIZE)
    ade = preset("ade20k")  # another table: its own ids (file value v is class v - 1)
    Image.fromarray(np.full(SIZE, 3, np.uint8), "L").save(tmp_path / "ade.png")
    assert (uploaded_ids(tmp_path / "ade.png", ade, SIZE) == 2).all()


def test_the_download_holds_the_images_the_label_ids_and_the_coloured_mask(tmp_path):
    images = [Image.new("RGB", (SIZE[1], SIZE[0]), (10 * k, 0, 0)) for k in range(3)]
    path = bundle(images, stripes(), SIDEWALK, "mask-seed4", tmp_path / "a" / "b" / "out.zip")  # folders made
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["colored_masks/mask-seed4.png", "images/mask-seed4_0.png",
                                              "images/mask-seed4_1.png", "images/mask-seed4_2.png",
                                              "labels/mask-seed4.png"]
        label = Image.open(io.BytesIO(archive.read("labels/mask-seed4.png")))
        assert label.mode == "L" and np.array_equal(np.asarray(label), stripes())
        coloured = np.asarray(Image.open(io.BytesIO(archive.read("colored_masks/mask-seed4.png"))))
        assert np.array_equal(coloured, SIDEWALK.colorize(stripes()))
        second = np.asarray(Image.open(io.BytesIO(archive.read("images/mask-seed4_2.png"))))
        assert (second[..., 0] == 20).all()


def test_a_thin_region_of_its_own_colour_is_kept_and_soft_edges_are_found_on_both_axes():
    """Two pixels of bicycle between unlabeled and person are a region (each has a neighbour of its
    colour), not a blend; a soft edge running across the image (between rows) is found like one
    running down it, at the border as well as inside."""
    palette = SIDEWALK.palette.astype(np.float64)
    ids = np.zeros((6, 7), np.uint8)
    ids[:, 3:5], ids[:, 5:] = 15, 8
    assert np.array_equal(snap_to_palette(SIDEWALK.colorize(ids), SIDEWALK), ids)
    rows = np.zeros((7, 2), np.uint8)  # a narrow mask: 2 pixels wide, classes 0 over 8
    rows[4:] = 8
    rgb = SIDEWALK.colorize(rows).astype(np.float64)
    rgb[3] = 0.5 * palette[0] + 0.5 * palette[8]  # a soft edge between rows 2 and 4
    snapped = snap_to_palette(rgb.round().astype(np.uint8), SIDEWALK)
    assert set(snapped[3].tolist()) <= {0, 8} and np.array_equal(np.delete(snapped, 3, 0), np.delete(rows, 3, 0))
    rgb = SIDEWALK.colorize(rows).astype(np.float64)
    rgb[0] = 0.5 * palette[0] + 0.5 * palette[8]  # a blend in the first row has one neighbour only: kept
    assert (snap_to_palette(rgb.round().astype(np.uint8), SIDEWALK)[0] == 15).all()
