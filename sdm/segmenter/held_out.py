"""A trained segmenter scored on a held-out real test set (`segmenter.test=...`).

The validation split guides training; a study that compares training data (real, real +
synthetic, synthetic) needs a test set none of them has seen: another data source, or the
same generator of scenes with another seed. Every row of it is scored, no split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdm.core.atomic import write_json
from sdm.core.errors import ConfigError
from sdm.data.classes import class_table
from sdm.data.prepare import decode_row, prepare_data
from sdm.data.sources import overlay_source
from sdm.data.transforms import to_item
from sdm.segmenter.cache import load_segmenter
from sdm.segmenter.controls import BLUR_FACTOR, blur_control
from sdm.segmenter.scores import confusion_matrix, segmentation_scores


def test_data_cfg(data: DictConfig, test: Any) -> DictConfig:
    """The run's data settings with the test source laid over them (size kept, no synthetic rows)."""
    return overlay_source(data, test, "segmenter.test")


def refuse_training_rows(test: Any, test_key: str, train_key: str) -> None:
    """A test set must be held out: refuse one whose prepared rows are the training rows."""
    if train_key.split("+")[0] == test_key:  # a mixed segmenter's key starts with its real rows' key
        raise ConfigError(f"segmenter.test={test} reads the rows the segmenter trains on ({test_key}); a test set "
                          "must be held out: another path, or other scenes ({scenes:{seed:1,num:500}})")


@torch.no_grad()
def held_out_scores(network: nn.Module, data: DictConfig, batch_size: int = 64,
                    progress: bool = False) -> dict[str, Any]:
    """mIoU and pixel accuracy (the table's ignore id left out) of `network` on every row of the
    prepared `data`."""
    prepared = prepare_data(data, show_progress=False)
    num_classes, ignore = int(data.num_classes), class_table(data).ignore
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    network.eval()
    batches = tqdm(prepared_batches(data, batch_size), desc="test", unit="batch", disable=not progress,
                   total=-(-len(prepared) // batch_size))
    for images, labels in batches:
        matrix += confusion_matrix(network(images).argmax(1), labels, num_classes, ignore)
    scores = segmentation_scores(matrix, ignore)
    return {"data_key": prepared.root.name, "rows": len(prepared), "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"]}


@torch.no_grad()
def calibrate(network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
              blur_factor: int = BLUR_FACTOR, ignore: int | None = 0) -> dict[str, Any]:
    """Can `network` judge generated images? mIoU of real photos against their own masks (the
    ceiling), of their blurred copies (the blur control) and against the next photo's mask in
    the batch (the other-mask baseline), with the controls' ratios to the ceiling."""
    matrices = {key: torch.zeros(num_classes, num_classes, dtype=torch.long) for key in ("real", "blur", "other")}
    rows = 0
    network.eval()
    for images, labels in batches:
        pred = network(images).argmax(1)
        matrices["real"] += confusion_matrix(pred, labels, num_classes, ignore)
        matrices["blur"] += confusion_matrix(network(blur_control(images, blur_factor)).argmax(1), labels,
                                             num_classes, ignore)
        if len(labels) > 1:
            matrices["other"] += confusion_matrix(pred, labels.roll(-1, 0), num_classes, ignore)
        rows += len(labels)
    real, blur, other = (segmentation_scores(matrices[key], ignore)["miou"] for key in ("real", "blur", "other"))
    return {"rows": rows, "real_miou": real, "blur_miou": blur, "other_mask_miou": other, "blur_factor": blur_factor,
            "blur_ratio": blur / real if real > 0 else float("nan"),
            "other_mask_ratio": other / real if real > 0 else float("nan")}


def prepared_batches(data: DictConfig, batch_size: int = 64) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) of every row of the prepared `data`, in order, without augmentation."""
    prepared = prepare_data(data, show_progress=False)
    rows = prepared.open()
    for start in range(0, len(prepared), batch_size):
        items = [to_item(*decode_row(rows[i], prepared.size)) for i in range(start, min(start + batch_size, len(prepared)))]
        yield torch.stack([item["image"] for item in items]), torch.stack([item["label"] for item in items]).long()


def calibration_scores(network: nn.Module, data: DictConfig, blur_factor: int = BLUR_FACTOR,
                       batch_size: int = 64) -> dict[str, Any]:
    """`calibrate` on every row of a prepared data source (a held-out test set)."""
    return calibrate(network, prepared_batches(data, batch_size), int(data.num_classes), blur_factor,
                     class_table(data).ignore)


def score_held_out(folder: Path, data: DictConfig, test: Any, info_file: str) -> dict[str, Any]:
    """Score the segmenter in `folder` on the test source and record it in its info file."""
    if OmegaConf.is_config(test):
        test = OmegaConf.to_container(test, resolve=True)
    test_cfg = test_data_cfg(data, test)
    network, info = load_segmenter(folder)
    refuse_training_rows(test, prepare_data(test_cfg, show_progress=False).root.name, str(info["data_key"]))
    scores = held_out_scores(network, test_cfg)
    info["test"] = scores
    write_json(folder / info_file, info)
    print(f"segmenter on the held-out test set ({scores['rows']} rows, {scores['data_key']}): "
          f"mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}")
    return scores
