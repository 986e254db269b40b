"""What a generation says and keeps beside its images: the printed plan, the manifest's records, the
files it trusts on a resume, its folders and the settings it refuses. Written for the generation
package's mutation run after the move into sub-packages (its survivors, one behaviour each)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from helpers.generation import SIZE, bands, masks_of, pixels, sample_cfg
from PIL import Image

from sdm.core.atomic import WriteError
from sdm.core.errors import ConfigError
from sdm.generation import generate
from sdm.generation.masks import Mask


def stub_sampler(monkeypatch, steps_seen: list | None = None):
    """Sampling replaced by grey images, its step callback driven as the sampler drives it."""
    import sdm.generation.run as generation

    def sample(model, cond, *, num_steps, callback=None, **kwargs):
        for i in range(num_steps):
            if callback is not None:
                callback(i, num_steps, cond)
        if steps_seen is not None:
            steps_seen.append(num_steps)
        return torch.zeros(cond.shape[0], 3, *cond.shape[-2:])

    monkeypatch.setattr(generation, "sample", sample)


def test_the_plan_is_printed_and_the_manifest_records_seeding_and_time(run_dir, tmp_path, capsys):  # noqa: F811
    masks = masks_of(tmp_path, 3)
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'out'}"))
    assert capsys.readouterr().out.startswith("3 masks x 2 samples, ddim 2 steps, guidance 1.5, fp32 on cpu")
    assert manifest["seeding"] == ("sample k of mask i: torch.Generator seeded with "
                                   "sdm.generation.sample_seed(seed + i, k)")
    assert isinstance(manifest["seconds"], float) and 0 < manifest["seconds"] == round(manifest["seconds"], 2)


def test_weights_outside_a_run_sample_into_the_output_root_without_out_dir(run_dir, tmp_path):  # noqa: F811
    loose = tmp_path / "loose"
    shutil.copytree(run_dir / "export", loose)
    masks = masks_of(tmp_path, 1)
    manifest = generate(sample_cfg(f"weights={loose}", f"masks={masks}", f"output_root={tmp_path / 'root'}",
                                   "num_per_mask=1"))
    assert manifest["complete"] and manifest["out_dir"].startswith(str(tmp_path / "root" / "samples"))


def test_an_output_folder_that_is_a_file_is_named_by_its_setting(run_dir, tmp_path):  # noqa: F811
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    with pytest.raises(WriteError, match=f"^out_dir={re.escape(str(blocker))} "):
        generate(sample_cfg(f"weights={run_dir}", f"out_dir={blocker}"))


def test_a_damaged_or_misfitting_image_is_drawn_again_and_a_good_mask_file_is_kept(run_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    args = [f"weights={run_dir}", f"masks={masks_of(tmp_path, 2)}", f"out_dir={out}"]
    generate(sample_cfg(*args))
    images = sorted((out / "images").glob("*.png"))
    before = {p.name: pixels(p) for p in images}
    images[0].write_bytes(images[0].read_bytes()[:60])  # a copy cut short
    Image.new("RGB", (8, 8)).save(images[1])  # decodes, but not at the mask's size
    Image.new("RGB", (4, 4)).save(out / "labels" / "m0.png")  # a mask file of another size: written again
    kept = np.full((SIZE, SIZE, 3), 7, np.uint8)
    Image.fromarray(kept).save(out / "colored_masks" / "m1.png")  # one at its size: kept as it is
    again = generate(sample_cfg(*args))
    said = capsys.readouterr().out
    assert again["images_made"] == 2 and "drawing it again" in said and "is 8x8, expected 16x16" in said
    for p in images:
        assert np.array_equal(pixels(p), before[p.name]), p.name
    assert pixels(out / "labels" / "m0.png").shape == (SIZE, SIZE)
    assert np.array_equal(pixels(out / "colored_masks" / "m1.png"), kept)


def test_the_caches_of_the_run_are_recorded_absolute_and_absent_ones_stay_absent(tmp_path, monkeypatch):
    from sdm.generation.run import absolute_caches

    monkeypatch.chdir(tmp_path)
    data = {"cache_dir": "cache", "hub_cache_dir": "~/hub", "path": "segments/sidewalk-semantic", "size": [8, 8]}
    assert absolute_caches(data) == {**data, "cache_dir": str(tmp_path / "cache"),
                                     "hub_cache_dir": str((tmp_path / "x").home() / "hub")}
    assert absolute_caches({"cache_dir": None, "path": None}) == {"cache_dir": None, "path": None}


def test_a_mask_source_names_the_default_folder_by_a_stable_digest_of_its_settings(tmp_path):
    from sdm.generation import default_out_dir

    export = tmp_path / "run" / "export" / "ema.safetensors"
    named = default_out_dir(sample_cfg("weights=x", "mask_source={scenes:{num:5,seed:2}}"), export)
    assert named == tmp_path / "run" / "samples" / "ddim-s1.5-n2-source282598"  # pinned: a rerun finds it
    other_order = default_out_dir(sample_cfg("weights=x", "mask_source={scenes:{seed:2,num:5}}"), export)
    other = default_out_dir(sample_cfg("weights=x", "mask_source={scenes:{num:5,seed:3}}"), export)
    assert other_order == named and re.fullmatch(r"ddim-s1\.5-n2-source\d{6}", other.name) and other != named


def test_the_run_passes_its_source_seed_and_hardness_to_the_masks(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation

    seen = {}
    real_load = generation.load_masks

    def load_masks(spec, model, limit, source=None, variations=(), seed=0):
        seen.update(source=source, variations=variations, seed=seed)
        return real_load(spec, model, limit, source, variations, seed)

    monkeypatch.setattr(generation, "load_masks", load_masks)
    stub_sampler(monkeypatch)
    generate(sample_cfg(f"weights={run_dir}", "mask_source={scenes:{num:6,seed:2}}", "mask_variation=[crop]",
                        "seed=3", "limit=1", "num_per_mask=1", f"out_dir={tmp_path / 'out'}"))
    assert seen == {"source": {"scenes": {"num": 6, "seed": 2}}, "variations": ["crop"], "seed": 3}


def test_instance_maps_give_the_edges_where_masks_have_them_and_class_ids_where_not(monkeypatch):
    import sdm.generation.run as generation
    from sdm.generation.run import sample_batch

    calls = []

    def condition(label, num_classes, edge_channel, edge_ids=None):
        calls.append((label.clone(), edge_channel, None if edge_ids is None else edge_ids.clone()))
        return torch.zeros(label.shape[0], num_classes + int(edge_channel), *label.shape[1:])

    monkeypatch.setattr(generation, "label_to_condition", condition)
    monkeypatch.setattr(generation, "sample", lambda unet, cond, **kw: torch.zeros(cond.shape[0], 3, 4, 4))
    monkeypatch.setattr(generation, "noise_config", lambda cfg: None)
    label = bands(4, 4, (1, 2))
    instance = np.arange(16, dtype=np.int32).reshape(4, 4)
    with_ids, without = Mask("a", 0, label, instance=instance), Mask("b", 1, label + 1)

    class Unet:
        num_classes, edge_channel = 35, True

    class Model:
        unet, cfg = Unet(), {}

    cfg = sample_cfg()
    sample_batch(Model(), [(with_ids, 0), (without, 0)], 3, cfg, torch.device("cpu"))
    labels, edge, ids = calls[-1]
    assert edge is True and labels.tolist() == [label.tolist(), (label + 1).tolist(), (label + 1).tolist()]
    assert ids.dtype == torch.int64 and ids.tolist() == [instance.tolist(), (label + 1).tolist(), (label + 1).tolist()]
    sample_batch(Model(), [(without, 0)], 1, cfg, torch.device("cpu"))
    assert calls[-1][2] is None  # no instance map in the batch: the labels' own edges
    Unet.edge_channel = False
    sample_batch(Model(), [(with_ids, 0)], 1, cfg, torch.device("cpu"))
    assert calls[-1][1:] == (False, None)  # a model without the edge channel never reads them


def test_a_row_without_a_photo_shows_a_grey_tile_beside_rows_with_one(tmp_path):
    from sdm.generation.grids import grid_row
    from sdm.generation.layout import image_name

    (tmp_path / "images").mkdir()
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "images" / image_name("m", 0))
    row = grid_row(tmp_path, Mask("m", 0, np.zeros((4, 6), np.uint8)), 1, with_real=True)
    assert [tile.shape for tile in row] == [(4, 6, 3)] * 3
    assert row[1].dtype == np.uint8 and (row[1] == 128).all()
    assert len(grid_row(tmp_path, Mask("m", 0, np.zeros((4, 6), np.uint8)), 1, with_real=False)) == 2


def test_the_weights_fingerprint_is_pinned_and_sees_names_shapes_dtypes_and_bytes():
    from sdm.generation.weights import weights_fingerprint

    weights = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(2, dtype=torch.bfloat16)}
    assert weights_fingerprint(weights) == "88224d467889d7e7f8b5"  # pinned: resumed generations compare it
    assert weights_fingerprint(dict(reversed(weights.items()))) == weights_fingerprint(weights)
    for changed in ({**weights, "b": weights["b"].reshape(3, 2)}, {**weights, "a": torch.ones(2)},
                    {"c": weights["b"], "a": weights["a"]}, {**weights, "b": weights["b"] + 1}):
        assert weights_fingerprint(changed) != weights_fingerprint(weights)


@pytest.mark.parametrize(("override", "expected"), [
    ("devices=0", "devices=0 is invalid: expected an integer >= 1 (processes on this machine)"),
    ("shard=2/2", "shard"),
    ("mask_source=7", "mask_source=7 is invalid: expected null or data settings laid over the run's, "
                      "e.g. 'mask_source={path:/data/other}'"),
    ("export_size=[0,4]", "export_size=[0, 4] is invalid: expected null or [height, width] of integers >= 1"),
    ("export_size=[4]", "export_size=[4] is invalid"),
    ("export_size=[4,4,4]", "export_size=[4, 4, 4] is invalid"),
    ("export_size=[4,0.5]", "export_size=[4, 0.5] is invalid"),
    ("export_size=[a,4]", "export_size=['a', 4] is invalid"),
    ("export_size=4", "export_size=4 is invalid"),
])
def test_sample_settings_are_refused_with_their_name_value_and_expectation(override, expected):
    from sdm.generation import check_settings

    with pytest.raises(ConfigError, match="^" + re.escape(expected)):
        check_settings(sample_cfg("weights=x", override))


def test_the_smallest_settings_pass_and_an_export_folder_must_be_an_exports(tmp_path):
    from sdm.generation import check_settings

    check_settings(sample_cfg("weights=x", "devices=1", "export_size=[1,1]", "mask_source={scenes:{num:2}}"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(ConfigError, match=f"^export_dir={re.escape(str(foreign))} exists and is not an sdm export"):
        check_settings(sample_cfg("weights=x", "export=true", f"export_dir={foreign}"))
    check_settings(sample_cfg("weights=x", "export=false", f"export_dir={foreign}"))  # not exporting: not read
    check_settings(sample_cfg("weights=x", "export=true", f"export_dir={tmp_path / 'new'}"))  # made later
    (foreign / "sdm_export.json").write_text("{}")
    check_settings(sample_cfg("weights=x", "export=true", f"export_dir={foreign}"))  # an earlier export: replaced


def test_the_bar_counts_masks_whatever_their_sample_count_and_steps_every_tenth(run_dir, tmp_path, monkeypatch):  # noqa: F811
    """Beside test_the_progress_bar_counts_finished_masks_and_shows_the_step: a step count that ten
    does not divide (35: every third step), masks of one and of three samples, and the bar's label."""
    import sdm.generation.run as generation

    bars = []

    class Bar:
        def __init__(self, total, initial, desc, **kwargs):
            self.total, self.desc, self.updates, self.postfixes = total, desc, [], []
            bars.append(self)

        def update(self, n):
            self.updates.append((n, len(self.postfixes)))

        def set_postfix_str(self, text):
            self.postfixes.append(text)

        def close(self):
            pass

    monkeypatch.setattr(generation, "tqdm", Bar)
    stub_sampler(monkeypatch)
    masks = masks_of(tmp_path, 2)
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", "num_per_mask=3", "batch_size=3",
                        "sampler.num_steps=35", f"out_dir={tmp_path / 'a'}"))
    bar = bars[-1]
    assert bar.desc == "sample" and bar.total == 2
    steps = [f"step {s}/35" for s in (*range(3, 34, 3), 35)]  # every third step and the last
    assert bar.postfixes == steps * 2
    assert bar.updates == [(1, 12), (1, 24)]  # each mask once, when its third image is written
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", "num_per_mask=1", f"out_dir={tmp_path / 'b'}"))
    assert [n for n, _ in bars[-1].updates] == [1, 1]
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", "num_per_mask=1", "shard=0/2",
                        f"out_dir={tmp_path / 'c'}"))
    assert bars[-1].desc == "sample 0/2"



def test_recorded_hardness_settings_hold_values_not_interpolations():
    """A resume compares these settings: `${num_per_mask}` must be recorded as the number it meant then."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from sdm.generation.layout import run_settings

    model = SimpleNamespace(fingerprint="f", size=(SIZE, SIZE))
    cfg = OmegaConf.merge(sample_cfg("weights=x", "num_per_mask=3"), {"hardness": {"most": "${num_per_mask}"}})
    assert run_settings(cfg, model)["hardness"] == {"most": 3}
    assert run_settings(sample_cfg("weights=x"), model)["hardness"] is None
