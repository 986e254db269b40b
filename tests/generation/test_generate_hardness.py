"""Hardness-aware re-sampling (sdm.generation.hardness): a mask's hardness is the pixel-weighted
mean of its classes' real loss, and the images per mask follow its order within [1, most]."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdm.core.errors import ConfigError
from sdm.generation.hardness import images_per_mask, mask_hardness

MEANS = torch.tensor([math.nan, 0.1, 0.5, 2.0, math.nan])  # class 4 has no real pixels


def test_a_masks_hardness_weighs_its_classes_by_their_pixels():
    label = np.array([[1, 1, 1], [3, 0, 4]], np.uint8)  # 3 pixels of class 1, 1 of class 3; 0 and 4 do not count
    assert mask_hardness(label, MEANS) == pytest.approx((3 * 0.1 + 2.0) / 4)
    assert mask_hardness(np.full((2, 2), 2, np.uint8), MEANS) == pytest.approx(0.5)
    assert math.isnan(mask_hardness(np.array([[0, 4]], np.uint8), MEANS))


def test_counts_follow_the_hardness_order_from_one_to_most():
    hardness = [0.6, 0.1, 2.0, 1.05, math.nan]
    assert images_per_mask(hardness, 5) == [2, 1, 5, 3, 3]  # 1 + round(4 * (h - 0.1) / 1.9); unknown: the middle
    counts = images_per_mask(list(np.random.default_rng(0).uniform(0, 3, 50)), 8)
    assert min(counts) == 1 and max(counts) == 8
    order = np.argsort(list(np.random.default_rng(0).uniform(0, 3, 50)), kind="stable")
    assert all(counts[a] <= counts[b] for a, b in zip(order, order[1:], strict=False))  # monotone in hardness
    assert images_per_mask(hardness, 1) == [1] * 5
    assert images_per_mask([0.4, 0.4], 5) == [3, 3]  # equally hard: nothing to rank by


@pytest.mark.parametrize("most", [0, -2, 2.5, True, "5"])
def test_a_bound_that_cannot_be_a_count_is_refused(most):
    with pytest.raises(ConfigError, match=r"hardness most=.* is invalid: expected an integer >= 1"):
        images_per_mask([0.1, 0.2], most)


def test_a_generation_makes_more_images_for_harder_masks(run_dir, tmp_path, monkeypatch):
    """With hardness={most: 4}: counts by the masks' hardness under the real rows' class means (here
    injected: class 8 costs 10x class 1), in the files, the manifest, the grid and the export card."""
    from helpers.generation import SIZE, bands, mask_folder, sample_cfg

    from sdm.generation import generate, hardness
    from sdm.generation.export import export_dataset
    from sdm.generation.filtering import LabelFilter

    means = torch.full((35,), 1.0, dtype=torch.float64)
    means[0], means[8] = math.nan, 10.0
    asked = []  # the real rows the segmenter is trained on: the run's data at the model's size
    monkeypatch.setattr(hardness, "prepare_filter", lambda spec, data, size: asked.append((data["size"], size))
                        or LabelFilter(torch.nn.Identity(), means, 1.0, tmp_path / "seg"))
    share = {"easy": (1, 2), "half": (8, 2), "hard": (8, 8)}  # class 8 on 0 %, 50 %, 100 % of the pixels
    masks = mask_folder(tmp_path, {name: bands(SIZE, SIZE, classes) for name, classes in share.items()})
    out = tmp_path / "out"
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "hardness={most:4}"))
    counts = {item["mask"]: len(item["images"]) for item in manifest["items"]}
    assert asked == [([SIZE, SIZE], (SIZE, SIZE))]
    assert counts == {"easy": 1, "half": 3, "hard": 4}  # hardness 1, 5.5, 10 -> 1 + round(3 * (h - 1) / 9)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "easy_0.png", "half_0.png", "half_1.png", "half_2.png", "hard_0.png", "hard_1.png", "hard_2.png", "hard_3.png"]
    assert manifest["settings"]["hardness"] == {"most": 4} and (out / "grids" / "grid_000.png").is_file()
    with pytest.raises(ConfigError, match="holds samples made with other settings .*hardness"):
        generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "hardness={most:2}"))
    card = (export_dataset(out, tmp_path / "hf") / "README.md").read_text()
    assert "1 to 4 (by hardness) per map" in " ".join(card.split())
    with pytest.raises(ConfigError, match="hardness most=0 is invalid"):
        generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'other'}",
                            "hardness={most:0}"))
