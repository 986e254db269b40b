"""Noisy-pixel filtering of the export's labels (sdm.generation.filtering): a region a generated
image draws as another class becomes unlabeled, and only it; thresholds follow each class's
mean loss on the real rows; unlabeled pixels carry no loss for the segmenter trained on the
export; a bad tolerance or a segmenter of other data is refused before any work."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.evaluation import PaletteReader, stripes, write_sample_folder
from torch import nn

from sdm.checkpoint.files import save_safetensors
from sdm.cli.export import main as export_main
from sdm.core.errors import ConfigError
from sdm.data.classes import colorize
from sdm.data.prepare import prepare_data
from sdm.generation import export as export_module
from sdm.generation.export import export_dataset
from sdm.generation.filtering import (
    UNLABELED,
    LabelFilter,
    PixelFilter,
    class_mean_losses,
    filter_labels,
    pixel_losses,
    prepare_filter,
)
from sdm.segmenter.cache import INFO_FILE, WEIGHTS_FILE
from sdm.segmenter.fit import SegmenterTask
from sdm.segmenter.networks import build_segmenter

SIZE = 32


class SoftPaletteReader(PaletteReader):
    """Reads each pixel as the nearest palette colour, with logits soft enough that every pixel has
    a loss: a pixel of its class's own colour costs exactly that class's real mean, another
    class's colour far more."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images) / 2000.0


def test_a_pixel_is_unlabeled_when_its_loss_exceeds_tolerance_times_its_class_mean():
    labels = np.array([[1, 1, 3], [2, 2, 3]], np.uint8)
    losses = torch.tensor([[0.1, 5.0, 9.0], [0.25, 0.26, 0.0]])
    means = torch.tensor([math.nan, 1.0, 0.2, math.nan])  # class 3 never seen among the real pixels
    filtered = filter_labels(losses, labels, means, tolerance=1.25)
    # class 1: 5.0 > 1.25; class 2: 0.26 > 0.25 but 0.25 is not; class 3 has no mean: kept
    assert filtered.tolist() == [[1, 0, 3], [2, 0, 3]]
    assert filter_labels(losses, labels, means, tolerance=6.0).tolist() == labels.tolist()
    assert labels.tolist() == [[1, 1, 3], [2, 2, 3]]  # the input is left as it was


def test_another_table_s_ignore_id_is_what_a_noisy_pixel_becomes():
    """ADE20K's unlabeled is 150, not 0: the filter writes it, and its pixels carry no loss or mean."""
    labels = np.array([[1, 1, 150], [2, 2, 0]], np.uint8)
    losses = torch.tensor([[0.1, 5.0, 9.0], [0.25, 0.26, 9.0]])
    means = torch.full((151,), math.nan, dtype=torch.float64)
    means[[0, 1, 2]] = torch.tensor([1.0, 1.0, 0.2], dtype=torch.float64)
    filtered = filter_labels(losses, labels, means, tolerance=1.25, unlabeled=150)
    assert filtered.tolist() == [[1, 150, 150], [2, 150, 150]]  # class 0 is a class here: its noisy pixel goes too
    network = SoftPaletteReader()
    ids = np.stack([stripes(SIZE, seed) for seed in range(2)])
    images = np.stack([colorize(label) for label in ids])
    losses = pixel_losses(network, images, ids, unlabeled=ids[0, 0, 0])
    assert (losses[torch.from_numpy(ids == ids[0, 0, 0])] == 0).all()  # the ignore id carries no loss


def test_class_means_are_the_mean_loss_of_each_class_over_the_real_pixels():
    network = SoftPaletteReader()
    labels = np.stack([stripes(SIZE, seed) for seed in range(5)])
    images = np.stack([colorize(label) for label in labels])
    images[0, :4] = colorize(np.full((4, SIZE), 30, np.uint8))  # a real photo need not be perfect
    means = class_mean_losses(network, zip(images, labels, strict=True), 35)
    losses = pixel_losses(network, images, labels)
    for cls in range(1, 35):
        where = torch.from_numpy(labels == cls)
        if where.any():
            assert means[cls].item() == pytest.approx(losses[where].double().mean().item(), rel=1e-6)
        else:
            assert math.isnan(means[cls])
    assert math.isnan(means[UNLABELED])  # unlabeled pixels have no target and no mean


def wrong_region_set(root: Path) -> tuple[Path, list[np.ndarray]]:
    """Samples that are colourings of their masks, but the first image of mask 1 paints rows 8-15
    as class 30, whatever its mask says."""
    labels = [stripes(SIZE, seed) for seed in range(3)]
    samples = [[colorize(label), colorize(label)] for label in labels]
    samples[1][0] = samples[1][0].copy()
    samples[1][0][8:16] = colorize(np.full((8, SIZE), 30, np.uint8))
    folder = write_sample_folder(root, labels, samples, settings={
        "sampler": {"name": "ddim", "num_steps": 10, "guidance_scale": 1.5}, "size": [SIZE, SIZE],
        "precision": "fp32", "masks": "test"}, train_data={"name": "scenes", "num_classes": 35})
    manifest = json.loads((folder / "manifest.json").read_text())
    for k, item in enumerate(manifest["items"]):
        item["sample_seeds"] = [100 * k, 100 * k + 1]
    manifest["num_per_mask"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, labels


def test_the_export_unlabels_the_wrong_region_and_only_it(tmp_path, monkeypatch):
    samples, labels = wrong_region_set(tmp_path / "samples")
    network = SoftPaletteReader()
    real = [(colorize(label), label) for label in (stripes(SIZE, seed) for seed in range(10, 30))]
    means = class_mean_losses(network, real, 35)
    monkeypatch.setattr(export_module, "prepare_filter",
                        lambda spec, train_data, size: LabelFilter(network, means, spec.tolerance, tmp_path / "seg"))
    out = export_dataset(samples, tmp_path / "hf", pixel_filter=PixelFilter("injected", 1.25))
    rows = list(datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train"))
    assert len(rows) == 6
    for row in rows:
        mask = int(row["source_mask"])
        label = np.asarray(row["label"])  # datasets decodes the Image column
        expected = labels[mask].copy()
        if mask == 1 and row["sample_index"] == 0:
            wrong = np.zeros_like(expected, bool)
            wrong[8:16] = labels[1][8:16] != 30  # where the mask said class 30 anyway, the image is right
            expected[wrong] = UNLABELED
            assert row["filtered_share"] == pytest.approx(wrong.sum() / (labels[1] != 0).sum())
        else:
            assert row["filtered_share"] == 0.0
        assert np.array_equal(label, expected), (mask, row["sample_index"])
    marker = json.loads((out / "sdm_export.json").read_text())
    assert marker["filter"]["tolerance"] == 1.25 and marker["filter"]["segmenter"] == str(tmp_path / "seg")
    assert "Labels are filtered" in (out / "README.md").read_text()


class Fixed(nn.Module):
    """A segmenter that answers every image with the same logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_unlabeled_pixels_carry_no_loss_for_the_segmenter_trained_on_the_export():
    task = SegmenterTask({"arch": "small", "width": 8, "pretrained_backbone": False}, 5)
    label = torch.tensor([[[1, 0], [2, 0]]])
    logits = torch.randn(1, 5, 2, 2)
    other = logits.clone()
    other[..., 1] = torch.randn(1, 5, 2)  # other predictions where the label is unlabeled only
    losses = []
    for out in (logits, other):
        task.network = Fixed(out)
        task.log = lambda *a, **k: None
        losses.append(task.training_step({"image": torch.zeros(1, 3, 2, 2), "label": label}, 0))
    assert losses[0].item() == pytest.approx(losses[1].item())
    kept = F.cross_entropy(logits[:, :, :, 0], label[:, :, 0]).item()  # the mean over the labelled pixels
    assert losses[0].item() == pytest.approx(kept)


@pytest.mark.parametrize("tolerance", [0, -1.0, math.nan, math.inf, True, "1.25"])
def test_a_tolerance_that_cannot_be_one_is_refused(tolerance):
    with pytest.raises(ConfigError, match=r"filter tolerance=.* is invalid: expected a number > 0"):
        PixelFilter("auto", tolerance)


def scenes(tmp_path: Path) -> dict:
    return {"name": "scenes", "num_classes": 35, "size": [SIZE, SIZE], "resize": "stretch", "val_fraction": 0.25,
            "split_seed": 0, "cache_dir": str(tmp_path / "data"), "on_bad_row": "error",
            "scenes": {"num": 8, "seed": 0, "size": None}}


def segmenter_folder(root: Path, data_key: str, size: list[int]) -> Path:
    root.mkdir(parents=True)
    network = build_segmenter("small", 35, 8)
    save_safetensors({k: v.contiguous() for k, v in network.state_dict().items()}, root / WEIGHTS_FILE)
    (root / INFO_FILE).write_text(json.dumps({"arch": "small", "width": 8, "num_classes": 35, "data_key": data_key,
                                              "size": size}))
    return root


def test_a_segmenter_of_other_data_or_size_is_refused_and_its_own_is_measured(tmp_path):
    from omegaconf import OmegaConf

    train_data = scenes(tmp_path)
    key = prepare_data(OmegaConf.create(train_data), show_progress=False).root.name
    other = segmenter_folder(tmp_path / "other", "sidewalk-train-abc", [SIZE, SIZE])
    with pytest.raises(ConfigError, match=rf"filter segmenter {other} learnt sidewalk-train-abc at {SIZE}x{SIZE}, but "
                                          rf"these samples come from a model of {re.escape(key)} at {SIZE}x{SIZE}"):
        prepare_filter(PixelFilter(str(other)), train_data, (SIZE, SIZE))
    smaller = segmenter_folder(tmp_path / "smaller", key, [16, 16])
    with pytest.raises(ConfigError, match=f"learnt {re.escape(key)} at 16x16"):
        prepare_filter(PixelFilter(str(smaller)), train_data, (SIZE, SIZE))
    own = segmenter_folder(tmp_path / "own", key, [SIZE, SIZE])
    ready = prepare_filter(PixelFilter(str(own), 2.0), train_data, (SIZE, SIZE))
    assert ready.tolerance == 2.0 and ready.folder == own
    assert torch.isfinite(ready.class_means[1:]).sum() >= 3  # the classes of the 6 training scenes
    with pytest.raises(ConfigError, match="filter segmenter=auto: no segmenter of this run's data is cached"):
        prepare_filter(PixelFilter("auto"), train_data, (SIZE, SIZE))  # the tests' segmenter cache holds none


def test_the_command_refuses_a_bad_tolerance_in_one_line_and_writes_nothing(tmp_path, capsys):
    samples, _ = wrong_region_set(tmp_path / "samples")
    with pytest.raises(SystemExit) as code:
        export_main([str(samples), "--out", str(tmp_path / "hf"), "--filter", "auto", "--tolerance", "0"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith("error: filter tolerance=0.0 is invalid") and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


def test_a_table_without_an_ignore_id_cannot_be_filtered():
    faces = {"name": "folder", "num_classes": 19, "classes": {"name": "faces", "count": 19, "ignore": None}}
    with pytest.raises(ConfigError, match=r"the 'faces' table has none \(data.classes.ignore=null\)"):
        prepare_filter(PixelFilter("auto"), faces, (SIZE, SIZE))
