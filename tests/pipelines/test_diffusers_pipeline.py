"""The diffusers pipeline: save and load in diffusers' layout, the same images as sample.py for the
same weights, scheduler, seeds and steps, a converted official checkpoint, and clear errors for
label maps that cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler
from helpers.generation import SIZE, bands, mask_folder, nudged_export, sample_cfg
from helpers.official import Official
from PIL import Image

from sdm.cli.convert import main as convert
from sdm.cli.diffusers import main as diffusers_cli
from sdm.core.errors import ConfigError
from sdm.data.classes import SIDEWALK
from sdm.generation import generate
from sdm.generation.layout import sample_seed
from sdm.pipelines import SDMPipeline, SDMUNet2DModel
from sdm.pipelines.save import save_pipeline


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An export of a tiny model, its weights nudged off their init (the zero head ignores the mask)."""
    return nudged_export(tmp_path_factory.mktemp("pipe") / "run")


@pytest.fixture(scope="module")
def folder(run_dir, tmp_path_factory):
    return save_pipeline(run_dir, tmp_path_factory.mktemp("pipeline") / "pipe", sampler="ddim")


def test_save_pretrained_and_from_pretrained_round_trip(run_dir, folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model_index.json", "pipeline.py", "scheduler",
                                                        "unet"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "SDMPipeline" and index["unet"] == ["sdm.pipelines.unet", "SDMUNet2DModel"]
    assert index["class_names"] == list(SIDEWALK.names) and index["image_size"] == [SIZE, SIZE]
    pipe = SDMPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, SDMUNet2DModel) and type(pipe.scheduler).__name__ == "DDIMScheduler"
    export = SDMUNet2DModel.from_pretrained(folder / "unet")
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, export.state_dict()[key]), key
    again = folder.parent / "again"
    pipe.save_pretrained(again)
    saved, resaved = (json.loads((f / "unet" / "config.json").read_text()) for f in (folder, again))
    assert {k: v for k, v in resaved.items() if k != "_name_or_path"} == saved  # the same network
    generic = DiffusionPipeline.from_pretrained(folder, custom_pipeline=str(folder), trust_remote_code=True)
    assert type(generic).__name__ == "SDMPipeline"


def test_the_pipeline_draws_the_images_sample_py_draws(run_dir, folder, tmp_path):
    labels = {"a": bands(SIZE, SIZE, (1, 2, 10)), "b": bands(SIZE, SIZE, (28, 30, 8))}
    masks = mask_folder(tmp_path, labels, coloured=False)
    generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={tmp_path / 'out'}", "seed=7"))
    pipe = SDMPipeline.from_pretrained(folder)
    generators = [torch.Generator().manual_seed(sample_seed(7 + i, k)) for i in range(2) for k in range(2)]
    images = pipe([labels["a"], labels["b"]], num_images_per_mask=2, num_inference_steps=2, guidance_scale=1.5,
                  generator=generators).images
    for (name, k), image in zip([("a", 0), ("a", 1), ("b", 0), ("b", 1)], images, strict=True):
        expected = np.asarray(Image.open(tmp_path / "out" / "images" / f"{name}_{k}.png"))
        assert np.array_equal(np.asarray(image), expected), (name, k)
    coloured = [Image.fromarray(SIDEWALK.colorize(labels[n])) for n in ("a", "b")]  # maps in the palette: same ids
    fresh = [torch.Generator().manual_seed(sample_seed(7 + i, k)) for i in range(2) for k in range(2)]
    same = pipe(coloured, num_images_per_mask=2, num_inference_steps=2, generator=fresh).images  # the same batch
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(same, images, strict=True))
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)  # a swapped scheduler
    arrays = pipe(labels["a"], num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert arrays.shape == (1, SIZE, SIZE, 3) and arrays.min() >= 0 and arrays.max() <= 1
    tensors = pipe(labels["a"], num_inference_steps=2, output_type="pt").images
    assert tuple(tensors.shape) == (1, 3, SIZE, SIZE)


def test_label_maps_that_cannot_be_used_are_named(folder):
    pipe = SDMPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"values \[40\] in \d+ pixels are not classes"):
        pipe(np.full((SIZE, SIZE), 40, np.uint8), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"a label map of 10x16 \(width x height\): each side must be a multiple of"):
        pipe(np.zeros((SIZE, 10), np.uint8), num_inference_steps=1)
    unknown = np.zeros((SIZE, SIZE, 3), np.uint8)
    unknown[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) at pixel \(row 0, col 0\) is not in the"):
        pipe(Image.fromarray(unknown), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"integer class ids, got dtype float32"):
        pipe(np.zeros((SIZE, SIZE), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match=r"the label maps differ in size"):
        pipe([np.zeros((SIZE, SIZE), np.uint8), np.zeros((2 * SIZE, SIZE), np.uint8)], num_inference_steps=1)
    with pytest.raises(ValueError, match=r"3 generators for 2 images"):
        pipe(np.zeros((SIZE, SIZE), np.uint8), num_images_per_mask=2, num_inference_steps=1,
             generator=[torch.Generator()] * 3)


def test_a_converted_official_checkpoint_becomes_a_pipeline(tmp_path):
    net = Official(label_channels=184, attention_ds=(2,), seed=3)  # COCO-Stuff: 183 classes + the edge channel
    export = tmp_path / "export"
    torch.save(net.state, tmp_path / "ema_0.9999_000100.pt")
    convert([str(tmp_path / "ema_0.9999_000100.pt"), "dataset=coco", "image_size=16",
             "num_head_channels=32", f"out={export}"])
    diffusers_cli([str(export), "--out", str(tmp_path / "pipe"), "--sampler", "dpmpp"])
    pipe = SDMPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.unet.num_classes == 183 and pipe.unet.edge_channel and len(pipe.config.class_names) == 183
    label = np.full((16, 16), 182, np.uint8)
    label[:, 8:] = 2  # a car on unlabeled ground; two instances side by side
    instance = (np.arange(16)[None, :] // 4).repeat(16, 0)
    image = pipe(label, instance_map=instance, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16) and np.asarray(image).std() > 0
    with pytest.raises(ConfigError, match=r"--out .* exists; pass --overwrite"):
        save_pipeline(export, tmp_path / "pipe")
