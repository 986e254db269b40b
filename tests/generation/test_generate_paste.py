"""mask_variation=[paste]: people and vehicles of another mask drawn over this mask's ground, and
nowhere else: valid label maps, deterministic by seed, refused where the class table differs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.generation import mask_folder, sample_cfg

from sdm.core.errors import ConfigError
from sdm.data.classes import CLASS_ID
from sdm.generation import generate, load_model
from sdm.generation.masks import GROUND, PASTED, Mask, load_masks, paste_donors, paste_objects

ROAD, WALL, SKY, PERSON, CAR = (CLASS_ID[n] for n in ("flat-road", "construction-wall", "sky", "human-person",
                                                      "vehicle-car"))


def scene(top: int, bottom: int) -> np.ndarray:
    """Sky above a wall above road, the road from row `bottom` down."""
    label = np.full((8, 8), SKY, np.uint8)
    label[top:] = WALL
    label[bottom:] = ROAD
    return label


def test_objects_are_drawn_over_ground_only_and_the_rest_stays():
    recipient = Mask("r", 0, scene(2, 5), real=np.zeros((8, 8, 3), np.uint8))
    donor_label = scene(1, 3)
    donor_label[2:8, 3] = PERSON  # a person standing from the wall's row down to the road's bottom
    donor_label[6:8, 5:7] = CAR
    pasted = paste_objects(recipient, Mask("d", 1, donor_label))
    expected = recipient.label.copy()
    expected[5:8, 3] = PERSON  # only where the recipient has road: the wall stays in front above it
    expected[6:8, 5:7] = CAR
    assert np.array_equal(pasted.label, expected)
    assert pasted.name == "r-paste" and pasted.index == 0 and pasted.real is None  # the photo no longer matches
    assert set(PASTED) == {CLASS_ID[n] for n in CLASS_ID if n.startswith(("human-", "vehicle-"))}
    assert ROAD in GROUND and WALL not in GROUND and SKY not in GROUND


def test_donors_are_other_masks_drawn_from_the_seed():
    masks = [Mask(f"m{i}", i, np.where(np.arange(64).reshape(8, 8) % 8 == i, PERSON, ROAD).astype(np.uint8))
             for i in range(5)]
    first, again, other = paste_donors(masks, 0), paste_donors(masks, 0), paste_donors(masks, 1)
    assert all(np.array_equal(a.label, b.label) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a.label, b.label) for a, b in zip(first, other, strict=True))
    for mask, pasted in zip(masks, first, strict=True):
        donors = [j for j in range(8) if j != mask.index and (pasted.label[:, j] == PERSON).all()]
        assert len(donors) == 1  # exactly one other mask's person column came in
        assert pasted.label.max() < 35 and pasted.label.dtype == np.uint8
    with pytest.raises(ConfigError, match=r"mask_variation=\[paste\] needs at least 2 masks"):
        paste_donors(masks[:1], 0)


def test_a_generation_from_pasted_masks(run_dir, tmp_path):
    donor = scene(1, 3)
    donor[2:8, 3] = PERSON
    folder = mask_folder(tmp_path, {"a": scene(2, 5), "b": donor}, coloured=False)
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={folder}", f"out_dir={tmp_path / 'out'}",
                                   "num_per_mask=1", "mask_variation=[paste]"))
    assert [item["mask"] for item in manifest["items"]] == ["a-paste", "b-paste"]
    assert manifest["settings"]["mask_variation"] == ["paste"]
    model = load_model(run_dir)
    with pytest.raises(ConfigError, match=r"needs at least 2 masks"):
        load_masks(str(folder), model, 1, variations=["paste"])
    model.cfg["data"].update(num_classes=19, classes={"name": "faces", "count": 19})
    with pytest.raises(ConfigError, match=r"\[paste\] knows which classes .* this model's table is 'faces' \(19\)"):
        load_masks(str(folder), model, None, variations=["paste"])
