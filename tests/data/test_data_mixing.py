"""Real + synthetic training data: the share of synthetic rows per epoch, every real row once,
validation kept real, and clear refusals of a bad share."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers.configs import compose_train

from sdm.core.errors import ConfigError
from sdm.data.datamodule import ResumableShuffleSampler, SidewalkDataModule
from sdm.data.mixing import extra_ratio, synthetic_count

SIZE = 32


def one_epoch(real: int, synthetic: int, ratio: float, epoch: int = 0, rank: int = 0, world: int = 1) -> list[int]:
    sampler = ResumableShuffleSampler(real + synthetic, seed=3, rank=rank, world_size=world,
                                      mix=(real, synthetic, ratio))
    sampler.set_epoch(epoch)
    items = [index for index, _ in sampler]
    assert len(items) == len(sampler)
    return items


@pytest.mark.parametrize(("real", "synthetic", "ratio", "expected"),
                         [(30, 100, 0.5, 30), (30, 100, 0.25, 10), (30, 100, 0.0, 0), (30, 100, 1.0, 100),
                          (30, 10, 0.5, 30), (40, 100, 0.2, 10)])
def test_each_epoch_holds_every_real_row_once_and_the_requested_share(real, synthetic, ratio, expected):
    assert synthetic_count(real, synthetic, ratio) == expected
    items = one_epoch(real, synthetic, ratio)
    real_items = [i for i in items if i < real]
    synthetic_items = [i - real for i in items if i >= real]
    assert sorted(real_items) == ([] if ratio == 1.0 else list(range(real)))
    assert len(synthetic_items) == expected
    if items:
        assert len(synthetic_items) / len(items) == pytest.approx(ratio, abs=0.02)
    counts = Counter(synthetic_items)
    assert all(0 <= i < synthetic for i in counts)
    assert max(counts.values(), default=0) <= -(-expected // synthetic)  # no repeats while the pool lasts
    assert items != sorted(items) or len(items) < 2  # shuffled together


def test_epochs_draw_other_synthetic_rows_and_ranks_split_an_epoch():
    first, second = one_epoch(30, 100, 0.25, epoch=0), one_epoch(30, 100, 0.25, epoch=1)
    assert {i for i in first if i >= 30} != {i for i in second if i >= 30}
    assert one_epoch(30, 100, 0.25, epoch=1) == second  # a pure function of (seed, epoch)
    halves = one_epoch(30, 100, 0.25, rank=0, world=2) + one_epoch(30, 100, 0.25, rank=1, world=2)
    assert sorted(halves) == sorted(first)


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "half", "nan"])
def test_a_share_outside_0_1_is_refused_before_any_data_work(tmp_path, ratio):
    from sdm.training.fit import train

    cfg = compose_train(tmp_path / "run", f"data.extra={tmp_path / 'export'}", f"data.extra_ratio={ratio}")
    with pytest.raises(ConfigError, match=r"data\.extra_ratio=.*expected the share of synthetic rows per epoch"):
        train(cfg)
    assert not (tmp_path / "data-cache").exists() and not (tmp_path / "run").exists()
    assert extra_ratio({"extra_ratio": 0}) == 0.0 and extra_ratio({"extra_ratio": 1}) == 1.0
    assert extra_ratio({}) == 0.5  # configs written before the key existed


def test_mixing_into_a_streamed_source_is_refused_rather_than_ignored(tmp_path):
    from sdm.training.fit import train

    cfg = compose_train(tmp_path / "run", "data=sidewalk", f"data.extra={tmp_path / 'export'}", "data.streaming=true")
    with pytest.raises(ConfigError, match=r"data\.extra.*synthetic rows mix into a prepared source only"):
        train(cfg)
    assert not (tmp_path / "data-cache").exists()


def test_the_synthetic_source_is_the_runs_data_config_reading_the_export(tmp_path):
    from omegaconf import OmegaConf

    from sdm.data.mixing import extra_source_cfg

    data = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]", "data.resize=crop", "data.on_bad_row=skip",
                         f"data.extra={tmp_path / 'export'}").data
    extra = OmegaConf.to_container(extra_source_cfg(data))
    expected = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k != "scenes"}
    expected.update(name="sidewalk", path=str(tmp_path / "export"), revision=None, split="train", streaming=False,
                    extra=None, path_setting="data.extra")  # its messages name data.extra, not data.path
    assert extra == expected
    assert (extra["size"], extra["resize"], extra["on_bad_row"]) == ([SIZE, SIZE], "crop", "skip")


def test_the_datamodule_trains_on_real_and_synthetic_and_validates_on_real(tmp_path):
    from sdm.data.scenes import scenes_dataset

    export = tmp_path / "synthetic"
    (export / "data").mkdir(parents=True)
    scenes_dataset(12, SIZE, SIZE, seed=77).to_parquet(str(export / "data" / "train-00000-of-00001.parquet"))
    # one DataLoader worker, as users run it: the mixed set and its sampler cross into a worker process
    cfg = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=24", "data.num_workers=1",
                        f"data.extra={export}", "data.extra_ratio=0.25", "data.val_fraction=0.25")
    module = SidewalkDataModule(cfg.data)
    module.prepare_data()
    module.setup("fit")
    real, synthetic, ratio = module.mix
    assert (real, synthetic, ratio) == (18, 12, 0.25) and len(module.val_set) == 6
    assert len(module.train_set) == 30
    assert module.train_set[20]["image"].shape == (3, SIZE, SIZE)  # a plain index (no seed) works too
    loader = module.train_dataloader()
    items = [index for index, _ in module.sampler]
    assert sum(i >= real for i in items) == 6 and len(items) == 24
    batches = list(loader)  # a whole epoch through the worker
    assert len(batches) == 24 // 4 and batches[0]["image"].shape == (4, 3, SIZE, SIZE)
    first_synthetic = next(i for i in items if i >= real)
    item = module.train_set[(first_synthetic, 0)]
    from sdm.data.scenes import generate_scene

    image, label = generate_scene(77 * 1_000_003 + first_synthetic - real, SIZE, SIZE)
    assert set(np.unique(item["label"].numpy())) <= set(np.unique(label))  # a synthetic row, augmented


def test_a_segmenter_trained_with_synthetic_rows_is_cached_apart_from_the_real_one(tmp_path):
    from sdm.data.scenes import scenes_dataset
    from sdm.segmenter.cache import data_key

    export = tmp_path / "synthetic"
    (export / "data").mkdir(parents=True)
    scenes_dataset(4, SIZE, SIZE, seed=5).to_parquet(str(export / "data" / "train-00000-of-00001.parquet"))
    real = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]").data
    mixed = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]", f"data.extra={export}",
                          "data.extra_ratio=0.5").data
    assert data_key(real, "real-key") == "real-key"
    key = data_key(mixed, "real-key")
    assert key.startswith("real-key+synthetic-train-") and key.endswith("-r0.5")
    other = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]", f"data.extra={export}",
                          "data.extra_ratio=1").data
    assert data_key(other, "real-key").endswith("-r1") and data_key(other, "real-key") != key
