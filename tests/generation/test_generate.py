"""Generation: output layout, seeding, resumption, mask folders, weights sources, errors, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.generation import SIZE, bands, mask_folder, pixels, sample_cfg
from omegaconf import OmegaConf
from PIL import Image

from sdm.checkpoint.files import EMA_PREFIX, EXPORT_CONFIG, EXPORT_DIR, export_ema
from sdm.core.configs import compose
from sdm.core.errors import CheckpointError, ConfigError, DataError
from sdm.core.viz import to_uint8_image
from sdm.data.classes import colorize
from sdm.generation import generate, sample_seed
from sdm.training.module import SDMModule


def test_layout_counts_manifest_and_default_dir(run_dir):
    manifest = generate(sample_cfg(f"weights={run_dir}", "limit=3"))
    out = run_dir / "samples" / "ddim-s1.5-n2"
    counts = {d: len(list((out / d).glob("*.png"))) for d in ("images", "labels", "colored_masks", "real", "grids")}
    assert counts == {"images": 6, "labels": 3, "colored_masks": 3, "real": 3, "grids": 1}
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
    assert manifest.pop("out_dir") == str(out)  # returned, not written: the folder may move
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["images_made"] == 6
    assert manifest["weights"]["file"] == str(run_dir / EXPORT_DIR / "ema.safetensors")
    assert manifest["weights"]["run_dir"] == str(run_dir) and manifest["train_data"]["size"] == [SIZE, SIZE]
    assert manifest["settings"]["sampler"]["guidance_scale"] == 1.5
    for item in manifest["items"]:
        with Image.open(out / item["label"]) as label:
            assert label.mode == "L" and label.size == (SIZE, SIZE)
        assert np.array_equal(colorize(pixels(out / item["label"])), pixels(out / item["colored_mask"]))
        assert all((out / name).is_file() for name in [*item["images"], item["real"]])
        assert item["sample_seeds"] == [sample_seed(item["seed"], k) for k in range(2)]
    # one row per mask: coloured mask | real | 2 samples, tiles of 16 px with 2 px gaps
    assert pixels(out / "grids" / "grid_000.png").shape == (3 * 18 + 2, 4 * 18 + 2, 3)


def test_seeding_fixed_per_sample_not_per_batch(run_dir, tmp_path):
    """The same seed gives the same pixels whatever the batch size; another mask index, others."""
    label = bands(SIZE, SIZE, (30, 18, 2))
    folder = mask_folder(tmp_path, {"a": label, "b": label})  # the same mask twice
    common = [f"weights={run_dir}", f"masks={folder}"]
    generate(sample_cfg(*common, f"out_dir={tmp_path / 'x'}", "batch_size=4"))
    generate(sample_cfg(*common, f"out_dir={tmp_path / 'y'}", "batch_size=3"))
    x, y = tmp_path / "x" / "images", tmp_path / "y" / "images"
    for name in ("a_0", "a_1", "b_0", "b_1"):
        assert np.array_equal(pixels(x / f"{name}.png"), pixels(y / f"{name}.png")), name
    assert not np.array_equal(pixels(x / "a_0.png"), pixels(x / "b_0.png"))  # mask index 0 vs 1
    assert not np.array_equal(pixels(x / "a_0.png"), pixels(x / "a_1.png"))
    generate(sample_cfg(*common, f"out_dir={tmp_path / 'z'}", "seed=1"))
    assert not np.array_equal(pixels(x / "a_0.png"), pixels(tmp_path / "z" / "images" / "a_0.png"))


def test_resumption_skips_done_and_redraws_a_deleted_image(run_dir, tmp_path):
    out = tmp_path / "out"
    args = [f"weights={run_dir}", "limit=3", f"out_dir={out}"]
    first = generate(sample_cfg(*args))
    images = sorted((out / "images").glob("*.png"))
    before = {p.name: (p.stat().st_mtime_ns, pixels(p)) for p in images}
    victim = images[3]
    victim.unlink()
    second = generate(sample_cfg(*args))
    assert second["images_made"] == 1 and second["items"] == first["items"]
    for p in images:
        if p != victim:
            assert p.stat().st_mtime_ns == before[p.name][0], f"{p.name} was rewritten"
    assert np.array_equal(pixels(victim), before[victim.name][1])
    assert generate(sample_cfg(*args))["images_made"] == 0
    with pytest.raises(ConfigError, match="seed: 0 there, 1 now"):
        generate(sample_cfg(*args, "seed=1"))


def test_resumed_generation_samples_with_the_first_runs_pass_size(run_dir, tmp_path, monkeypatch):
    """A pass of one image would change the bf16/threaded numerics: resumes pad to the full pass."""
    import sdm.generation.run as generation

    passes = []
    real_sample = generation.sample

    def spy(model, cond, **kwargs):
        passes.append(cond.shape[0])
        return real_sample(model, cond, **kwargs)

    monkeypatch.setattr(generation, "sample", spy)
    out = tmp_path / "out"
    args = [f"weights={run_dir}", "limit=3", f"out_dir={out}", "batch_size=4"]
    generate(sample_cfg(*args))
    assert passes == [4, 4]  # 6 images: one full pass and one padded to 4
    (out / "images" / sorted(p.name for p in (out / "images").iterdir())[2]).unlink()
    passes.clear()
    generate(sample_cfg(*args))
    assert passes == [4]
    passes.clear()
    generate(sample_cfg(f"weights={run_dir}", "limit=1", "num_per_mask=1", "batch_size=8",
                        f"out_dir={tmp_path / 'one'}"))
    assert passes == [1]  # never more than there is to draw


def test_changed_weights_are_refused_when_resuming(run_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from sdm.generation import weights_fingerprint

    export = tmp_path / "run" / EXPORT_DIR
    export.mkdir(parents=True)
    for name in ("ema.safetensors", EXPORT_CONFIG):
        (export / name).write_bytes((run_dir / EXPORT_DIR / name).read_bytes())
    weights = load_file(export / "ema.safetensors")
    args = [f"weights={export}", "limit=1", "num_per_mask=1", f"out_dir={tmp_path / 'out'}"]
    generate(sample_cfg(*args))
    name = max(weights, key=lambda k: weights[k].numel())
    changed = dict(weights)
    changed[name] = weights[name].clone()
    changed[name].view(-1)[weights[name].numel() // 2] += 1e-3  # one value in the middle
    assert weights_fingerprint(changed) != weights_fingerprint(weights)
    save_file(changed, str(export / "ema.safetensors"))
    with pytest.raises(ConfigError, match="weights_fingerprint"):
        generate(sample_cfg(*args))
    renamed = {("x" + k if k == name else k): v for k, v in weights.items()}
    assert weights_fingerprint(renamed) != weights_fingerprint(weights)
    assert weights_fingerprint({k: v.to(torch.bfloat16) for k, v in weights.items()}) != weights_fingerprint(weights)


def test_folder_of_coloured_and_id_masks(run_dir, tmp_path):
    """Palette RGB and mode-L masks of another size are resized (nearest) to the training size."""
    big = bands(24, 20, (30, 10, 2))
    folder = mask_folder(tmp_path / "set", {"street": big})
    Image.fromarray(bands(SIZE, SIZE, (1, 8))).save(folder / "ids.png")
    (tmp_path / "set" / "images").mkdir()
    Image.fromarray(np.full((SIZE, SIZE, 3), 77, np.uint8)).save(tmp_path / "set" / "images" / "street.png")
    manifest = generate(sample_cfg(f"weights={run_dir / EXPORT_DIR}", f"masks={folder}", "num_per_mask=1"))
    out = run_dir / "samples" / "ddim-s1.5-n2-labels"
    expected = np.asarray(Image.fromarray(big).resize((SIZE, SIZE), Image.Resampling.NEAREST))
    assert np.array_equal(pixels(out / "labels" / "street.png"), expected)
    assert np.array_equal(pixels(out / "labels" / "ids.png"), bands(SIZE, SIZE, (1, 8)))
    assert [i["real"] for i in manifest["items"]] == [None, "real/street.png"]  # sorted: ids, street
    assert (pixels(out / "real" / "street.png") == 77).all()
    assert pixels(out / "grids" / "grid_000.png").shape == (2 * 18 + 2, 3 * 18 + 2, 3)


def test_checkpoint_gives_the_same_images_as_the_export(run_dir, tmp_path):
    export = run_dir / EXPORT_DIR
    from safetensors.torch import load_file

    weights = load_file(export / "ema.safetensors")
    cfg = OmegaConf.to_container(OmegaConf.load(export / EXPORT_CONFIG))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {EMA_PREFIX + k: v for k, v in weights.items()},
                "hyper_parameters": {"cfg": cfg}}, ckpt)
    args = ["limit=1", "num_per_mask=1"]
    generate(sample_cfg(f"weights={ckpt}", *args))
    generate(sample_cfg(f"weights={export / 'ema.safetensors'}", f"out_dir={tmp_path / 'e'}", *args))
    [from_ckpt] = (tmp_path / "samples" / "ddim-s1.5-n2" / "images").glob("*.png")
    assert np.array_equal(pixels(from_ckpt), pixels(tmp_path / "e" / "images" / from_ckpt.name))


def test_matches_the_validation_sampler_of_the_module(run_dir, tmp_path):
    """generate and SDMModule.sample_images (training-time grids) draw the same image."""
    from safetensors.torch import load_file

    generate(sample_cfg(f"weights={run_dir}", "limit=1", "num_per_mask=1", f"out_dir={tmp_path}"))
    module = SDMModule(OmegaConf.to_container(OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG)))
    module.ema.module.load_state_dict(load_file(run_dir / EXPORT_DIR / "ema.safetensors"))
    [image] = (tmp_path / "images").glob("*.png")
    label = torch.from_numpy(np.array(pixels(tmp_path / "labels" / image.name.replace("_0", ""))))[None]
    expected = module.sample_images(label, 1, steps=2, guidance=1.5, seed=sample_seed(0, 0))[0]
    assert np.array_equal(pixels(image), to_uint8_image(expected))


def incompatible_export(root: Path, run_dir: Path) -> Path:
    cfg = OmegaConf.load(run_dir / EXPORT_DIR / EXPORT_CONFIG)
    cfg.model.model_channels = 64
    from safetensors.torch import load_file

    export_ema(load_file(run_dir / EXPORT_DIR / "ema.safetensors"), OmegaConf.to_container(cfg), root / "bad")
    return root / "bad"


def bad_mask(root: Path, kind: str) -> Path:
    folder = root / "masks"
    folder.mkdir()
    if kind == "corrupt":
        (folder / "broken.png").write_bytes(b"not a png")
    elif kind == "colour":
        Image.fromarray(np.full((SIZE, SIZE, 3), (1, 2, 3), np.uint8)).save(folder / "broken.png")
    elif kind == "ids":
        Image.fromarray(np.full((SIZE, SIZE), 200, np.uint8)).save(folder / "broken.png")
    return folder


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda tmp, run: [f"weights={tmp / 'nowhere'}"], CheckpointError, "does not exist"),
        (lambda tmp, run: [f"weights={incompatible_export(tmp, run)}"], CheckpointError, "does not fit"),
        (lambda tmp, run: [f"weights={tmp / 'x.safetensors'}"], CheckpointError, "not a readable safetensors"),
        (lambda tmp, run: [f"weights={run}", "sampler.name=euler"], ConfigError, r"^sampler\.name='euler' is invalid: expected one of \['ddim', 'ddpm', 'dpmpp', 'unipc'\]"),
        (lambda tmp, run: [f"weights={run}", "sampler.guidance_scale=-1"], ConfigError, r"^sampler\.guidance_scale=-1\.0 is invalid: expected a number >= 0"),
        (lambda tmp, run: [f"weights={run}", "sampler.num_steps=5000"], ConfigError, r"^sampler\.num_steps=5000 is invalid: expected at most the 1000 training timesteps"),
        (lambda tmp, run: [f"weights={run}", "num_per_mask=0"], ConfigError, r"^num_per_mask=0 is invalid: expected an integer >= 1"),
        (lambda tmp, run: [f"weights={run}", "precision=fp16"], ConfigError, r"^precision='fp16' is invalid: expected one of \['bf16', 'fp32'\]"),
        (lambda tmp, run: [f"weights={run}", "batch_size=0"], ConfigError, r"^batch_size=0 is invalid"),
        (lambda tmp, run: [f"weights={run}", "limit=0"], ConfigError, r"^limit=0 is invalid: expected null or"),
        (lambda tmp, run: [f"weights={run}", "seed=-1"], ConfigError, r"^seed=-1 is invalid: expected an integer >= 0"),
        (lambda tmp, run: [f"weights={run}", "sampler.eta=-0.5"], ConfigError, r"^sampler\.eta=-0\.5 is invalid"),
        (lambda tmp, run: [f"weights={run}", "sampler.num_steps=0"], ConfigError, r"^sampler\.num_steps=0 is invalid"),
        (lambda tmp, run: [f"weights={run}", "sampler.timestep_spacing=even"], ConfigError,
         r"^sampler\.timestep_spacing='even' is invalid: expected one of \['trailing', 'linspace', 'leading'\]"),
        (lambda tmp, run: [f"weights={run}", "device=tpu"], ConfigError, r"^device='tpu' is invalid: expected auto, cpu"),
        (lambda tmp, run: [f"weights={run}", "device=cuda"], ConfigError, r"^device=cuda but no CUDA GPU is visible"),
        (lambda tmp, run: ["weights=???"], ConfigError, "weights=... is required"),
        (lambda tmp, run: [f"weights={run}", f"masks={bad_mask(tmp, 'empty')}"], DataError, "no .png"),
        (lambda tmp, run: [f"weights={run}", f"masks={tmp / 'none'}"], DataError, "neither one of val|train|all nor"),
        (lambda tmp, run: [f"weights={run}", f"masks={bad_mask(tmp, 'corrupt')}"], DataError, "broken.png"),
        (lambda tmp, run: [f"weights={run}", f"masks={bad_mask(tmp, 'colour')}"], DataError, r"broken.png.*palette"),
        (lambda tmp, run: [f"weights={run}", f"masks={bad_mask(tmp, 'ids')}"], DataError, r"broken.png.*\[200\]"),
    ],
    ids=[
        "missing-weights",
        "incompatible-weights",
        "garbage-safetensors",
        "unknown-sampler",
        "negative-guidance",
        "too-many-steps",
        "zero-per-mask",
        "bad-precision",
        "zero-batch",
        "zero-limit",
        "negative-seed",
        "negative-eta",
        "zero-steps",
        "unknown-spacing",
        "unknown-device",
        "cuda-without-gpu",
        "no-weights",
        "empty-folder",
        "no-folder",
        "corrupt-mask",
        "off-palette-mask",
        "out-of-range-ids",
    ],
)
def test_bad_inputs_give_clear_errors(run_dir, tmp_path, make, error, match):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    args = make(tmp_path, run_dir)
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(error, match=match):
        generate(sample_cfg(*args, f"out_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_cli_end_to_end(run_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    command = [sys.executable, "sample.py", f"weights={run_dir}", "limit=2", "num_per_mask=2",
               "sampler.num_steps=2", "sampler=dpmpp", f"out_dir={out}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((out / "images").glob("*.png"))) == 4
    assert json.loads((out / "manifest.json").read_text())["settings"]["sampler"]["name"] == "dpmpp"
    failed = subprocess.run([*command[:2], f"weights={tmp_path / 'missing'}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "error:" in failed.stderr and "Traceback" not in failed.stderr


def test_default_output_folder_names_what_decides_the_pixels(tmp_path):
    from sdm.generation import default_out_dir, run_dir_of

    export = tmp_path / "run" / EXPORT_DIR / "ema.safetensors"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run_dir_of(export) == run_dir_of(ckpt) == tmp_path / "run"
    assert run_dir_of(tmp_path / "loose" / "ema.safetensors") is None
    base = tmp_path / "run" / "samples"
    assert default_out_dir(sample_cfg("weights=x"), export) == base / "ddim-s1.5-n2"
    assert default_out_dir(sample_cfg("weights=x", "sampler.eta=0.5"), ckpt) == base / "ddim-s1.5-n2-eta0.5"
    assert default_out_dir(sample_cfg("weights=x", "sampler=dpmpp", "sampler.eta=0.5", "sampler.num_steps=7",
                                      "sampler.guidance_scale=3"), export) == base / "dpmpp-s3-n7"
    assert default_out_dir(sample_cfg("weights=x", "seed=4"), export) == base / "ddim-s1.5-n2-seed4"
    masks = tmp_path / "my_masks"
    assert default_out_dir(sample_cfg("weights=x", f"masks={masks}"), export) == base / "ddim-s1.5-n2-my_masks"
    loose = default_out_dir(sample_cfg("weights=x", f"output_root={tmp_path / 'elsewhere'}"),
                            tmp_path / "loose" / "ema.safetensors")
    assert loose.parent == tmp_path / "elsewhere" / "samples"


def test_grids_show_mask_real_and_samples_and_split_by_eight(run_dir, tmp_path):
    labels = {f"m{i:02d}": bands(SIZE, SIZE, (1 + i, 20)) for i in range(9)}
    folder = mask_folder(tmp_path, labels)
    out = tmp_path / "out"
    args = [f"weights={run_dir}", f"masks={folder}", f"out_dir={out}", "num_per_mask=1", "batch_size=9"]
    manifest = generate(sample_cfg(*args))
    assert manifest["grids"] == ["grids/grid_000.png", "grids/grid_001.png"]
    first = pixels(out / "grids" / "grid_000.png")
    assert first.shape == (8 * 18 + 2, 2 * 18 + 2, 3)  # no real photos: mask | sample
    tile = lambda grid, row, col: grid[2 + 18 * row : 2 + 18 * row + SIZE, 2 + 18 * col : 2 + 18 * col + SIZE]  # noqa: E731
    assert np.array_equal(tile(first, 0, 0), colorize(labels["m00"]))
    assert np.array_equal(tile(first, 7, 1), pixels(out / "images" / "m07_0.png"))
    assert np.array_equal(tile(pixels(out / "grids" / "grid_001.png"), 0, 1), pixels(out / "images" / "m08_0.png"))
    assert [item["seed"] for item in manifest["items"]] == list(range(9))  # seed + mask position
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "grids").iterdir()}
    (out / "images" / "m08_0.png").unlink()
    generate(sample_cfg(*args))
    assert (out / "grids" / "grid_000.png").stat().st_mtime_ns == stamps["grid_000.png"]  # untouched rows
    assert (out / "grids" / "grid_001.png").stat().st_mtime_ns != stamps["grid_001.png"]


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(run_dir, tmp_path, monkeypatch, capsys):
    import sdm.generation.run as generation

    monkeypatch.setattr(generation, "cpu_has_bf16", lambda: False)
    manifest = generate(sample_cfg(f"weights={run_dir}", "precision=bf16", "limit=1", "num_per_mask=1", f"out_dir={tmp_path / 'a'}"))
    assert manifest["settings"]["precision"] == "fp32" and "no native bf16" in capsys.readouterr().out
    monkeypatch.setattr(generation, "cpu_has_bf16", lambda: True)
    manifest = generate(sample_cfg(f"weights={run_dir}", "precision=bf16", "limit=1", "num_per_mask=1", f"out_dir={tmp_path / 'b'}"))
    assert manifest["settings"]["precision"] == "bf16" and "no native bf16" not in capsys.readouterr().out


def test_the_default_sampler_is_the_studys_choice():
    """experiments/study_samplers.py chose DPM-Solver++ with 25 steps (results_samplers.md)."""
    cfg = compose("sample", ["weights=x"])
    assert (cfg.sampler.name, cfg.sampler.num_steps, cfg.sampler.guidance_scale, cfg.num_per_mask) == ("dpmpp", 25, 1.5, 5)
