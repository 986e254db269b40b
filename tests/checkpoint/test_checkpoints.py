"""Checkpoint files without a training run: which file is the newest complete one, what a
loader refuses and why, and that weights go out and come back unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdm.checkpoint.files import (
    EMA_PREFIX,
    ema_state_dict,
    export_ema,
    find_latest_checkpoint,
    load_checkpoint,
    load_ema_weights,
    load_into,
    read_export_config,
    resolve_weights_source,
    unusable_reason,
)
from sdm.core.errors import CheckpointError
from sdm.training.callbacks import AtomicCheckpointIO
from sdm.training.ema import EMA, ema_decay


def save(path: Path, step: int, mtime: int) -> Path:
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {EMA_PREFIX + "w": torch.ones(2)}}, path)
    os.utime(path, ns=(mtime, mtime))
    return path


def test_newest_complete_checkpoint_wins_over_a_truncated_newer_one(tmp_path):
    folder = tmp_path / "checkpoints"
    older = save(folder / "step=0000004.ckpt", 4, 1_000_000_000)
    newer = save(folder / "step=0000008.ckpt", 8, 2_000_000_000)
    assert find_latest_checkpoint(tmp_path) == newer
    last = folder / "last.ckpt"
    last.write_bytes(newer.read_bytes()[: newer.stat().st_size // 2])  # a write cut short
    os.utime(last, ns=(3_000_000_000, 3_000_000_000))
    assert unusable_reason(last) is not None and unusable_reason(newer) is None
    assert find_latest_checkpoint(tmp_path) == newer
    newer.write_bytes(b"")
    assert find_latest_checkpoint(tmp_path) == older
    hidden = save(folder / ".last.ckpt.partial-1-abc.ckpt", 9, 4_000_000_000)  # a temporary name
    assert unusable_reason(hidden) is None and find_latest_checkpoint(tmp_path) == older
    assert find_latest_checkpoint(tmp_path / "elsewhere") is None


def test_atomic_save_leaves_no_temporary_file_and_round_trips(tmp_path):
    path = tmp_path / "deep" / "folder" / "last.ckpt"
    state = {"global_step": 3, "state_dict": {"a": torch.arange(5.0)}}
    AtomicCheckpointIO().save_checkpoint(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    loaded = load_checkpoint(path)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["a"], torch.arange(5.0))


class Payload(torch.nn.Module):
    """A class reference in a pickle: loading it would import and run code."""


@pytest.mark.parametrize(
    ("kind", "match"),
    [("missing", "does not exist"), ("truncated", "not a readable checkpoint"), ("garbage", "not a readable"),
     ("code", r"asks to import .*Payload\); refusing to load it")],
)
def test_load_checkpoint_refuses_with_the_path(tmp_path, kind, match):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        save(path, 1, 1)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif kind == "code":
        torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError, match=match) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_ema_weights_are_taken_by_prefix():
    state = {"state_dict": {EMA_PREFIX + "a.weight": torch.ones(1), "unet.a.weight": torch.zeros(1),
                            "ema.n_averaged": torch.tensor(3)}}
    assert set(ema_state_dict(state, "x")) == {"a.weight"}
    assert torch.equal(ema_state_dict(state, "x")["a.weight"], torch.ones(1))
    with pytest.raises(CheckpointError, match="'x' has no 'state_dict'"):
        ema_state_dict({"weights": {}}, "x")
    with pytest.raises(CheckpointError, match="'x' holds no EMA weights"):
        ema_state_dict({"state_dict": {"unet.a": torch.ones(1)}}, "x")


def test_weights_source_resolution(tmp_path):
    run = tmp_path / "run"
    assert_refused = pytest.raises(CheckpointError, match="holds no export")
    run.mkdir()
    with assert_refused:
        resolve_weights_source(run)
    ckpt = save(run / "checkpoints" / "last.ckpt", 2, 1)
    assert resolve_weights_source(run) == ckpt
    export_ema({"w": torch.ones(2)}, {"model": {}}, run / "export")
    assert resolve_weights_source(run) == run / "export" / "ema.safetensors"  # the export first
    assert resolve_weights_source(run / "export") == run / "export" / "ema.safetensors"
    assert resolve_weights_source(ckpt) == ckpt
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_weights_source(tmp_path / "nothing")
    weights, path = load_ema_weights(run)
    assert path.suffix == ".safetensors" and torch.equal(weights["w"], torch.ones(2))
    weights, path = load_ema_weights(ckpt)
    assert path == ckpt and torch.equal(weights["w"], torch.ones(2))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_ema_weights(broken)


def test_export_round_trip_and_config(tmp_path):
    weights = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    path = export_ema(weights, {"model": {"name": "tiny"}, "seed": 4}, tmp_path / "export")
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml", "ema.safetensors"]
    loaded, _ = load_ema_weights(path)
    assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert read_export_config(path) == {"model": {"name": "tiny"}, "seed": 4}
    lonely = tmp_path / "lonely" / "ema.safetensors"
    lonely.parent.mkdir()
    save_file({"a": torch.ones(1)}, str(lonely))
    with pytest.raises(CheckpointError, match="has no config.yaml beside it"):
        read_export_config(lonely)


def test_load_into_names_what_does_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_into(model, good, "ok")
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in model.state_dict().values())
    bad = dict(good)
    bad["0.weight"] = torch.zeros(4, 2)
    del bad["1.bias"]
    bad["2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as caught:
        load_into(model, bad, "other.ckpt")
    message = str(caught.value)
    assert "'other.ckpt' does not fit this model: 1 missing (e.g. ['1.bias']), 1 unexpected (e.g. ['2.weight'])" in message
    assert "1 with other shapes (e.g. 0.weight: (4, 2) there, (3, 2) here)" in message
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in model.state_dict().values())  # untouched


def test_ema_warmup_and_integer_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.95, warmup=True)
    with torch.no_grad():
        model.weight.fill_(0.0)
    expected = torch.zeros(2)
    for n in range(6):
        with torch.no_grad():
            model.weight.add_(1.0)
        model.num_batches_tracked += 1
        ema.update_parameters(model)
        if n == 0:
            expected = model.weight.detach().clone()  # the first update copies
        else:
            d = min(0.95, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert int(ema.module.num_batches_tracked) == 6  # integer buffers are copied, not averaged
    assert ema_decay(0.95, 3) == pytest.approx(4 / 13) and ema_decay(0.95, 3, warmup=False) == 0.95
    assert ema_decay(0.95, 10_000) == 0.95
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"ema.decay must lie in \(0, 1\)"):
            EMA(model, decay=bad)
    assert EMA(model).decay == 0.9999 and EMA(model).warmup is True


def test_the_newest_file_wins_whatever_its_name(tmp_path):
    folder = tmp_path / "checkpoints"
    save(folder / "step=0000004.ckpt", 4, 1_000_000_000)
    last = save(folder / "last.ckpt", 8, 2_000_000_000)  # sorts before "step=..." by name, but is newer
    assert find_latest_checkpoint(tmp_path) == last


def test_a_newest_checkpoint_that_carries_code_is_not_taken_as_complete(tmp_path):
    folder = tmp_path / "checkpoints"
    good = save(folder / "step=0000004.ckpt", 4, 1_000_000_000)
    code = folder / "last.ckpt"
    torch.save({"x": Payload()}, code)
    os.utime(code, ns=(2_000_000_000, 2_000_000_000))
    assert unusable_reason(code) is not None and find_latest_checkpoint(tmp_path) == good


def test_each_kind_of_misfit_alone_is_refused_and_examples_are_two():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1), torch.nn.Linear(1, 1))
    good = dict(model.state_dict())
    only_missing = {k: v for k, v in good.items() if not k.startswith("2.")}
    only_missing.pop("1.bias")
    with pytest.raises(CheckpointError, match=r"3 missing \(e.g. \['1.bias', '2.bias'\]\), 0 unexpected"):
        load_into(model, only_missing, "a")
    extra = {**good, "x.weight": torch.ones(1), "y.weight": torch.ones(1), "z.weight": torch.ones(1)}
    with pytest.raises(CheckpointError, match=r"0 missing \(e.g. \[\]\), 3 unexpected \(e.g. \['x.weight', 'y.weight'\]\)"):
        load_into(model, extra, "b")
    with pytest.raises(CheckpointError, match=r"1 with other shapes"):
        load_into(model, {**good, "2.bias": torch.ones(2)}, "c")


def test_a_checkpoint_without_ema_weights_is_named_by_its_path(tmp_path):
    path = tmp_path / "raw.ckpt"
    torch.save({"state_dict": {"unet.w": torch.ones(1)}}, path)
    with pytest.raises(CheckpointError, match=f"'{path}' holds no EMA weights"):
        load_ema_weights(path)


def test_the_exported_config_keeps_the_runs_key_order(tmp_path):
    """People read config.yaml top-down in the order the run resolved it, not alphabetically."""
    config = {"seed": 4, "model": {"name": "tiny", "base_channels": 32}, "data": {"size": 64}}
    path = export_ema({"a": torch.ones(1)}, config, tmp_path / "export")
    text = path.with_name("config.yaml").read_text()
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == ["seed", "model", "data"]
    assert text.index("name: tiny") < text.index("base_channels: 32")


def test_ema_averages_float_buffers_like_weights():
    """BatchNorm-style running statistics are part of what the EMA network computes with: they
    are averaged with the same decay, not copied from the raw network."""
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5, warmup=False)
    for value in (2.0, 4.0, 8.0):
        model.running_mean.fill_(value)
        ema.update_parameters(model)
    # first update copies (2), then 0.5 * 2 + 0.5 * 4 = 3, then 0.5 * 3 + 0.5 * 8 = 5.5
    torch.testing.assert_close(ema.module.running_mean, torch.full((2,), 5.5))
