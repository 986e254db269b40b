"""The embedded street-scene generator: determinism, sizes, layout, texture, learnability, schema."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdm.cli.scenes import main
from sdm.data.classes import CLASS_ID, NUM_CLASSES
from sdm.data.scenes import (
    CLASS_REFERENCE_COLOURS,
    GENERATED_CLASSES,
    generate_scene,
    measure_reference_colours,
    scenes_dataset,
)


def _nearest_reference(image: np.ndarray) -> np.ndarray:
    """Class of the nearest reference colour, per pixel, among the classes the generator draws."""
    ids = np.array(GENERATED_CLASSES)
    ref = CLASS_REFERENCE_COLOURS[ids].astype(np.float32)
    dist = ((image[..., None, :].astype(np.float32) - ref) ** 2).sum(-1)
    return ids[dist.argmin(-1)]


def test_same_seed_same_scene_other_seed_other_scene():
    image, label = generate_scene(123, 96, 128)
    image2, label2 = generate_scene(123, 96, 128)
    assert np.array_equal(image, image2) and np.array_equal(label, label2)
    image3, label3 = generate_scene(124, 96, 128)
    assert not np.array_equal(label, label3)
    assert np.abs(image.astype(int) - image3.astype(int)).mean() > 10


@pytest.mark.parametrize("size", [(64, 64), (37, 91), (200, 120), (1080, 1920)])
def test_any_size_gives_valid_arrays(size):
    image, label = generate_scene(7, *size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(GENERATED_CLASSES)
    assert label.max() < NUM_CLASSES


def test_geometry_is_relative_so_sizes_agree():
    for seed in range(4):
        _, small = generate_scene(seed, 64, 64)
        _, large = generate_scene(seed, 256, 256)
        assert (large[2::4, 2::4] == small).mean() > 0.85


def test_many_classes_are_used():
    used = set()
    for seed in range(32):
        used |= set(np.unique(generate_scene(seed, 64, 64)[1]).tolist())
    assert len(used) >= 18, sorted(used)
    for name in ("flat-road", "flat-sidewalk", "flat-curb", "construction-building", "sky",
                 "nature-vegetation", "vehicle-car", "human-person", "object-pole"):
        assert CLASS_ID[name] in used, name


def test_sky_above_road():
    rows_sky, rows_road = [], []
    for seed in range(16):
        _, label = generate_scene(seed, 64, 64)
        ys = np.arange(64)[:, None].repeat(64, 1)
        sky, road = label == CLASS_ID["sky"], label == CLASS_ID["flat-road"]
        if sky.any() and road.any():  # parked cars hide the road in a few scenes
            rows_sky.append(ys[sky].mean())
            rows_road.append(ys[road].mean())
    assert len(rows_sky) >= 12
    assert np.mean(rows_sky) + 15 < np.mean(rows_road)
    assert max(rows_sky) < 32  # the sky stays in the upper half


def test_regions_are_textured_not_flat():
    stds = []
    for seed in range(8):
        image, label = generate_scene(100 + seed, 128, 128)
        for c in np.unique(label):
            mask = label == c
            if mask.sum() >= 500:
                stds.append(image[mask].astype(np.float64).std(0).mean())
    assert min(stds) > 3.0 and np.mean(stds) > 8.0


def test_class_appearance_is_learnable_from_reference_colours():
    """Nearest reference colour recovers the label far better than chance (another scene's mask)."""
    scenes = [generate_scene(5_000 + i, 128, 128) for i in range(16)]
    preds = [_nearest_reference(image) for image, _ in scenes]
    agree = np.mean([(p == label).mean() for p, (_, label) in zip(preds, scenes, strict=True)])
    shuffled = np.mean([(preds[i] == scenes[(i + 1) % 16][1]).mean() for i in range(16)])
    # measured: agree 0.77, shuffled 0.23
    assert agree > 0.65 and agree > shuffled + 0.35, (agree, shuffled)


def test_reference_colours_are_the_generators_class_means():
    ref = measure_reference_colours(150, 64, seed=999)
    counts = np.zeros(NUM_CLASSES)
    for i in range(150):
        counts += np.bincount(generate_scene(999 * 1_000_003 + i, 64, 64)[1].ravel(), minlength=NUM_CLASSES)
    common = counts / counts.sum() > 0.005
    diff = np.abs(ref.astype(int) - CLASS_REFERENCE_COLOURS.astype(int)).max(1)
    assert common.sum() >= 12 and diff[common].max() <= 10, diff[common]
    assert CLASS_REFERENCE_COLOURS.shape == (NUM_CLASSES, 3) and CLASS_REFERENCE_COLOURS.dtype == np.uint8


def test_dataset_has_the_hub_schema_and_round_trips():
    import datasets

    ds = scenes_dataset(3, 48, 64, seed=5)
    assert ds.features == datasets.Features({"pixel_values": datasets.Image(), "label": datasets.Image()})
    assert len(ds) == 3
    row = ds[1]
    assert isinstance(row["pixel_values"], Image.Image) and row["pixel_values"].mode == "RGB"
    assert row["label"].mode == "L"
    image, label = generate_scene(5 * 1_000_003 + 1, 48, 64)
    assert np.array_equal(np.asarray(row["pixel_values"]), image)
    assert np.array_equal(np.asarray(row["label"]), label)


def test_cli_writes_a_grid(tmp_path):
    main(["--num", "3", "--size", "32", "--cols", "2", "--out", str(tmp_path)])
    grid = np.asarray(Image.open(tmp_path / "scenes_grid.png"))
    assert grid.shape == (2 * 2 * 32, 2 * 32, 3)  # two rows of (images, masks), two columns
