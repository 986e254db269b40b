"""Training the segmenter that measures semantic consistency, on the real training split.

It uses the same DataModule and TensorBoard as the diffusion model (with its own batch and
augmentations) and caches the result per dataset, size and architecture
(`sdm.segmenter.cache`), so every evaluation of that data reuses it. Its mIoU on the real
held-out split is the ceiling a generated image can reach; its calibration there (the same
photos blurred) says whether it can judge detail. Command: `sdm-segmenter` (`sdm.cli.segmenter`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from sdm.checkpoint.files import save_safetensors
from sdm.core.atomic import write_json
from sdm.core.errors import ConfigError
from sdm.core.hardware import cpu_has_bf16
from sdm.core.places import check_output_folder
from sdm.core.seeding import stable_seed
from sdm.data.classes import class_table
from sdm.data.datamodule import SidewalkDataModule, order_seed
from sdm.data.prepare import prepare_data
from sdm.segmenter.cache import INFO_FILE, WEIGHTS_FILE, cache_folder, data_key, starting_weights
from sdm.segmenter.held_out import calibrate
from sdm.segmenter.networks import build_segmenter
from sdm.segmenter.scores import segmentation_scores


class SegmenterTask(L.LightningModule):
    """Cross-entropy training (the class table's ignore id, sidewalk's unlabeled 0, carries no
    target) with mIoU on the validation split."""

    def __init__(self, settings: dict[str, Any], num_classes: int, ignore: int | None = 0) -> None:
        super().__init__()
        self.settings, self.num_classes, self.ignore = settings, num_classes, ignore
        self.network = build_segmenter(settings["arch"], num_classes, int(settings["width"]),
                                       bool(settings["pretrained_backbone"]))
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore)
        self.last_scores: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        if self.settings.get("channels_last"):  # faster convolutions on CPU, bf16 above all
            self.network.to(memory_format=torch.channels_last)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.network(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["label"].long(), ignore_index=-100 if self.ignore is None else self.ignore)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.confusion.update(self.network(batch["image"]).argmax(1), batch["label"].long())

    def on_validation_epoch_end(self) -> None:
        self.last_scores = segmentation_scores(self.confusion.compute().long(), self.ignore)
        self.confusion.reset()
        self.log("val/miou", self.last_scores["miou"])
        self.log("val/pixel_accuracy", self.last_scores["pixel_accuracy"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=float(self.settings["lr"]),
                                      weight_decay=float(self.settings["weight_decay"]))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(self.settings["lr"]),
                                                       total_steps=int(self.settings["max_steps"]), pct_start=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def mix_info(data: DictConfig, datamodule: Any) -> dict[str, Any] | None:
    """What synthetic rows the segmenter trained on beside the real ones (None: real only)."""
    if not data.get("extra") or datamodule.mix is None:
        return None
    real, synthetic, ratio = datamodule.mix
    return {"path": str(data.extra), "ratio": ratio, "rows": synthetic, "real_rows": real}


def training_precision(settings: dict[str, Any]) -> str:
    """`auto`: bf16 autocast where the hardware computes bf16 natively (GPU, AVX-512 BF16 / AMX
    CPUs: 2.5-4x faster here), float32 elsewhere (emulated bf16 is slower than float32)."""
    precision = str(settings["precision"])
    if precision != "auto":
        return precision
    on_gpu = settings.get("accelerator", "auto") != "cpu" and torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16()
    return "bf16-mixed" if native else "32-true"


def segmenter_data(cfg: DictConfig, settings: dict[str, Any]) -> DictConfig:
    """The data settings the segmenter trains with: its own batch and augmentations, and for a
    seed other than 0 its own order of the training rows (seed 0 keeps the data's, as the cached
    instruments were trained), so that seeds differ in what they see first, not only in weights."""
    data = cfg.data.copy()
    with open_dict(data):
        if settings.get("batch_size"):  # the segmenter's own batch, not the diffusion model's
            data.batch_size = int(settings["batch_size"])
        if settings.get("augment") is not None:  # and its own augmentations
            data.augment = settings["augment"]
        if int(cfg.seed):
            data.order_seed = stable_seed("segmenter-order", int(data.split_seed), int(cfg.seed)) % 2**31
    return data


def train_segmenter(cfg: DictConfig) -> Path:
    """Train (or reuse) the segmenter of `cfg.data`; returns its cache folder."""
    settings = OmegaConf.to_container(cfg.segmenter, resolve=True)
    if int(settings["max_steps"]) < 1:
        raise ConfigError(f"segmenter.max_steps={settings['max_steps']} is invalid: expected an integer >= 1")
    initial = starting_weights(settings, int(cfg.data.num_classes))  # a bad folder stops the run before any work
    prepared = prepare_data(cfg.data, show_progress=False)
    key = data_key(cfg.data, prepared.root.name)
    folder = cache_folder(key, settings, int(cfg.seed))
    data = segmenter_data(cfg, settings)
    order = order_seed(data)
    cached = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else None
    if cached is not None and cached.get("steps") != int(settings["max_steps"]):
        print(f"the cached segmenter {folder} trained {cached.get('steps')} steps, not segmenter.max_steps="
              f"{settings['max_steps']}: training it again")
    elif cached is not None and cached.get("data_order_seed", int(data.split_seed)) != order:
        print(f"the cached segmenter {folder} saw its rows in another order (seed {cached.get('data_order_seed')}, "
              f"not {order}): training it again")
    elif cached is not None and not settings.get("retrain"):
        print(f"using the cached segmenter {folder} (segmenter.retrain=true trains a new one)")
        return folder
    check_output_folder(settings["cache_dir"], "segmenter.cache_dir")  # before the training, not after it
    tensorboard = Path(str(OmegaConf.select(cfg, "output_dir") or folder)) / "tb"
    started = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True)
    ignore = class_table(cfg.data).ignore
    task = SegmenterTask(settings, int(cfg.data.num_classes), ignore)
    if initial is not None:
        task.network.load_state_dict(initial)
    datamodule = SidewalkDataModule(data)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tensorboard.parent), name="tb", version="", default_hp_metric=False)
    every = min(int(settings["val_every"]), int(settings["max_steps"]))
    trainer = L.Trainer(
        max_steps=int(settings["max_steps"]), max_epochs=-1, precision=training_precision(settings), logger=logger,
        val_check_interval=every, check_val_every_n_epoch=None, num_sanity_val_steps=0, use_distributed_sampler=False,
        enable_checkpointing=False, enable_progress_bar=bool(settings.get("progress_bar", True)),
        log_every_n_steps=10, accelerator=settings.get("accelerator", "auto"), devices=1,
    )
    try:
        trainer.fit(task, datamodule=datamodule)
    except SystemExit:  # Lightning answers Ctrl-C with exit 1: it is an interruption, said as every command says it
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    trainer.validate(task, datamodule=datamodule, verbose=False)
    scores = task.last_scores
    network = task.network.float().to(memory_format=torch.contiguous_format).cpu().eval()
    calibration = calibrate(network, ((b["image"], b["label"].long()) for b in datamodule.val_dataloader()),
                            int(cfg.data.num_classes), ignore=ignore)
    info = {
        "arch": settings["arch"], "width": int(settings["width"]), "num_classes": int(cfg.data.num_classes),
        "ignore": ignore,
        "data_key": key, "size": list(prepared.size), "steps": int(trainer.global_step), "seed": int(cfg.seed),
        "data_order_seed": datamodule.order_seed,
        "extra": mix_info(cfg.data, datamodule),
        "init": str(Path(str(settings["init"])).expanduser().resolve()) if settings.get("init") else None,
        "real_val_miou": scores["miou"], "real_val_pixel_accuracy": scores["pixel_accuracy"],
        "real_val_per_class_iou": {str(k): v for k, v in scores["per_class_iou"].items()},
        "calibration": calibration,  # the validation split: ceiling, blur control, other masks
        "seconds": round(time.perf_counter() - started, 1), "tensorboard": str(tensorboard),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in task.network.state_dict().items()}
    save_safetensors(state, folder / WEIGHTS_FILE)
    write_json(folder / INFO_FILE, info)
    print(f"segmenter: mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} on the real "
          f"held-out split after {info['steps']} steps ({info['seconds']:.0f} s), blurred photos at "
          f"{calibration['blur_ratio']:.0%} of that -> {folder}")
    return folder
