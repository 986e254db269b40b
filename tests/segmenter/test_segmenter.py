"""The consistency segmenter: trains on the data's training split, is cached and reused,
loads back exactly, and (slow) reaches a useful mIoU on real held-out scenes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO

from sdm.core.configs import compose
from sdm.core.errors import CheckpointError, ConfigError
from sdm.segmenter.cache import INFO_FILE, WEIGHTS_FILE, load_segmenter
from sdm.segmenter.fit import train_segmenter
from sdm.segmenter.networks import SmallSegmenter, build_segmenter


def segmenter_cfg(tmp_path, *overrides: str):
    cfg = compose("segmenter", [
        "data.size=[32,32]", "data.scenes.num=24", "data.batch_size=4", "segmenter.batch_size=4", "data.num_workers=0",
        "data.export_png=false", f"data.cache_dir={tmp_path / 'data'}", "segmenter.max_steps=6",
        "segmenter.val_every=3", "segmenter.precision=32-true", "segmenter.progress_bar=false",
        f"segmenter.cache_dir={tmp_path / 'segmenters'}", "segmenter.accelerator=cpu", *overrides,
    ])  # fmt: skip
    return cfg


def test_trains_caches_and_reloads(tmp_path):
    folder = train_segmenter(segmenter_cfg(tmp_path))
    assert folder.parent == tmp_path / "segmenters" and folder.name.endswith("-unet-w32")
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["steps"] == 6 and info["size"] == [32, 32] and info["num_classes"] == 35
    calibration = info["calibration"]  # the instrument's own controls, on its validation split
    assert calibration["rows"] == 1 and calibration["blur_factor"] == 2
    assert calibration["real_miou"] == pytest.approx(info["real_val_miou"])
    assert calibration["blur_ratio"] == pytest.approx(calibration["blur_miou"] / calibration["real_miou"])
    assert 0 <= info["real_val_miou"] <= 1 and info["data_key"] in folder.name
    assert list((folder / "tb").glob("events.*")) and info["tensorboard"] == str(folder / "tb")  # beside its weights
    stamp = (folder / WEIGHTS_FILE).stat().st_mtime_ns
    assert train_segmenter(segmenter_cfg(tmp_path)) == folder  # reused, not retrained
    assert (folder / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    network, loaded = load_segmenter(folder)
    assert loaded == info and not network.training
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    logits = network(images)
    assert logits.shape == (2, 35, 32, 32) and network.features(images).shape == (2, 128)
    train_segmenter(segmenter_cfg(tmp_path, "segmenter.retrain=true"))
    assert (folder / WEIGHTS_FILE).stat().st_mtime_ns != stamp


def test_bad_settings_and_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"segmenter.arch='resnet' is invalid: expected one of \['unet', 'small', "):
        build_segmenter("resnet", 35)
    with pytest.raises(ConfigError, match="segmenter.max_steps=0 is invalid"):
        train_segmenter(segmenter_cfg(tmp_path, "segmenter.max_steps=0"))
    with pytest.raises(CheckpointError, match="holds no trained segmenter"):
        load_segmenter(tmp_path)
    (tmp_path / INFO_FILE).write_text(json.dumps({"arch": "small", "num_classes": 35, "width": 16}))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in SmallSegmenter(35, 32).state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="does not fit a small segmenter"):
        load_segmenter(tmp_path)


def test_torchvision_option_builds_without_downloads():
    network = build_segmenter("lraspp", 35, pretrained_backbone=False).eval()
    with torch.no_grad():
        images = torch.rand(1, 3, 64, 64) * 2 - 1
        assert network(images).shape == (1, 35, 64, 64) and network.features(images).ndim == 2


def reference_miou(predictions: list, labels: list) -> float:
    """mIoU by counting pixels class by class (labels 0 ignored), the textbook way."""
    import numpy as np

    pred, target = np.concatenate([p.ravel() for p in predictions]), np.concatenate([t.ravel() for t in labels])
    pred, target = pred[target != 0], target[target != 0]
    ious = []
    for c in range(1, 35):
        tp, fp, fn = ((pred == c) & (target == c)).sum(), ((pred == c) & (target != c)).sum(), ((pred != c) & (target == c)).sum()
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious))


def test_held_out_test_set_is_scored_on_every_row_and_recorded(tmp_path):
    from omegaconf import OmegaConf

    from sdm.data.prepare import decode_row, prepare_data
    from sdm.data.transforms import to_item
    from sdm.segmenter.controls import blur_control
    from sdm.segmenter.held_out import (
        calibration_scores,
        held_out_scores,
        score_held_out,
        test_data_cfg,
    )

    cfg = segmenter_cfg(tmp_path, "seed=3")
    folder = train_segmenter(cfg)
    assert folder.name.endswith("-unet-w32-seed3")  # another seed is another segmenter
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["seed"] == 3 and info["extra"] is None
    test = test_data_cfg(cfg.data, {"scenes": {"seed": 99, "num": 11}, "extra": "/ignored"})
    assert test.extra is None and list(test.size) == [32, 32]
    network, _ = load_segmenter(folder)
    scores = held_out_scores(network, test, batch_size=4)  # 4 + 4 + 3 rows
    prepared = prepare_data(test, show_progress=False)
    rows = [to_item(*decode_row(prepared.open()[i], prepared.size)) for i in range(11)]
    with torch.no_grad():
        predictions = [network(r["image"][None]).argmax(1)[0].numpy() for r in rows]
    assert scores["rows"] == 11 and scores["data_key"] == prepared.root.name != info["data_key"]
    assert scores["miou"] == pytest.approx(reference_miou(predictions, [r["label"].numpy() for r in rows]))
    calibration = calibration_scores(network, test, batch_size=4)  # the instrument's controls, against the textbook count
    with torch.no_grad():
        blurred = [network(blur_control(r["image"][None])).argmax(1)[0].numpy() for r in rows]
    labels = [r["label"].numpy() for r in rows]
    assert calibration["rows"] == 11 and calibration["real_miou"] == pytest.approx(scores["miou"])
    assert calibration["blur_miou"] == pytest.approx(reference_miou(blurred, labels))
    other = [labels[(i + 1) % 4 + 4 * (i // 4)] if i < 8 else labels[8 + (i - 8 + 1) % 3] for i in range(11)]
    assert calibration["other_mask_miou"] == pytest.approx(reference_miou(predictions, other))  # the next in its batch
    assert calibration["blur_ratio"] == pytest.approx(calibration["blur_miou"] / calibration["real_miou"])
    recorded = score_held_out(folder, cfg.data, OmegaConf.to_container(OmegaConf.create({"scenes": {"seed": 99, "num": 11}})),
                              INFO_FILE)
    assert recorded == scores and json.loads((folder / INFO_FILE).read_text())["test"] == scores


def test_a_mixed_segmenter_records_its_synthetic_share():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from sdm.segmenter.fit import mix_info

    mixed = SimpleNamespace(mix=(18, 12, 0.25))
    assert mix_info(OmegaConf.create({"extra": "/x"}), mixed) == {"path": "/x", "ratio": 0.25, "rows": 12,
                                                                   "real_rows": 18}
    assert mix_info(OmegaConf.create({"extra": None}), mixed) is None
    assert mix_info(OmegaConf.create({"extra": "/x"}), SimpleNamespace(mix=None)) is None


def test_a_test_set_must_be_held_out_and_a_cache_of_other_steps_is_retrained(tmp_path, capsys):
    from sdm.segmenter.held_out import score_held_out

    cfg = segmenter_cfg(tmp_path)
    folder = train_segmenter(cfg)
    with pytest.raises(ConfigError, match=r"reads the rows the segmenter trains on .*a test set must be held out"):
        score_held_out(folder, cfg.data, {"scenes": {"num": 24}}, INFO_FILE)
    assert "test" not in json.loads((folder / INFO_FILE).read_text())  # nothing recorded
    with pytest.raises(ConfigError, match=r"segmenter.test.size=\[8, 8\]: this source is read at the model's size"):
        score_held_out(folder, cfg.data, {"size": [8, 8]}, INFO_FILE)
    stamp = (folder / WEIGHTS_FILE).stat().st_mtime_ns
    assert train_segmenter(segmenter_cfg(tmp_path, "segmenter.max_steps=4")) == folder
    assert "trained 6 steps, not segmenter.max_steps=4: training it again" in capsys.readouterr().out
    assert json.loads((folder / INFO_FILE).read_text())["steps"] == 4
    assert (folder / WEIGHTS_FILE).stat().st_mtime_ns != stamp


@pytest.mark.slow  # starts a Python interpreter
def test_cli_refuses_a_bad_test_setting_before_training(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sdm.cli.segmenter", "data.scenes.num=24",
                           f"segmenter.cache_dir={tmp_path}", "segmenter.test=/data/test", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "segmenter.test='/data/test': expected data settings" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("*/segmenter.json"))
    same = subprocess.run([sys.executable, "-m", "sdm.cli.segmenter", "data.scenes.num=24", "data.size=[32,32]",
                           f"data.cache_dir={tmp_path / 'data'}", f"segmenter.cache_dir={tmp_path}",
                           "segmenter.test={scenes:{num:24}}", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert same.returncode == 2 and "a test set must be held out" in same.stderr
    assert not list(tmp_path.glob("*/segmenter.json"))  # refused before training
    start = subprocess.run([sys.executable, "-m", "sdm.cli.segmenter", "data.scenes.num=24", "data.size=[32,32]",
                            f"data.cache_dir={tmp_path / 'fresh'}", f"segmenter.cache_dir={tmp_path}",
                            f"segmenter.init={tmp_path / 'none'}", "segmenter.test={scenes:{seed:1,num:24}}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert start.returncode == 2 and f"segmenter.init={tmp_path / 'none'}: " in start.stderr
    assert "Traceback" not in start.stderr and not (tmp_path / "fresh").exists()  # before the test set is prepared


def test_fine_tuning_starts_from_the_named_segmenter_and_is_cached_apart(tmp_path):
    first = train_segmenter(segmenter_cfg(tmp_path))
    start, _ = load_segmenter(first)
    tuned_cfg = segmenter_cfg(tmp_path, f"segmenter.init={first}", "segmenter.max_steps=1", "segmenter.lr=1e-9",
                              "segmenter.val_every=1")
    tuned = train_segmenter(tuned_cfg)
    assert tuned != first and tuned.name.startswith(first.name + "-from")  # never mistaken for the scratch one
    info = json.loads((tuned / INFO_FILE).read_text())
    assert info["init"] == str(first.resolve()) and json.loads((first / INFO_FILE).read_text())["init"] is None
    after, _ = load_segmenter(tuned)
    tuned_weights = dict(after.named_parameters())  # (batch-norm statistics move with every batch, whatever the lr)
    for name, value in start.named_parameters():  # one step at lr 1e-9 leaves the starting weights in place
        assert torch.allclose(tuned_weights[name], value, atol=1e-5), name
    scratch, _ = load_segmenter(train_segmenter(segmenter_cfg(tmp_path / "other", "segmenter.max_steps=1",
                                                              "segmenter.lr=1e-9", "segmenter.val_every=1")))
    scratch_weights = dict(scratch.named_parameters())
    moved = [n for n, v in start.named_parameters() if not torch.allclose(scratch_weights[n], v, atol=1e-5)]
    assert moved  # from scratch, the same step lands elsewhere: the test can tell
    assert train_segmenter(tuned_cfg) == tuned  # cached under its own name


def test_a_starting_segmenter_that_does_not_fit_is_refused_before_any_work(tmp_path):
    first = train_segmenter(segmenter_cfg(tmp_path))
    before = sorted((tmp_path / "segmenters").iterdir())
    with pytest.raises(ConfigError, match=rf"segmenter.init={tmp_path / 'nothing'}: .* holds no trained segmenter"):
        train_segmenter(segmenter_cfg(tmp_path, f"segmenter.init={tmp_path / 'nothing'}"))
    with pytest.raises(ConfigError, match=r"segmenter.init=.* holds a unet of width 32 for 35 classes; this training "
                                          r"builds a unet of width 16 for 35"):
        train_segmenter(segmenter_cfg(tmp_path, f"segmenter.init={first}", "segmenter.width=16"))
    assert sorted((tmp_path / "segmenters").iterdir()) == before  # nothing written


def test_segmenter_seeds_differ_in_data_order_and_seed_zero_keeps_the_datas():
    from sdm.data.datamodule import SidewalkDataModule
    from sdm.segmenter.fit import segmenter_data

    settings = {"batch_size": 4, "augment": None}
    orders, splits = [], []
    for seed in (0, 1, 2):
        data = segmenter_data(compose("segmenter", ["data.size=[16,16]", "data.scenes.num=24", f"seed={seed}",
                                                    "data.num_workers=0"]), settings)
        assert data.batch_size == 4 and (data.get("order_seed") is None) == (seed == 0)
        module = SidewalkDataModule(data)
        module.setup("fit")
        orders.append([index for index, _ in module.train_dataloader().sampler])
        splits.append(sorted(module.train_set.indices.tolist()))
    assert splits[0] == splits[1] == splits[2]  # the same training rows, paired across seeds
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    default = SidewalkDataModule(compose("segmenter", ["data.size=[16,16]", "data.scenes.num=24",
                                                       "data.num_workers=0", "data.batch_size=4"]).data)
    default.setup("fit")
    assert [index for index, _ in default.train_dataloader().sampler] == orders[0]  # seed 0: the data's own order


def test_a_cached_segmenter_of_another_order_or_start_is_trained_again(tmp_path, capsys):
    folder = train_segmenter(segmenter_cfg(tmp_path, "seed=1"))
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["data_order_seed"] != 0
    info["data_order_seed"] = 0  # as a segmenter cached before seeds set their own order
    (folder / INFO_FILE).write_text(json.dumps(info))
    assert train_segmenter(segmenter_cfg(tmp_path, "seed=1")) == folder
    assert "saw its rows in another order (seed 0, not" in capsys.readouterr().out
    start = train_segmenter(segmenter_cfg(tmp_path))
    tuned = train_segmenter(segmenter_cfg(tmp_path, f"segmenter.init={start}", "segmenter.max_steps=2"))
    train_segmenter(segmenter_cfg(tmp_path, "segmenter.retrain=true", "seed=0", "segmenter.lr=1e-2"))  # new weights
    again = train_segmenter(segmenter_cfg(tmp_path, f"segmenter.init={start}", "segmenter.max_steps=2"))
    assert again != tuned  # fine-tuned from other weights: not the cached one
    (start / INFO_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"segmenter.init=.*is not a segmenter's info file \(JSONDecodeError"):
        train_segmenter(segmenter_cfg(tmp_path, f"segmenter.init={start}"))


def test_the_table_s_ignore_id_carries_no_target_and_is_not_scored(tmp_path):
    """Another table's ignore id (here 28, vegetation made 'no class'): the segmenter records it, its
    loss ignores those pixels and its mIoU leaves the class out."""
    folder = train_segmenter(segmenter_cfg(tmp_path, "data.classes.ignore=28"))
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["ignore"] == 28 and "28" not in info["real_val_per_class_iou"]
    assert "0" in info["real_val_per_class_iou"] or "1" in info["real_val_per_class_iou"]  # other classes are scored
