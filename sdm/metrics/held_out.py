"""A trained segmenter scored on a held-out real test set (`segmenter.test=...`).

The validation split guides training; a study that compares training data (real, real +
synthetic, synthetic) needs a test set none of them has seen: another data source, or the
same generator of scenes with another seed. Every row of it is scored, no split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from sdm.atomic import write_atomically
from sdm.errors import ConfigError
from sdm.metrics.consistency import confusion_matrix, segmentation_scores

IGNORE = 0


def test_data_cfg(data: DictConfig, test: Any) -> DictConfig:
    """The run's data settings with the test source laid over them (size kept, no synthetic rows)."""
    from sdm.data.sources import overlay_source

    return overlay_source(data, test, "segmenter.test")


def refuse_training_rows(test: Any, test_key: str, train_key: str) -> None:
    """A test set must be held out: refuse one whose prepared rows are the training rows."""
    if train_key.split("+")[0] == test_key:  # a mixed segmenter's key starts with its real rows' key
        raise ConfigError(f"segmenter.test={test} reads the rows the segmenter trains on ({test_key}); a test set "
                          "must be held out: another path, or other scenes ({scenes:{seed:1,num:500}})")


@torch.no_grad()
def held_out_scores(network: nn.Module, data: DictConfig, batch_size: int = 64,
                    progress: bool = False) -> dict[str, Any]:
    """mIoU and pixel accuracy (class 0 ignored) of `network` on every row of the prepared `data`."""
    from sdm.data.prepare import decode_row, prepare_data
    from sdm.data.transforms import to_item

    prepared = prepare_data(data, show_progress=False)
    rows = prepared.open()
    num_classes = int(data.num_classes)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    network.eval()
    for start in tqdm(range(0, len(prepared), batch_size), desc="test", unit="batch", disable=not progress):
        items = [to_item(*decode_row(rows[i], prepared.size)) for i in range(start, min(start + batch_size, len(prepared)))]
        images = torch.stack([item["image"] for item in items])
        labels = torch.stack([item["label"] for item in items])
        matrix += confusion_matrix(network(images).argmax(1), labels, num_classes, IGNORE)
    scores = segmentation_scores(matrix, IGNORE)
    return {"data_key": prepared.root.name, "rows": len(prepared), "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"]}


def score_held_out(folder: Path, data: DictConfig, test: Any, info_file: str) -> dict[str, Any]:
    """Score the segmenter in `folder` on the test source and record it in its info file."""
    from sdm.data.prepare import prepare_data
    from sdm.metrics.segmenter import load_segmenter

    if OmegaConf.is_config(test):
        test = OmegaConf.to_container(test, resolve=True)
    test_cfg = test_data_cfg(data, test)
    network, info = load_segmenter(folder)
    refuse_training_rows(test, prepare_data(test_cfg, show_progress=False).root.name, str(info["data_key"]))
    scores = held_out_scores(network, test_cfg)
    info["test"] = scores
    write_atomically(folder / info_file, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    print(f"segmenter on the held-out test set ({scores['rows']} rows, {scores['data_key']}): "
          f"mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}")
    return scores
