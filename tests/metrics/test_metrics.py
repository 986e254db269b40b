"""Evaluation metrics against closed forms and hand computations; no downloaded weights
(small feature networks are injected where the published metric uses Inception)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sdm.cli.weights import main as weights_command
from sdm.metrics import weights
from sdm.metrics.distances import (
    InceptionDistances,
    frechet_distance,
    gaussian_of,
    to_uint8,
)
from sdm.metrics.diversity import mean_pairwise, ms_ssim_scales, ssim_distance
from sdm.segmenter.scores import ConfusionMatrix, segmentation_scores


def points_with(mean: np.ndarray, variances: np.ndarray) -> torch.Tensor:
    """2d points whose sample mean is `mean` and unbiased covariance diag(`variances`), exactly."""
    d = len(mean)
    n = 2 * d
    scale = np.sqrt(variances * (n - 1) / 2)
    rows = [mean + sign * scale[i] * np.eye(d)[i] for i in range(d) for sign in (1, -1)]
    return torch.tensor(np.array(rows))


def test_frechet_distance_matches_the_closed_form_of_two_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    mean, cov = gaussian_of(points_with(mu1, s1))
    np.testing.assert_allclose(mean, mu1, atol=1e-12)
    np.testing.assert_allclose(cov, np.diag(s1), atol=1e-12)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    full = rotation @ np.diag(s1) @ rotation.T  # a full covariance against itself: only the means count
    assert frechet_distance(mu1, full, mu2, full) == pytest.approx(np.sum((mu1 - mu2) ** 2), abs=1e-8)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        gaussian_of(torch.zeros(1, 3))


class TinyFeatures(nn.Module):
    """A fixed random feature map on uint8 images, standing in for Inception."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.num_features = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        return torch.tanh(self.conv(x)).mean((2, 3))


def image_set(seed: int, shift: float = 0.0, n: int = 32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return list((torch.rand(n, 3, 16, 16, generator=gen) * 1.2 - 0.6 + shift).clamp(-1, 1).split(8))


def fid_and_kid(real: list[torch.Tensor], fake: list[torch.Tensor]) -> dict[str, float]:
    """FID and KID of two lists of batches, accumulated as the evaluation does."""
    distances = InceptionDistances(TinyFeatures(), sum(map(len, real)), sum(map(len, fake)))
    for batch in real:
        distances.update(batch, real=True)
    for batch in fake:
        distances.update(batch, real=False)
    return distances.compute()


def test_fid_is_zero_against_itself_and_grows_with_a_shift():
    real = image_set(0)
    same = fid_and_kid(real, real)
    assert abs(same["fid"]) < 1e-6 and abs(same["kid"]) < 1e-3  # KID: unbiased, random subsets
    scores = [fid_and_kid(real, image_set(1, shift)) for shift in (0.0, 0.2, 0.4)]
    fids = [s["fid"] for s in scores]
    assert fids[0] < fids[1] < fids[2] and fids[0] < 0.5 * fids[1]
    kids = [s["kid"] for s in scores]
    assert kids[1] < kids[2] and kids[2] > 0


def test_to_uint8_maps_the_range_exactly():
    images = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    assert to_uint8(images).flatten().tolist() == [0, 0, 128, 255, 255]


def test_pairwise_diversity_averages_pairs_then_masks():
    def mean_abs(a, b):
        return (a - b).abs().flatten(1).mean(1)

    constant = [torch.full((3, 1, 1, 1), v) for v in (0.0, 1.0)]
    groups = [torch.cat([constant[0], constant[1][:1]]), torch.zeros(2, 1, 1, 1), torch.ones(1, 1, 1, 1)]
    # mask 0: samples 0, 0, 0, 1 -> pairs (0,0)x3 and (0,1)x3: mean 0.5; mask 1: 0; mask 2: no pair
    assert mean_pairwise(groups, mean_abs) == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="at least two samples"):
        mean_pairwise([torch.ones(1, 1, 1, 1)], mean_abs)


def test_pixel_diversity_is_zero_for_identical_samples_and_positive_otherwise():
    assert [ms_ssim_scales(s, s) for s in (16, 32, 64, 256)] == [1, 2, 3, 5]
    gen = torch.Generator().manual_seed(0)
    for size in (16, 64):
        same = torch.rand(1, 3, size, size, generator=gen).repeat(3, 1, 1, 1) * 2 - 1
        assert mean_pairwise([same], ssim_distance) == pytest.approx(0.0, abs=1e-5)
        different = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
        assert mean_pairwise([different], ssim_distance) > 0.5


def test_lpips_diversity_with_a_random_backbone():
    import lpips

    from sdm.metrics.diversity import lpips_distance

    network = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # no download: random AlexNet
    gen = torch.Generator().manual_seed(0)
    same = torch.rand(1, 3, 32, 32, generator=gen).repeat(2, 1, 1, 1) * 2 - 1
    assert mean_pairwise([same], lpips_distance(network)) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise([torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1], lpips_distance(network)) > 0


def test_confusion_scores_match_a_hand_computation():
    target = torch.tensor([[0, 1, 1, 2], [2, 2, 3, 3]])
    pred = torch.tensor([[2, 1, 2, 2], [2, 0, 3, 1]])
    cm = ConfusionMatrix(num_classes=4, ignore_index=0)
    cm.update(pred[:1], target[:1])
    cm.update(pred[1:], target[1:])
    # pixel (0,0) has mask class 0: ignored. Remaining 7 pixels, 4 right.
    expected = torch.zeros(4, 4, dtype=torch.long)
    for t, p in [(1, 1), (1, 2), (2, 2), (2, 2), (2, 0), (3, 3), (3, 1)]:
        expected[t, p] += 1
    assert torch.equal(cm.matrix, expected)
    scores = cm.scores()
    # IoU: class 1: tp 1 / (2 + 2 - 1) = 1/3; class 2: 2 / (3 + 3 - 2) = 1/2; class 3: 1 / (2 + 1 - 1) = 1/2
    assert scores["per_class_iou"] == pytest.approx({1: 1 / 3, 2: 1 / 2, 3: 1 / 2})
    assert scores["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 7) and scores["pixels"] == 7
    absent = segmentation_scores(torch.diag(torch.tensor([5, 3, 0])), ignore_index=0)
    assert absent["per_class_iou"] == {1: 1.0, 2: None} and absent["miou"] == 1.0  # never-seen classes skipped
    assert math.isnan(segmentation_scores(torch.zeros(3, 3), 0)["miou"])
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(pred, target[:1])


def test_missing_weights_are_named_with_the_fix(tmp_path):
    message = weights.missing_message("inception", tmp_path)
    assert str(tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in message
    assert message.startswith("FID/KID") and "python -m sdm.cli.weights download" in message
    path = weights.weight_path("alexnet", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stand-in")
    assert weights.missing_message("alexnet", tmp_path) is None
    before = torch.hub.get_dir()
    try:
        weights.use_weights_dir(tmp_path)
        assert weights.checkpoint_dir() == tmp_path / "checkpoints"
    finally:
        torch.hub.set_dir(before)
    with pytest.raises(SystemExit) as done:
        weights_command(["check", "--dir", str(tmp_path)])
    assert done.value.code == 1  # inception is still missing


@pytest.mark.parametrize("size, scales", [(16, 1), (64, 3), (192, 5)])
def test_ssim_distance_is_one_minus_torchmetrics_on_unit_range_images(size, scales):
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure as ms_ssim,
    )
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    torch.manual_seed(0)
    a, b = torch.rand(3, 3, size, size) * 2 - 1, torch.rand(3, 3, size, size) * 2 - 1
    b[0] = a[0]
    got = ssim_distance(a * 1.5, b)  # values beyond [-1, 1] are clamped first
    unit_a, unit_b = ((a * 1.5).clamp(-1, 1) + 1) / 2, (b + 1) / 2
    assert ms_ssim_scales(size, size) == scales and got.shape == (3,)
    if scales == 1:
        expected = 1 - ssim(unit_a, unit_b, data_range=1.0, reduction="none")
    else:
        betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)[:scales]
        expected = 1 - ms_ssim(unit_a, unit_b, data_range=1.0, reduction="none",
                               betas=tuple(x / sum(betas) for x in betas))
    assert torch.allclose(got, expected, atol=1e-5)
    assert ssim_distance(a, a).abs().max() < 1e-5


def test_scores_of_an_empty_matrix_are_nan_not_an_error():
    empty = segmentation_scores(torch.zeros(4, 4, dtype=torch.long))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"]) and empty["pixels"] == 0
    one = torch.zeros(4, 4, dtype=torch.long)
    one[2, 2] = 1
    assert segmentation_scores(one)["pixel_accuracy"] == 1.0 and segmentation_scores(one)["miou"] == 1.0
    assert set(segmentation_scores(one)["per_class_iou"]) == {1, 2, 3}
