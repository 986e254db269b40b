"""A dataset in each common layout, end to end with its own class table: prepare, train a few steps,
sample from its validation masks, evaluate; the masks, grids and report use its classes and colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.configs import compose_train
from helpers.folders import write_layout
from helpers.generation import sample_cfg
from PIL import Image
from torch import nn

from sdm.core.configs import compose
from sdm.data.classes import class_table
from sdm.generation import generate
from sdm.generation.export import export_dataset
from sdm.generation.weights import load_model
from sdm.metrics.evaluation import evaluate_set
from sdm.metrics.image_sets import from_sample_folder
from sdm.metrics.scoring import Networks
from sdm.training.fit import train

PRESETS = {"plain": ("folder", 5), "ade20k": ("ade20k", 151), "cityscapes": ("cityscapes", 35),
           "coco_stuff": ("coco_stuff", 183), "celebamask": ("celebamask", 19)}
QUIET_EVALUATION = ["evaluation.segmenter=none", "evaluation.fid=false", "evaluation.lpips=false",
                    "evaluation.progress=false", "evaluation.tensorboard=false"]


@pytest.mark.slow  # five small trainings
@pytest.mark.parametrize("layout", list(PRESETS))
def test_a_dataset_in_its_layout_trains_samples_and_evaluates_with_its_classes(tmp_path, layout):
    preset, channels = PRESETS[layout]
    root = tmp_path / "dataset"
    write_layout(root, layout, [f"{i:03d}" for i in range(12)], size=(16, 16))
    extra = ["data.classes.count=5", "data.classes.ignore=0"] if layout == "plain" else []
    run = tmp_path / "run"
    cfg = compose_train(run, f"data={preset}", f"data.path={root}", "data.size=[16,16]", "data.resize=stretch",
                        "data.val_fraction=0.25", "data.batch_size=3", "data.num_workers=0", "trainer.max_steps=2",
                        "validation.every_n_steps=2", "checkpoint.every_n_steps=2", *extra,
                        cache_dir=tmp_path / "cache")
    train(cfg)
    table = class_table(cfg.data)
    model = load_model(run)
    assert table.num_classes == model.unet.num_classes == channels  # the model's label channels are the table's
    assert class_table(model.cfg["data"]).names == table.names  # and the run keeps its table
    assert model.unet.edge_channel == (preset in ("cityscapes", "coco_stuff", "celebamask"))  # the paper's inputs
    out = tmp_path / "samples"
    manifest = generate(sample_cfg(f"weights={run}", "masks=val", f"out_dir={out}", "num_per_mask=1"))
    assert manifest["complete"] and manifest["train_data"]["num_classes"] == channels
    for item in manifest["items"]:  # the coloured masks are the table's colours of the ids
        ids = np.asarray(Image.open(out / item["label"]))
        coloured = np.asarray(Image.open(out / item["label"].replace("labels/", "colored_masks/")))
        assert ids.max() < channels and np.array_equal(coloured, table.colorize(ids))
    image_set = from_sample_folder(out)
    found = sorted(set(np.unique(np.stack([e.label for e in image_set.entries]))) - {table.ignore})
    nets = Networks(segmenter=OneClass(channels, int(found[0])))  # scores one class, so the chart has a bar
    report = evaluate_set(image_set, out, compose("evaluate", QUIET_EVALUATION).evaluation, nets=nets)
    assert report["classes"]["table"] == table.name and len(report["classes"]["names"]) == channels
    assert report["classes"]["ignore"] == table.ignore
    pixels = report["per_class_iou"]["mask_pixels"]
    assert {c for c, n in pixels.items() if n > 0} == {str(c) for c in found}  # the ignore id is not scored
    html = (out / "evaluation.html").read_text()
    for c in found:  # each class's bar in the table's colour, under the table's name
        assert "rgb({},{},{})".format(*table.palette[c]) in html and f"{c} {table.names[c]}" in html
    card = (export_dataset(out, tmp_path / "export") / "README.md").read_text()
    assert f"class ids 0..{channels - 1} of the\n`{table.name}` class table" in card
    assert f"{channels - 1}: {table.names[-1]}" in card and ("cc-by-nc-4.0" in card) == (table.name == "sidewalk")


class OneClass(nn.Module):
    """A segmenter that reads every pixel as class `k`."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.channels, self.k = channels, k

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.channels, *x.shape[2:])
        logits[:, self.k] = 1.0
        return logits

    def features(self, x):  # the segmenter distance's pooled features
        return x.mean((2, 3))
