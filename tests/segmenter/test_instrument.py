"""The consistency instrument on real held-out scenes (slow: trains the default segmenter once).

What a ruler for generated images must do: score real photos high against their own masks,
clearly lower when blurred (detail gone, layout kept), and near zero against another scene's
mask. The former default segmenter fails the blur bound; the default one passes all three.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REPO
from helpers.evaluation import write_sample_folder
from omegaconf import OmegaConf

from sdm.core.configs import compose
from sdm.metrics.evaluation import evaluate_set
from sdm.metrics.image_sets import from_sample_folder
from sdm.metrics.scoring import MAX_BLUR_RATIO, Networks
from sdm.segmenter import held_out
from sdm.segmenter.cache import load_segmenter
from sdm.segmenter.controls import blur_control
from sdm.segmenter.fit import train_segmenter

pytestmark = pytest.mark.slow
HELD_OUT = {"scenes": {"seed": 1, "num": 200}}


def segmenter_cfg(tmp_path, *overrides: str):
    """The segmenter command's config on the demo's data (the quickstart's 2,000 scenes at 32x32)."""
    cfg = compose("segmenter", ["data.size=[32,32]", "data.num_workers=1", "data.export_png=false",
                                          f"data.cache_dir={tmp_path / 'data'}", "segmenter.progress_bar=false",
                                          *overrides])
    return cfg


@pytest.fixture(scope="module")
def instruments(tmp_path_factory):
    """(config, default segmenter folder, former default folder), trained once for the module."""
    tmp = tmp_path_factory.mktemp("instrument")
    cfg = segmenter_cfg(tmp)
    former = segmenter_cfg(tmp, "segmenter.arch=small", "segmenter.width=16", "segmenter.max_steps=600",
                           "segmenter.batch_size=null", "segmenter.augment=null", "segmenter.precision=32-true")
    return cfg, train_segmenter(cfg), train_segmenter(former)


def test_the_default_instrument_tells_detail_and_the_former_one_cannot(instruments):
    cfg, default, former = instruments
    test = held_out.test_data_cfg(cfg.data, HELD_OUT)
    strong = held_out.calibration_scores(load_segmenter(default)[0], test)
    weak = held_out.calibration_scores(load_segmenter(former)[0], test)
    print(OmegaConf.to_yaml({"default": strong, "former": weak}))
    assert strong["real_miou"] >= 0.85  # the ceiling on scenes it never saw
    assert strong["blur_ratio"] <= 0.65 < MAX_BLUR_RATIO  # blurred photos clearly below real
    assert strong["other_mask_ratio"] <= 0.1  # another scene's mask: near zero
    assert weak["real_miou"] < 0.6 and weak["blur_ratio"] > 0.75  # the former default: blind to detail


def test_real_as_generated_scores_one_and_blurred_samples_score_like_the_blur_control(instruments, tmp_path):
    cfg, default, _ = instruments
    images, labels = next(held_out.prepared_batches(held_out.test_data_cfg(cfg.data, HELD_OUT), batch_size=48))
    photos = [((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for img in images]
    blurred = [((img + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
               for img in blur_control(images)]
    masks = [label.numpy().astype(np.uint8) for label in labels]
    network, info = load_segmenter(default)
    ecfg = OmegaConf.merge(OmegaConf.load(REPO / "conf/evaluation/default.yaml"),
                           {"progress": False, "tensorboard": False, "fid": False, "lpips": False})
    real_root = write_sample_folder(tmp_path / "real", masks, [[p] for p in photos], photos)
    real = evaluate_set(from_sample_folder(real_root), real_root, ecfg, nets=Networks(segmenter=network, segmenter_info=info))
    assert real["metrics"]["consistency_ratio"] == pytest.approx(1.0)
    assert real["instrument"]["reliable"], real["instrument"]
    blur_root = write_sample_folder(tmp_path / "blurred", masks, [[b] for b in blurred], photos)
    blurred_report = evaluate_set(from_sample_folder(blur_root), blur_root, ecfg, nets=Networks(segmenter=network, segmenter_info=info))["metrics"]
    assert blurred_report["consistency_ratio"] == pytest.approx(blurred_report["blur_control_ratio"], abs=0.03)
    assert blurred_report["consistency_ratio"] < 0.7
    assert real["metrics"]["other_mask_miou"] < 0.1 * real["metrics"]["real_miou"]  # another mask: near zero
