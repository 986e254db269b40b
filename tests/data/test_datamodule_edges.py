"""The DataModule's and the cache's rarer paths: one or no validation row, two ranks with as
many validation rows as ranks, an extra source prepared beside the main one, a killed
preparation's leftovers, 16-bit images and the preview's bands. Written from the data
package's mutation run after the restructure (#23)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.rows import hub_row, street_like, write_hub_parquet
from PIL import Image

from sdm.core.errors import DataError
from sdm.data import prepare as prepare_module
from sdm.data.classes import colorize
from sdm.data.datamodule import SidewalkDataModule
from sdm.data.pictures import pairs_grid
from sdm.data.prepare import cache_root_for, decode_row, prepare_data
from sdm.data.rows import image_to_rgb


def scenes_module(data_cfg, num: int, val_fraction: float, rank: int | None = None) -> SidewalkDataModule:
    dm = SidewalkDataModule(data_cfg("scenes", size=[16, 16], batch_size=1, num_workers=0,
                                     val_fraction=val_fraction, **{"scenes.num": num}))
    if rank is not None:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
    dm.setup("fit")
    return dm


# --- validation rows ------------------------------------------------------------------------


def test_the_sample_grid_takes_a_single_validation_row_and_none_from_an_empty_set(data_cfg):
    one = scenes_module(data_cfg, 8, 0.125)
    assert len(one.val_set) == 1
    batch = one.first_val_rows(4)
    assert batch is not None and batch["label"].shape == (1, 16, 16)
    assert torch.equal(batch["label"][0], one.val_set[0]["label"])
    empty = scenes_module(data_cfg, 8, 0.0)
    assert len(empty.val_set) == 0 and empty.first_val_rows(4) is None


def test_a_streamed_set_has_no_sample_grid_rows(tmp_path, data_cfg):
    folder = write_hub_parquet(tmp_path / "stream", [hub_row(*street_like(16, 16, s)) for s in range(6)])
    dm = SidewalkDataModule(data_cfg("sidewalk", path=str(folder), size=[16, 16], streaming=True, num_workers=0,
                                     batch_size=1, val_fraction=0.5))
    dm.setup("fit")
    assert dm.first_val_rows(2) is None
    streamed = [b["label"] for b in dm.val_dataloader()]
    assert streamed and all(label.shape[1:] == (16, 16) for label in streamed)  # the streamed val rows


def test_two_ranks_split_exactly_as_many_validation_rows_as_ranks(data_cfg):
    ranks = [scenes_module(data_cfg, 8, 0.25, rank) for rank in range(2)]
    assert [len(dm.val_set) for dm in ranks] == [2, 2]
    shares = [[i for b in dm.val_dataloader() for i in b["index"].tolist()] for dm in ranks]
    assert shares == [[0], [1]]  # one row each, not both rows on both ranks
    lone = [scenes_module(data_cfg, 8, 0.125, rank) for rank in range(2)]
    shares = [[i for b in dm.val_dataloader() for i in b["index"].tolist()] for dm in lone]
    assert shares == [[0], [0]]  # fewer rows than ranks: each rank scores them all, none is left without a batch


# --- the extra source -----------------------------------------------------------------------


def test_prepare_data_also_caches_the_extra_source(tmp_path, data_cfg):
    main = write_hub_parquet(tmp_path / "main", [hub_row(*street_like(16, 16, s)) for s in range(4)])
    extra = write_hub_parquet(tmp_path / "extra", [hub_row(*street_like(16, 16, 10 + s)) for s in range(3)])
    cfg = data_cfg("sidewalk", path=str(main), size=[8, 8], extra=str(extra))
    SidewalkDataModule(cfg).prepare_data()
    caches = sorted(p for p in cache_root_for(cfg).iterdir() if not p.name.startswith("."))
    rows = sorted(int(json.loads((p / "dataset_info.json").read_text())["rows"]) for p in caches)
    assert rows == [3, 4]  # the extra rows were prepared too, in a cache of their own
    cfg.extra = None
    assert len(list(cache_root_for(cfg).iterdir())) == 2


# --- a killed preparation -------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_killed_preparations_folder_is_removed_and_only_it(tmp_path, data_cfg, capsys):
    folder = write_hub_parquet(tmp_path / "rows", [hub_row(*street_like(16, 16, s)) for s in range(3)])
    cfg = data_cfg("sidewalk", path=str(folder), size=[8, 8])
    first = prepare_data(cfg, show_progress=False)
    key, parent, host = first.root.name, first.root.parent, socket.gethostname()
    shutil.rmtree(first.root)
    killed = parent / f".{key}.tmp-{host}-{dead_pid()}-abc123"
    alive = parent / f".{key}.tmp-{host}-{os.getpid()}-def456"  # a writer still running: its work stays
    other_kind = parent / f".{key}.partial-{host}-{dead_pid()}-0a0b0c"  # not a cache folder
    other_key = parent / f".other-8x8-stretch.tmp-{host}-{dead_pid()}-1a2b3c"  # another cache's leftover
    for leftover in (killed, alive, other_kind, other_key):
        leftover.mkdir()
        (leftover / "data.arrow").write_bytes(b"half")
    again = prepare_data(cfg, show_progress=False)
    assert again.root == first.root and (again.root / "dataset_info.json").is_file()
    assert not killed.exists() and alive.exists() and other_kind.exists() and other_key.exists()
    assert f"removed {killed}: the unfinished cache of a killed preparation" in capsys.readouterr().out


def test_the_cache_is_written_under_a_hidden_name_beside_it_and_removed_on_failure(tmp_path, data_cfg, monkeypatch):
    folder = write_hub_parquet(tmp_path / "rows", [hub_row(*street_like(16, 16, s)) for s in range(3)])
    cfg = data_cfg("sidewalk", path=str(folder), size=[8, 8])
    seen = []

    def fail_after_losing_the_folder(rows, tmp, *args):
        seen.append(tmp)
        tmp.rmdir()  # the folder is gone (e.g. removed by hand) when the writer fails
        raise DataError("row 2: broken")

    monkeypatch.setattr(prepare_module, "_write_cache", fail_after_losing_the_folder)
    with pytest.raises(DataError, match="row 2: broken"):  # the writer's error, not the clean-up's
        prepare_data(cfg, show_progress=False)
    (tmp,) = seen
    root = cache_root_for(cfg)
    assert tmp.parent == root and tmp.name.startswith(".") and f".tmp-{socket.gethostname()}-{os.getpid()}-" in tmp.name
    assert list(root.iterdir()) == []


# --- 16-bit images and the preview ------------------------------------------------------------


def test_sixteen_bit_images_are_scaled_to_eight_bits_by_truncation():
    wide = Image.fromarray(np.array([[0, 257, 32768, 65535]], np.uint16))
    assert wide.mode.startswith("I;16")
    rgb, mode = image_to_rgb(wide)
    assert mode == wide.mode and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 1, 127, 255] and (rgb[..., 2] == rgb[..., 0]).all()  # 32768 * 255/65535 = 127.5
    low = Image.fromarray(np.array([[0, 100, 200]], np.int32), "I")  # values that fit 8 bits stay as they are
    assert image_to_rgb(low)[0][0, :, 1].tolist() == [0, 100, 200]


def test_the_preview_puts_eight_pairs_in_a_band_images_above_masks():
    rows = [street_like(4, 4, s) for s in range(10)]
    out = pairs_grid([r[0] for r in rows], [r[1] for r in rows])
    pad, tile = 2, 4
    assert out.shape == (4 * (tile + pad) + pad, 8 * (tile + pad) + pad, 3)  # 2 bands of image + mask rows

    def at(row: int, column: int) -> np.ndarray:
        y, x = pad + row * (tile + pad), pad + column * (tile + pad)
        return out[y : y + tile, x : x + tile]

    for i, (image, label) in enumerate(rows):
        band, column = divmod(i, 8)
        assert np.array_equal(at(2 * band, column), image) and np.array_equal(at(2 * band + 1, column), colorize(label))
    assert (at(2, 2) == 255).all() and (at(3, 7) == 255).all()  # the second band is short: padding


# --- real + synthetic rows ------------------------------------------------------------------


def mixed_module(tmp_path, *overrides: str) -> SidewalkDataModule:
    from helpers.configs import compose_train

    from sdm.data.scenes import scenes_dataset

    export = tmp_path / "synthetic"
    (export / "data").mkdir(parents=True, exist_ok=True)
    scenes_dataset(6, 16, 16, seed=77).to_parquet(str(export / "data" / "train-00000-of-00001.parquet"))
    cfg = compose_train(tmp_path / "run", "data.size=[16,16]", "data.scenes.num=4", "data.num_workers=0",
                        "data.val_fraction=0.0", f"data.extra={export}", *overrides)
    return SidewalkDataModule(cfg.data)


def test_synthetic_rows_are_augmented_like_real_ones_and_setup_draws_no_bar(tmp_path, capsys):
    module = mixed_module(tmp_path, "data.augment.hflip=1.0", "data.augment.scale=[1.0,1.0]")
    module.prepare_data()
    capsys.readouterr()
    module.setup("fit")  # every rank runs setup: the caches are read quietly
    assert capsys.readouterr().err == ""
    real, _, _ = module.mix
    synthetic = module.train_set.synthetic
    image, _ = decode_row(synthetic.prepared.open()[int(synthetic.indices[0])], synthetic.prepared.size)
    item = module.train_set[(real, 0)]  # the first synthetic row, always flipped
    expected = torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(item["image"], expected)


def test_one_batch_must_fit_in_the_mixed_epoch_not_in_all_rows(tmp_path):
    module = mixed_module(tmp_path, "data.extra_ratio=0.5", "data.batch_size=9")
    module.prepare_data()
    module.setup("fit")
    assert len(module.train_set) == 10 and module.mix == (4, 6, 0.5)  # an epoch is 4 real + 4 synthetic rows
    with pytest.raises(DataError, match="8 training rows over 1 rank"):
        module.train_dataloader()
