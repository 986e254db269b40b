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
