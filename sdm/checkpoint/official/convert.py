"""Turn a checkpoint of the paper's official code into this project's export (ema.safetensors +
config.yaml), which `sample.py weights=<out>` and the evaluation read like any trained run.

    python -m sdm.cli.convert <model*.pt | ema_0.9999_*.pt> dataset=ade20k|celeba|coco
        [out=<folder>] [image_size=256] [num_classes=N] [no_instance=true|false]
        [num_head_channels=64 | num_heads=N] [use_new_attention_order=false]
        [diffusion_steps=1000] [noise_schedule=linear|cosine] [overwrite=false]

The flags take the official scripts' names and default to the published model of `dataset`;
everything the tensor shapes decide (widths, depth, attention levels, label channels, learned
variance) is read from them. Nothing is written unless the whole checkpoint maps onto the
U-Net; a tensor that does not fit is named in both spellings.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdm.checkpoint.card import CARD, write_model_card
from sdm.checkpoint.files import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    check_weights_fit,
    export_ema,
    load_checkpoint,
)
from sdm.checkpoint.official.keys import is_qkv, legacy_qkv_to_ours, our_name
from sdm.checkpoint.official.layout import Layout, read_layout
from sdm.checkpoint.official.published import (
    NOISE_SCHEDULES,
    PUBLISHED,
    Published,
    diffusion_config,
)
from sdm.core.atomic import WriteError, describe_write_failure, remove_leftovers, temporary_name
from sdm.core.errors import CheckpointError, ConfigError
from sdm.core.places import MIN_FREE_BYTES, check_output_folder
from sdm.models import build_unet

OFFICIAL_CODE = "https://github.com/WeilunWang/semantic-diffusion-model"
DEFAULT_ROOT = Path("runs") / "official"


@dataclass(frozen=True)
class Options:
    """The command line; None means: the published value of `dataset` (or what the shapes say)."""

    checkpoint: Path
    dataset: str
    out: Path | None = None
    image_size: int | None = None
    num_classes: int | None = None
    no_instance: bool | None = None
    num_head_channels: int | None = None
    num_heads: int | None = None
    use_new_attention_order: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    overwrite: bool = False


USAGE = __doc__.split("\n\n")[1]


def _value(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={text} is invalid: expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text} is invalid: expected an integer") from None
    return Path(text).expanduser() if kind is Path else text


def parse_args(argv: list[str]) -> Options:
    """`<checkpoint> key=value ...` -> Options; unknown keys and bad values are refused by name."""
    kinds = {"out": Path, "dataset": str, "noise_schedule": str, "use_new_attention_order": bool,
             "no_instance": bool, "overwrite": bool}
    known = [f.name for f in fields(Options) if f.name != "checkpoint"]
    def is_setting(arg: str) -> bool:  # a path may hold '=' too (Hydra multirun folders)
        return "=" in arg and arg.split("=", 1)[0] in known

    positional = [a for a in argv if not is_setting(a)]
    settings: dict[str, Any] = {}
    unknown = [a.split("=", 1)[0] for a in positional if "=" in a and not Path(a).expanduser().exists()]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]}=...; known: {', '.join(known)}")
    if len(positional) != 1:
        raise ConfigError(f"expected one checkpoint file and key=value settings, got {argv}\nusage:\n{USAGE}")
    for arg in argv:
        if not is_setting(arg):
            continue
        key, text = arg.split("=", 1)
        settings[key] = _value(key, text, kinds.get(key, int))
    dataset = settings.get("dataset")
    if dataset is None:
        raise ConfigError(f"dataset= is required: one of {'|'.join(PUBLISHED)}, the data the checkpoint was trained on")
    if dataset not in PUBLISHED:
        raise ConfigError(f"dataset={dataset} is invalid: expected one of {'|'.join(PUBLISHED)} (the published "
                          "models; for another, also pass num_classes= and no_instance=)")
    if settings.get("noise_schedule", "linear") not in NOISE_SCHEDULES:
        raise ConfigError(f"noise_schedule={settings['noise_schedule']} is invalid: expected one of "
                          f"{'|'.join(NOISE_SCHEDULES)}")
    for key in ("image_size", "num_classes", "num_head_channels", "num_heads", "diffusion_steps"):
        if key in settings and settings[key] < 1:
            raise ConfigError(f"{key}={settings[key]} is invalid: expected an integer >= 1")
    if settings.get("noise_schedule", "linear") == "linear" and settings.get("diffusion_steps", 1000) <= 20:
        raise ConfigError(f"diffusion_steps={settings['diffusion_steps']} is invalid with the linear schedule: the "
                          "official code stretches its betas by 1000 / steps, which needs more than 20 steps")
    if "num_heads" in settings and "num_head_channels" in settings:
        raise ConfigError("pass num_head_channels= or num_heads=, not both (the official code then ignores "
                          "num_heads)")
    return Options(checkpoint=Path(positional[0]).expanduser(), **settings)


def load_official(path: Path) -> dict[str, Tensor]:
    """The tensors of an official checkpoint (a plain state dict) as float32, read without
    running any of its code."""
    if path.suffix == ".safetensors":
        raise CheckpointError(f"'{path}' is already an export of this project (safetensors): pass its folder to "
                              "sample.py as weights= directly")
    raw = load_checkpoint(path)  # names the file when missing, unreadable or carrying code
    if "state_dict" in raw and "hyper_parameters" in raw:
        raise CheckpointError(f"'{path}' is a checkpoint of this project, not of the official code: pass it to "
                              "sample.py as weights= directly")
    if not raw or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        kinds = sorted({type(v).__name__ for v in raw.values()})
        raise CheckpointError(f"'{path}' is not a state dict (names -> tensors; it holds {kinds}): the official code "
                              "saves the U-Net as model*.pt and ema_*.pt (opt*.pt holds the optimizer)")
    if all(k.startswith("module.") for k in raw):  # saved from a DistributedDataParallel wrapper
        raw = {k.removeprefix("module."): v for k, v in raw.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}


def label_split(layout: Layout, options: Options, published: Published) -> tuple[int, bool]:
    """(classes, edge channel) of the SPADE input: num_classes= or the dataset's class count, and
    no_instance= or the edge channel the shapes leave over; both must add up to the shapes."""
    num_classes = options.num_classes or published.num_classes
    if options.no_instance is not None:
        edge = not options.no_instance
        if layout.label_channels != num_classes + int(edge):
            given = f"num_classes={num_classes}" if options.num_classes else \
                f"dataset={options.dataset} has {num_classes} classes"
            raise CheckpointError(
                f"'{options.checkpoint}' reads {layout.label_channels} label channels, but {given} and "
                f"no_instance={str(options.no_instance).lower()} make {num_classes + int(edge)}: pass the "
                "num_classes= and no_instance= it was trained with")
        return num_classes, edge
    extra = layout.label_channels - num_classes
    if extra not in (0, 1):
        given = f"num_classes={num_classes}" if options.num_classes else \
            f"dataset={options.dataset} has {num_classes} classes"
        raise CheckpointError(
            f"'{options.checkpoint}' reads {layout.label_channels} label channels, but {given} (+1 with instance "
            "edges): a checkpoint of another dataset? Pass num_classes= and no_instance= as it was trained")
    return num_classes, bool(extra)


def head_channels(layout: Layout, options: Options, published: Published) -> int:
    """Our one head width for every attention block, giving each the official head count."""
    widths = sorted(set(layout.attention_channels))
    if options.num_heads:
        per_head = {c // options.num_heads for c in widths}
        if any(c % options.num_heads for c in widths) or len(per_head) > 1:
            raise CheckpointError(f"attention blocks {widths} channels wide split into {options.num_heads} heads "
                                  "of different widths; this U-Net has one head width for all")
        return per_head.pop()
    width = options.num_head_channels or published.num_head_channels
    if any(c % width for c in widths):
        raise CheckpointError(f"attention blocks {widths} channels wide do not split into heads of {width}: pass "
                              "num_head_channels= or num_heads= as the checkpoint was trained")
    return width


def build_config(layout: Layout, options: Options) -> dict[str, Any]:
    """The export's config.yaml: what `sdm.models.build_unet`, the samplers and the evaluation read."""
    published = PUBLISHED[options.dataset]
    num_classes, edge = label_split(layout, options, published)
    size = options.image_size or published.image_size
    factor = 2 ** (len(layout.channel_mult) - 1)
    if size % factor:
        raise ConfigError(f"image_size={size} is not a multiple of the U-Net's downsampling factor {factor}")
    model = {
        "name": f"official-{options.dataset}",
        "edge_channel": edge,
        "in_channels": layout.in_channels,
        "model_channels": layout.model_channels,
        "channel_mult": list(layout.channel_mult),
        "num_res_blocks": layout.num_res_blocks,
        "attention_ds": list(layout.attention_ds),
        "num_head_channels": head_channels(layout, options, published),
        "spade_hidden": layout.spade_hidden,
        "dropout": 0.0,
        "learn_sigma": layout.learn_sigma,
        "resblock_updown": layout.resblock_updown,
        "use_checkpoint": False,
    }
    official_flags = {
        "image_size": size, "num_classes": num_classes, "no_instance": not edge,
        "num_channels": layout.model_channels, "channel_mult": ",".join(map(str, layout.channel_mult)),
        "num_res_blocks": layout.num_res_blocks,
        "attention_resolutions": ",".join(str(size // d) for d in sorted(layout.attention_ds)),
        "num_head_channels": model["num_head_channels"], "resblock_updown": layout.resblock_updown,
        "learn_sigma": layout.learn_sigma, "use_new_attention_order": options.use_new_attention_order,
        "diffusion_steps": options.diffusion_steps, "noise_schedule": options.noise_schedule,
    }
    return {
        "run_name": f"official-{options.dataset}",
        "model": model,
        "data": data_config(options.dataset, num_classes, size),
        "diffusion": diffusion_config(options.diffusion_steps, options.noise_schedule),
        "converted_from": {"code": OFFICIAL_CODE, "checkpoint": str(options.checkpoint.resolve()),
                           "dataset": options.dataset, "official_flags": official_flags},
    }


DATA_PRESETS = {"ade20k": "ade20k", "celeba": "celebamask", "coco": "coco_stuff"}  # dataset= -> conf/data/


def data_config(dataset: str, num_classes: int, size: int) -> dict[str, Any]:
    """The data preset of the checkpoint's dataset (its layout and class table, as the official code
    reads it), without a path: sampling from its masks takes mask_source={path:...}. A checkpoint
    trained with another class count gets a generic table of that many classes."""
    from omegaconf import OmegaConf

    from sdm.core.configs import compose

    data = OmegaConf.to_container(compose("prepare", [f"data={DATA_PRESETS[dataset]}"]).data, resolve=True)
    data.update(size=[size, size], cache_dir="runs/data")
    if num_classes != data["num_classes"]:
        data["classes"] = {"name": f"{dataset}-{num_classes}", "count": num_classes, "palette": "auto",
                           "ignore": None, "label_format": "ids", "instances": False}
        data["num_classes"] = num_classes
    return data


def rename(state: dict[str, Tensor], head_width: int, legacy_order: bool) -> dict[str, Tensor]:
    """The official tensors under our names, the qkv rows in our order."""
    weights = {}
    for name, tensor in state.items():
        if is_qkv(name) and legacy_order:
            tensor = legacy_qkv_to_ours(tensor, tensor.shape[0] // 3 // head_width)
        weights[our_name(name)] = tensor
    return weights


def check_fit(state: dict[str, Tensor], own: dict[str, tuple[int, ...]], origin: str) -> None:
    """Refuse, naming the first tensor in the checkpoint's order, an official state dict that does
    not map one to one onto our U-Net's tensors `own` (name -> shape)."""
    hint = "pass the flags it was trained with (num_classes=, no_instance=)"
    mapped = set()
    for name, tensor in state.items():
        ours, theirs = our_name(name), tuple(tensor.shape)
        if ours not in own:
            raise CheckpointError(f"'{origin}' does not fit: official {name} {theirs} has no counterpart here "
                                  f"(it would be {ours}); not a checkpoint of the official SDM U-Net?")
        if own[ours] != theirs:
            raise CheckpointError(f"'{origin}' does not fit: official {name} {theirs} -> ours {ours} {own[ours]}; "
                                  f"{hint}")
        mapped.add(ours)
    missing = [k for k in own if k not in mapped]
    if missing:
        raise CheckpointError(f"'{origin}' does not fit: ours {missing[0]} {own[missing[0]]} has no official tensor "
                              f"({len(missing)} missing); {hint}")


def convert(state: dict[str, Tensor], options: Options) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(our weights, export config) of an official state dict; raises before anything is written."""
    origin = str(options.checkpoint)
    try:
        layout = read_layout(state)
    except CheckpointError as err:
        raise CheckpointError(f"'{origin}': {err}") from None
    config = build_config(layout, options)
    with torch.device("meta"):  # shapes only: no memory for a second copy of the weights
        own = build_unet(config).state_dict()
    check_fit(state, {k: tuple(v.shape) for k, v in own.items()}, origin)
    weights = rename(state, int(config["model"]["num_head_channels"]), not options.use_new_attention_order)
    check_weights_fit(own, weights, origin)  # names and shapes once more, and NaN / inf
    return weights, config


def write_export(weights: dict[str, Tensor], config: dict[str, Any], out: Path, overwrite: bool) -> Path:
    """Write into a hidden sibling folder, then rename it to `out`: a failed or killed conversion
    leaves no half-written export. An existing `out` is replaced file by file with overwrite."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not overwrite:
        raise ConfigError(f"out={out} exists and is not empty; pass overwrite=true or another out=")
    tmp = temporary_name(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out.parent, "tmp", out.name)
        export_ema(weights, config, tmp)
        write_model_card(tmp, config)
        if out.is_dir():
            for name in (EXPORT_WEIGHTS, EXPORT_CONFIG, CARD):
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            tmp.rename(out)
    except OSError as err:  # a read-only or missing parent, a file in the way: named, no traceback
        raise WriteError(describe_write_failure(out / EXPORT_WEIGHTS, err)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / EXPORT_WEIGHTS


def describe(config: dict[str, Any]) -> str:
    model, data = config["model"], config["data"]
    edge = " + 1 instance-edge channel" if model["edge_channel"] else ""
    attention = ", ".join(f"1/{d}" for d in model["attention_ds"]) or "the middle block only"
    return (f"U-Net: {model['model_channels']} channels x {model['channel_mult']}, {model['num_res_blocks']} res "
            f"blocks per level, attention at {attention} (heads of {model['num_head_channels']} channels), "
            f"{data['num_classes']} classes{edge}, learn_sigma={model['learn_sigma']}, "
            f"resblock_updown={model['resblock_updown']}, {'x'.join(map(str, data['size']))}")


def run(options: Options) -> Path:
    """Read, convert, check and write; returns the written ema.safetensors."""
    out = options.out or DEFAULT_ROOT / f"{options.dataset}-{options.checkpoint.stem}"
    if not (out.is_dir() and any(out.iterdir()) and not options.overwrite):  # that refusal names it itself
        check_output_folder(out, "out", need_bytes=max(MIN_FREE_BYTES, 2 * options.checkpoint.stat().st_size)
                            if options.checkpoint.is_file() else MIN_FREE_BYTES)
    state = load_official(options.checkpoint)
    weights, config = convert(state, options)
    print(f"read {options.checkpoint}: {len(state)} tensors\n{describe(config)}")
    written = write_export(weights, config, out, options.overwrite)
    masks = "<folder of label PNGs in the model's class ids>"
    edges = " (instance maps in a sibling instances/ folder)" if config["model"]["edge_channel"] else ""
    print(f"wrote {written} and {EXPORT_CONFIG}\nsample: python sample.py weights={out} masks={masks}{edges}")
    return written
