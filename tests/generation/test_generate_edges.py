"""Generation's edges: which masks and photos are used, what a weights file must carry, what a
resume compares, what the manifest records and what an interrupted run leaves. Written for
the generation package's mutation run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.generation import SIZE, bands, mask_folder, pixels, sample_cfg
from omegaconf import OmegaConf
from PIL import Image

from sdm.checkpoint.files import EMA_PREFIX, EXPORT_CONFIG, EXPORT_DIR, export_ema
from sdm.core.errors import CheckpointError, ConfigError, DataError
from sdm.generation import folder_masks, generate, load_model, read_mask, val_masks


def export_copy(run_dir, root, edit=None):  # noqa: F811
    """The fixture's export under `root/run/export`, its config changed by `edit`."""
    from safetensors.torch import load_file

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG))
    if edit is not None:
        edit(cfg)
    export_ema(load_file(run_dir / EXPORT_DIR / "ema.safetensors"), cfg, root / "run" / EXPORT_DIR)
    return root / "run" / EXPORT_DIR


# --- masks ----------------------------------------------------------------------------------


def test_validation_masks_are_the_runs_own_validation_rows(run_dir):  # noqa: F811
    from sdm.data.datamodule import split_indices
    from sdm.data.prepare import decode_row, prepare_data

    model = load_model(run_dir)
    masks = val_masks(model.cfg, None)
    data = OmegaConf.create(model.cfg["data"])
    prepared = prepare_data(data, show_progress=False)
    _, val = split_indices(len(prepared), float(data.val_fraction), int(data.split_seed))
    assert [m.name for m in masks] == [f"{int(prepared.open()[int(i)]['index']):06d}" for i in val]
    assert [m.index for m in masks] == list(range(len(val)))
    image, label = decode_row(prepared.open()[int(val[1])], prepared.size)
    assert np.array_equal(masks[1].label, label) and np.array_equal(masks[1].real, image)
    assert masks[1].label.flags.writeable  # a copy, not a view of the memory-mapped cache
    assert [m.name for m in val_masks(model.cfg, 2)] == [m.name for m in masks[:2]]
    no_val = {**model.cfg, "data": {**model.cfg["data"], "val_fraction": 0.0}}
    with pytest.raises(DataError, match=r"masks=val: the val split of the run.s data is empty \(data.val_fraction=0.0\)"):
        val_masks(no_val, None)


def test_mask_folders_skip_hidden_and_other_files_and_report_resizing(tmp_path, capsys):
    folder = tmp_path / "labels"
    folder.mkdir()
    for name, size in [("b", (SIZE, SIZE)), ("a", (24, 20)), (".hidden", (SIZE, SIZE))]:
        Image.fromarray(bands(*size, (3, 4))).save(folder / f"{name}.png")
    Image.fromarray(bands(SIZE, SIZE, (3, 4))).save(folder / "c.jpg")
    (folder / "notes.txt").write_text("not a mask")
    masks = folder_masks(folder, (SIZE, SIZE), 35, None)
    assert [(m.name, m.index, m.real) for m in masks] == [("a", 0, None), ("b", 1, None)]
    assert capsys.readouterr().out.startswith("resized 1 of 2 masks to the training size 16x16 "
                                              "(nearest, aspect ratio not kept): a.png (20x24)")
    assert [m.name for m in folder_masks(folder, (SIZE, SIZE), 35, 1)] == ["a"]
    assert capsys.readouterr().out.startswith("resized 1 of 1 masks")
    for name in "cdefgh":  # more than five resized masks: the list is cut
        Image.fromarray(bands(20, 20, (3,))).save(folder / f"{name}.png")
    folder_masks(folder, (SIZE, SIZE), 35, None)
    assert capsys.readouterr().out.rstrip().endswith("f.png (20x20) ...")
    assert folder_masks(folder, (SIZE, SIZE), 35, 2)[0].label.shape == (SIZE, SIZE)
    capsys.readouterr()
    few = tmp_path / "few"
    few.mkdir()
    Image.fromarray(bands(SIZE, SIZE, (3,))).save(few / "x.png")
    folder_masks(few, (SIZE, SIZE), 35, None)
    assert capsys.readouterr().out == ""  # nothing resized, nothing said


def test_read_mask_keeps_ids_and_names_classes_beyond_the_model(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(bands(8, 12, (1, 6))).save(path)
    ids, original = read_mask(path, (8, 12), 35)
    assert original is None and np.array_equal(ids, bands(8, 12, (1, 6)))
    ids, original = read_mask(path, (4, 6), 35)
    assert original == (8, 12) and ids.shape == (4, 6)
    assert np.array_equal(ids, np.asarray(Image.fromarray(bands(8, 12, (1, 6))).resize((6, 4), Image.Resampling.NEAREST)))
    with pytest.raises(DataError, match=rf"mask file '{path}' cannot be used: values \[6\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.4"):
        read_mask(path, (8, 12), 5)


def test_photos_come_from_a_sibling_images_folder_at_the_training_size(run_dir, tmp_path):  # noqa: F811
    folder = mask_folder(tmp_path / "set", {"p": bands(SIZE, SIZE, (2, 9)), "q": bands(SIZE, SIZE, (5,))})
    photos = tmp_path / "set" / "images"
    photos.mkdir()
    Image.fromarray(np.full((32, 24, 3), 90, np.uint8)).save(photos / "p.png")  # another size: resized
    masks = folder_masks(folder, (SIZE, SIZE), 35, None)
    assert masks[0].real.shape == (SIZE, SIZE, 3) and (masks[0].real == 90).all() and masks[1].real is None
    # masks=<x>/images: the sibling "images" is the mask folder itself, not photos of it
    own = tmp_path / "own" / "images"
    own.mkdir(parents=True)
    Image.fromarray(bands(SIZE, SIZE, (4,))).save(own / "r.png")
    assert folder_masks(own, (SIZE, SIZE), 35, None)[0].real is None

    out = tmp_path / "out"
    generate(sample_cfg(f"weights={run_dir}", f"masks={folder}", "num_per_mask=1", f"out_dir={out}"))
    grid = pixels(out / "grids" / "grid_000.png")
    tile = lambda row, col: grid[2 + 18 * row : 2 + 18 * row + SIZE, 2 + 18 * col : 2 + 18 * col + SIZE]  # noqa: E731
    assert (tile(0, 1) == 90).all() and (tile(1, 1) == 128).all()  # q has no photo: a grey tile
    assert sorted(p.name for p in (out / "real").iterdir()) == ["p.png"]


# --- weights --------------------------------------------------------------------------------


def test_weights_files_must_be_sdm_weights_with_their_config(run_dir, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(CheckpointError, match=r"is not a weights file \(.safetensors, .ckpt, .pt, .pth\)"):
        load_model(text)
    weights = load_file(run_dir / EXPORT_DIR / "ema.safetensors")
    state = {EMA_PREFIX + k: v for k, v in weights.items()}
    for name, hyper in [("none.ckpt", None), ("list.ckpt", {"cfg": [1, 2]})]:
        torch.save({"state_dict": state, **({"hyper_parameters": hyper} if hyper else {})}, tmp_path / name)
        with pytest.raises(CheckpointError, match=r"carries no training config \(hyper_parameters\['cfg'\]\)"):
            load_model(tmp_path / name)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG))
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": cfg}}, tmp_path / "good.pt")
    model = load_model(tmp_path / "good.pt")
    assert model.path == tmp_path / "good.pt" and model.size == (SIZE, SIZE) and not model.unet.training
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert model.fingerprint == load_model(run_dir).fingerprint  # the same weights, the same identity
    assert torch.equal(model.unet.state_dict()[next(iter(weights))], weights[next(iter(weights))])

    lacking = export_copy(run_dir, tmp_path / "lacking", lambda c: c.pop("diffusion"))
    with pytest.raises(CheckpointError, match=r"lacks \['diffusion'\]; re-export the run"):
        load_model(lacking)
    foreign = export_copy(run_dir, tmp_path / "foreign", lambda c: c["model"].update(wings=2))
    with pytest.raises(CheckpointError, match="does not build a U-Net of this sdm version: .*wings"):
        load_model(foreign)


def test_checkpoints_of_other_shapes_are_named(run_dir, tmp_path):  # noqa: F811
    fewer = export_copy(run_dir, tmp_path, lambda c: c["data"].update(num_classes=20))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_model(fewer)


# --- resuming and the manifest --------------------------------------------------------------


def test_resume_compares_every_setting_that_decides_pixels(run_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    base = [f"weights={run_dir}", "limit=1", "num_per_mask=1", f"out_dir={out}"]
    settings = generate(sample_cfg(*base))["settings"]
    assert settings == {
        "weights_fingerprint": load_model(run_dir).fingerprint,
        "sampler": {"name": "ddim", "num_steps": 2, "guidance_scale": 1.5, "eta": 0.0, "timestep_spacing": "trailing"},
        "seed": 0, "precision": "fp32", "masks": "val", "size": [SIZE, SIZE], "mask_source": None,
        "mask_variation": [], "hardness": None,
    }
    for override, named in [("sampler.eta=0.5", "eta"), ("sampler.timestep_spacing=leading", "leading"),
                            ("sampler.num_steps=3", "'num_steps': 3"), ("sampler.guidance_scale=2", "2.0"),
                            ("sampler=dpmpp", "dpmpp"), ("masks=train", "train"), ("mask_variation=[hflip]", "hflip"),
                            ("mask_source={scenes:{seed:5}}", "'seed': 5")]:
        with pytest.raises(ConfigError, match=f"other settings .*{named}"):
            generate(sample_cfg(*base, override))
    folder = mask_folder(tmp_path / "m", {"x": bands(SIZE, SIZE, (1,))})
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={folder}/../labels", "num_per_mask=1",
                                   f"out_dir={tmp_path / 'folder'}"))
    assert manifest["settings"]["masks"] == str(folder.resolve())  # resolved: another spelling resumes


def test_foreign_or_unreadable_output_folders_are_refused(run_dir, tmp_path):  # noqa: F811
    args = [f"weights={run_dir}", "limit=1", "num_per_mask=1"]
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "cat.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"out_dir={foreign} holds images/ but no manifest.json"):
        generate(sample_cfg(*args, f"out_dir={foreign}"))
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)  # an empty images/ is fine
    assert generate(sample_cfg(*args, f"out_dir={empty}"))["images_made"] == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ half")
    with pytest.raises(ConfigError, match=r"manifest.json cannot be read \(.*\); choose another out_dir"):
        generate(sample_cfg(*args, f"out_dir={broken}"))
    (broken / "manifest.json").write_text("{}")  # no settings recorded: every setting differs
    with pytest.raises(ConfigError, match="weights_fingerprint: None there"):
        generate(sample_cfg(*args, f"out_dir={broken}"))


def test_manifest_records_how_the_images_were_made(run_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    manifest = generate(sample_cfg(f"weights={run_dir / EXPORT_DIR}", "limit=2", "num_per_mask=2",
                                   "batch_size=3", f"out_dir={out}", "seed=5"))
    assert (manifest["num_per_mask"], manifest["batch_size"], manifest["device"]) == (2, 3, "cpu")
    assert manifest["weights"]["given"] == str(run_dir / EXPORT_DIR)
    assert manifest["weights"]["run"] == OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG).get("run_name")
    assert "sample_seed(seed + i, k)" in manifest["seeding"]
    assert 0 < manifest["seconds"] < 600
    assert [i["seed"] for i in manifest["items"]] == [5, 6] and [i["index"] for i in manifest["items"]] == [0, 1]
    assert manifest["items"][1]["images"] == [f"images/{manifest['items'][1]['mask']}_{k}.png" for k in range(2)]
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes((run_dir / EXPORT_DIR / "ema.safetensors").read_bytes())
    (tmp_path / EXPORT_CONFIG).write_bytes((run_dir / EXPORT_DIR / EXPORT_CONFIG).read_bytes())
    outside = generate(sample_cfg(f"weights={loose}", "limit=1", "num_per_mask=1", f"out_dir={tmp_path / 'o'}"))
    assert outside["weights"]["run_dir"] is None


def test_an_interrupted_run_leaves_an_incomplete_manifest_and_resumes(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation

    out = tmp_path / "out"
    args = [f"weights={run_dir}", "limit=3", "num_per_mask=2", "batch_size=2", f"out_dir={out}"]
    real_sample, calls = generation.sample, []

    def dies_on_the_second_pass(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_sample(*a, **k)

    monkeypatch.setattr(generation, "sample", dies_on_the_second_pass)
    with pytest.raises(KeyboardInterrupt):
        generate(sample_cfg(*args))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and "items" not in manifest
    assert len(list((out / "images").glob("*.png"))) == 2 and len(list((out / "labels").glob("*.png"))) == 3
    stamp = (out / "labels" / sorted(p.name for p in (out / "labels").iterdir())[0]).stat().st_mtime_ns
    monkeypatch.setattr(generation, "sample", real_sample)
    finished = generate(sample_cfg(*args))
    assert finished["complete"] and finished["images_made"] == 4 and len(finished["items"]) == 3
    first_label = out / "labels" / sorted(p.name for p in (out / "labels").iterdir())[0]
    assert first_label.stat().st_mtime_ns == stamp  # mask files already written are kept


def test_conditioning_reaches_the_network_with_the_models_edge_channel(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation

    seen = []
    real_sample = generation.sample

    def spy(model, cond, **kwargs):
        seen.append((cond.clone(), kwargs))
        return real_sample(model, cond, **kwargs)

    monkeypatch.setattr(generation, "sample", spy)
    folder = mask_folder(tmp_path / "m", {"x": bands(SIZE, SIZE, (3, 7))})
    generate(sample_cfg(f"weights={run_dir}", f"masks={folder}", "num_per_mask=3", "batch_size=2",
                        "sampler.guidance_scale=2.5", "sampler.eta=0.25", f"out_dir={tmp_path / 'o'}"))
    assert len(seen) == 2  # 3 images in passes of 2: the last one padded
    cond, kwargs = seen[1]
    model = load_model(run_dir)
    assert cond.shape == (2, model.unet.num_classes + int(model.unet.edge_channel), SIZE, SIZE)
    assert torch.equal(cond[0], cond[1])  # padded with the last job
    assert torch.equal(seen[0][0][0], cond[0])  # every pass conditions on the same mask
    assert cond[0, 3, 0, 0] == 1 and cond[0, 7, -1, 0] == 1 and cond[0, :35].sum(0).eq(1).all()
    assert (kwargs["sampler"], kwargs["num_steps"], kwargs["guidance_scale"], kwargs["eta"]) == ("ddim", 2, 2.5, 0.25)
    assert kwargs["timestep_spacing"] == "trailing" and len(kwargs["generator"]) == 2
    assert kwargs["noise_config"]["num_train_timesteps"] == 1000 and "learn_sigma" in kwargs["noise_config"]


def test_an_unreadable_photo_beside_the_masks_is_named(tmp_path):
    folder = mask_folder(tmp_path / "set", {"p": bands(SIZE, SIZE, (2,))})
    (tmp_path / "set" / "images").mkdir()
    (tmp_path / "set" / "images" / "p.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"real image \(beside the masks\) '.*images/p.png' cannot be read"):
        folder_masks(folder, (SIZE, SIZE), 35, None)


def test_weights_outside_a_run_write_to_a_dated_folder(tmp_path):
    import re

    from sdm.generation import default_out_dir

    out = default_out_dir(sample_cfg("weights=x", f"output_root={tmp_path}"), tmp_path / "loose.safetensors")
    assert out.parent == tmp_path / "samples" and re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", out.name)


def test_bf16_sampling_runs_the_network_under_bf16_autocast(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation

    states = []
    real_sample = generation.sample

    def spy(*args, **kwargs):
        states.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(generation, "sample", spy)
    monkeypatch.setattr(generation, "cpu_has_bf16", lambda: True)
    for precision in ("bf16", "fp32"):
        generate(sample_cfg(f"weights={run_dir}", f"precision={precision}", "limit=1", "num_per_mask=1",
                            f"out_dir={tmp_path / precision}"))
    assert states[0] == (True, torch.bfloat16) and states[1][0] is False


def test_every_image_is_reproduced_from_the_seed_in_the_manifest(run_dir, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from sdm.core.viz import to_uint8_image
    from sdm.training.module import SDMModule

    out = tmp_path / "out"
    manifest = generate(sample_cfg(f"weights={run_dir}", "limit=2", "num_per_mask=2", "seed=7", f"out_dir={out}"))
    module = SDMModule(OmegaConf.to_container(OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG)))
    module.ema.module.load_state_dict(load_file(run_dir / EXPORT_DIR / "ema.safetensors"))
    item = manifest["items"][1]  # mask index 1: seeds derive from 7 + 1
    label = torch.from_numpy(np.array(pixels(out / item["label"])))[None]
    for k in range(2):
        expected = module.sample_images(label, 1, steps=2, guidance=1.5, seed=item["sample_seeds"][k])[0]
        assert np.array_equal(pixels(out / item["images"][k]), to_uint8_image(expected)), k


def test_a_model_with_an_edge_channel_gets_the_label_edges(tmp_path, monkeypatch):
    from helpers.configs import compose_train

    import sdm.generation.run as generation
    from sdm.training.module import SDMModule

    run = tmp_path / "edge_run"
    cfg = compose_train(run, f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=12", "model.edge_channel=true")
    plain = OmegaConf.to_container(cfg, resolve=True)
    export_ema(SDMModule(plain).ema.module.state_dict(), plain, run / EXPORT_DIR)
    seen = []
    real_sample = generation.sample
    monkeypatch.setattr(generation, "sample", lambda model, cond, **kw: seen.append(cond) or real_sample(model, cond, **kw))
    folder = mask_folder(tmp_path / "m", {"x": bands(SIZE, SIZE, (3, 7))})
    generate(sample_cfg(f"weights={run}", f"masks={folder}", "num_per_mask=1", f"out_dir={tmp_path / 'o'}"))
    [cond] = seen
    assert cond.shape[1] == 36
    edges = cond[0, 35]
    assert edges[SIZE // 2 - 1 : SIZE // 2 + 1].sum() > 0 and edges[: SIZE // 2 - 2].sum() == 0  # at the band border only


def test_the_progress_bar_counts_finished_masks_and_shows_the_step(run_dir, tmp_path, monkeypatch):  # noqa: F811
    """The bar is what a user watches for an hour: masks done (a resume starts where it was), and
    the sampler's step within the current pass, every tenth step and at the last."""
    import sdm.generation.run as generation

    bars = []

    class Bar:
        def __init__(self, total, initial, **kwargs):
            self.total, self.initial, self.updates, self.postfixes = total, initial, [], []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def set_postfix_str(self, text):
            self.postfixes.append(text)

        def close(self):
            self.closed = True

    monkeypatch.setattr(generation, "tqdm", Bar)
    out = tmp_path / "out"
    args = [f"weights={run_dir}", "limit=3", "num_per_mask=2", "batch_size=4", "sampler.num_steps=20",
            f"out_dir={out}"]
    generate(sample_cfg(*args))
    bar = bars[-1]
    assert (bar.total, bar.initial, bar.updates, bar.closed) == (3, 0, [1, 1, 1], True)
    steps = [f"step {s}/20" for s in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)]
    assert bar.postfixes == steps * 2  # two passes of 20 steps
    victims = sorted((out / "images").iterdir())[-2:]  # both samples of the last mask
    for victim in victims:
        victim.unlink()
    generate(sample_cfg(*args))
    assert (bars[-1].initial, bars[-1].updates) == (2, [1])
    generate(sample_cfg(*args, "sampler.num_steps=3", f"out_dir={tmp_path / 'few'}", "limit=1", "num_per_mask=1"))
    assert bars[-1].postfixes == ["step 1/3", "step 2/3", "step 3/3"]  # fewer than ten steps: every step


def test_settings_at_their_boundaries_are_accepted_and_named_when_not(run_dir, tmp_path):  # noqa: F811
    from sdm.generation import check_settings

    check_settings(sample_cfg("weights=x", "sampler.guidance_scale=0", "sampler.num_steps=1", "sampler.eta=0"))
    for override, message in [("sampler.num_steps=0", "sampler.num_steps=0 is invalid: expected an integer >= 1"),
                              ("sampler.eta=-1", "sampler.eta=-1 is invalid: expected a number >= 0"),
                              ("sampler.guidance_scale=-0.1", "expected a number >= 0 (1 = no guidance")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            check_settings(sample_cfg("weights=x", override))
    folder = mask_folder(tmp_path, {f"m{i}": bands(SIZE, SIZE, (i + 1,)) for i in range(3)})
    manifest = generate(sample_cfg(f"weights={run_dir}", f"masks={folder}", "limit=2", "num_per_mask=1",
                                   "sampler.guidance_scale=0", f"out_dir={tmp_path / 'o'}"))
    assert [item["mask"] for item in manifest["items"]] == ["m0", "m1"]  # limit applies to folders too


def test_weights_that_do_not_fit_are_named_by_their_file(run_dir, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    other = export_copy(run_dir, tmp_path, lambda c: c["model"].update(model_channels=64))
    with pytest.raises(CheckpointError, match=f"'{other / 'ema.safetensors'}' does not fit this model"):
        load_model(other)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG))
    raw = {"unet." + k: v for k, v in load_file(run_dir / EXPORT_DIR / "ema.safetensors").items()}
    path = tmp_path / "raw.ckpt"
    torch.save({"state_dict": raw, "hyper_parameters": {"cfg": cfg}}, path)
    with pytest.raises(CheckpointError, match=f"'{path}' holds no EMA weights"):
        load_model(path)


def test_every_count_setting_accepts_its_smallest_value_and_words_its_refusal(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import sdm.generation.run as generation
    from sdm.generation import check_settings

    check_settings(sample_cfg("weights=x", "batch_size=1", "num_per_mask=1", "limit=1", "seed=0"))
    for override, expected in [("batch_size=0", "an integer >= 1"), ("num_per_mask=0", "an integer >= 1"),
                               ("limit=0", "null or an integer >= 1"), ("seed=-1", "an integer >= 0")]:
        with pytest.raises(ConfigError, match=f"^{override} is invalid: expected {expected}$"):
            check_settings(sample_cfg("weights=x", override))
    # as many sampling steps as training timesteps is allowed (the network is stubbed: 1000 passes)
    monkeypatch.setattr(generation, "sample", lambda model, cond, **kw: torch.zeros(cond.shape[0], 3, SIZE, SIZE))
    made = generate(sample_cfg(f"weights={run_dir}", "sampler.num_steps=1000", "limit=1", "num_per_mask=1",
                               f"out_dir={tmp_path / 'o'}"))
    assert made["images_made"] == 1
