"""A run's weights (an export, a checkpoint, a converted official model) in the diffusers layout:
model_index.json, unet/ (config.json + safetensors), scheduler/, and a `pipeline.py` that lets
`DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder)` find `SDMPipeline`."""

from __future__ import annotations

import shutil
from pathlib import Path

from sdm.checkpoint.card import CARD, SAMPLES, write_model_card
from sdm.core.atomic import remove_leftovers, temporary_name
from sdm.core.errors import ConfigError
from sdm.core.places import check_output_folder
from sdm.data.classes import class_table
from sdm.data.rows import parse_size
from sdm.diffusion import noise_config
from sdm.diffusion.sampling import SAMPLERS, build_sampler_scheduler
from sdm.generation.weights import Model, load_model
from sdm.models.build import MODEL_KEYS
from sdm.pipelines.pipeline import SDMPipeline
from sdm.pipelines.unet import SDMUNet2DModel

SHIM = '''"""Lets `DiffusionPipeline.from_pretrained(this_folder, custom_pipeline=this_folder)` find the
pipeline class; it lives in the sdm package (pip install sdm)."""

from sdm.pipelines.pipeline import SDMPipeline  # noqa: F401
'''


def pipeline_from_weights(source: str | Path | Model, sampler: str | None = None,
                          timestep_spacing: str | None = None) -> SDMPipeline:
    """An SDMPipeline of a run's weights (or of a model already loaded from them); the scheduler is
    the run's sampler (or `sampler`) on its training betas, as sample.py builds it."""
    model = source if isinstance(source, Model) else load_model(source)
    cfg = model.cfg
    run_sampler = cfg.get("sampler") or {}
    name = sampler or run_sampler.get("name") or "dpmpp"
    if name not in SAMPLERS:
        raise ConfigError(f"sampler={name!r}; expected one of {sorted(SAMPLERS)}")
    spacing = timestep_spacing or run_sampler.get("timestep_spacing") or "trailing"
    kwargs = {k: v for k, v in cfg["model"].items() if k not in MODEL_KEYS}
    unet = SDMUNet2DModel(num_classes=int(cfg["data"]["num_classes"]), **kwargs)
    unet.load_state_dict(model.unet.state_dict(), strict=True)
    scheduler = build_sampler_scheduler(name, noise_config(cfg), timestep_spacing=spacing)
    table = class_table(cfg["data"])
    return SDMPipeline(unet.eval(), scheduler, list(table.names), table.palette.tolist(), table.ignore,
                       list(parse_size(cfg["data"]["size"])))


def save_pipeline(source: str | Path, out: str | Path, sampler: str | None = None, overwrite: bool = False) -> Path:
    """Write the pipeline of `source` to `out` (built under a temporary name, then renamed)."""
    out = check_output_folder(out, "--out")  # a file there, a read-only or full disk: named before any work
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it")
    pipe = pipeline_from_weights(source, sampler)
    model = load_model(source)
    for leftover in remove_leftovers(out.parent, "tmp", out.name):
        print(f"removed {leftover}: the unfinished folder of a killed save")
    tmp = temporary_name(out, "tmp")
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "pipeline.py").write_text(SHIM)
        export = model.path.parent  # its model card (with the newest evaluation) and picture come along
        for name in (SAMPLES, CARD):
            if (export / name).is_file():
                shutil.copyfile(export / name, tmp / name)
        if not (tmp / CARD).is_file():  # a checkpoint, not an export: a card of its config
            write_model_card(tmp, model.cfg)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
