"""The segmenter that measures semantic consistency, trained by the project on real images.

`python -m sdm.metrics.segmenter data=scenes` trains it on the training split of a prepared
dataset (the same DataModule, augmentations and TensorBoard as the diffusion model) and
caches it per dataset, size and architecture, so every evaluation of that data reuses it.
Its mIoU on the real held-out split is the ceiling a generated image can reach.

Architectures: `small` (0.12 M parameters, trains on the scenes in minutes on 2 cores) and the
torchvision models `lraspp` (MobileNet-V3) and `deeplabv3` (ResNet-50) for real sidewalk on
a GPU, with ImageNet backbone weights when `segmenter.pretrained_backbone=true` and they can
be had.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from sdm.atomic import write_atomically
from sdm.checkpoints import load_safetensors, save_safetensors
from sdm.errors import CheckpointError, ConfigError
from sdm.metrics.consistency import segmentation_scores
from sdm.metrics.held_out import calibrate

ARCHS = ("unet", "small", "lraspp", "deeplabv3")
WEIGHTS_FILE = "segmenter.safetensors"
INFO_FILE = "segmenter.json"
IGNORE = 0  # unlabeled pixels carry no target
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class SmallSegmenter(nn.Module):
    """A three-level encoder-decoder with skips: small enough for 2 CPU cores, wide enough
    to tell the 35 classes apart by colour, texture and position."""

    def __init__(self, num_classes: int = 35, width: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_block(3, width), conv_block(width, 2 * width, stride=2)
        self.enc3 = conv_block(2 * width, 4 * width, stride=2)
        self.dec2, self.dec1 = conv_block(6 * width, 2 * width), conv_block(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.num_features = 4 * width

    def encode(self, images: Tensor) -> list[Tensor]:
        e1 = self.enc1(images)
        e2 = self.enc2(e1)
        return [e1, e2, self.enc3(e2)]

    def forward(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> class logits at the same size."""
        e1, e2, e3 = self.encode(images)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        return self.head(d1)

    def features(self, images: Tensor) -> Tensor:
        """(B, 4 x width) pooled bottleneck features: the space of the weight-free Fréchet distance."""
        return self.encode(images)[-1].mean((2, 3))


class UNetSegmenter(nn.Module):
    """A four-level U-Net (channels width, 2, 4, 4 x width; bilinear up-sampling): the default
    instrument. The three-level `small` network cannot separate a photo from a blurred copy of
    it (experiments/results_segmenter.md); this one reaches >= 0.9 mIoU on held-out scenes."""

    def __init__(self, num_classes: int = 35, width: int = 32) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width)
        self.down = nn.ModuleList([conv_block(3, widths[0])] + [
            conv_block(widths[i - 1], widths[i], stride=2) for i in range(1, len(widths))])
        self.up = nn.ModuleList([conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))])
        self.head = nn.Conv2d(width, num_classes, 1)
        self.num_features = widths[-1]

    def encode(self, images: Tensor) -> list[Tensor]:
        skips = []
        for block in self.down:
            images = block(images)
            skips.append(images)
        return skips

    def forward(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> class logits at the same size."""
        skips = self.encode(images)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)

    def features(self, images: Tensor) -> Tensor:
        """(B, 4 x width) pooled bottleneck features: the space of the weight-free Fréchet distance."""
        return self.encode(images)[-1].mean((2, 3))


class TorchvisionSegmenter(nn.Module):
    """A torchvision segmentation model behind the same interface (images in [-1, 1])."""

    def __init__(self, arch: str, num_classes: int, pretrained_backbone: bool) -> None:
        super().__init__()
        from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
        from torchvision.models.segmentation import deeplabv3_resnet50, lraspp_mobilenet_v3_large

        if arch == "lraspp":
            backbone = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained_backbone else None
            self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=backbone, num_classes=num_classes)
        else:
            backbone = ResNet50_Weights.IMAGENET1K_V1 if pretrained_backbone else None
            self.net = deeplabv3_resnet50(weights=None, weights_backbone=backbone, num_classes=num_classes,
                                          aux_loss=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, images: Tensor) -> Tensor:
        return ((images + 1) / 2 - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self._normalise(images))["out"]

    def features(self, images: Tensor) -> Tensor:
        stages = self.net.backbone(self._normalise(images))  # DeepLabV3: "out"; LRASPP: "low", "high"
        return stages.get("out", stages.get("high")).mean((2, 3))


def build_segmenter(arch: str, num_classes: int, width: int = 32, pretrained_backbone: bool = False) -> nn.Module:
    if arch not in ARCHS:
        raise ConfigError(f"segmenter.arch={arch!r} is invalid: expected one of {list(ARCHS)}")
    if arch == "unet":
        return UNetSegmenter(num_classes, width)
    if arch == "small":
        return SmallSegmenter(num_classes, width)
    try:
        return TorchvisionSegmenter(arch, num_classes, pretrained_backbone)
    except (OSError, RuntimeError) as err:  # URLError is an OSError: no internet for the backbone
        raise ConfigError(f"segmenter.arch={arch} with pretrained_backbone=true needs the ImageNet weights, which "
                          f"could not be loaded ({err}); put them in the torch cache or pass "
                          "segmenter.pretrained_backbone=false") from None


class SegmenterTask(L.LightningModule):
    """Cross-entropy training (class 0 ignored) with mIoU on the validation split."""

    def __init__(self, settings: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.settings, self.num_classes = settings, num_classes
        self.network = build_segmenter(settings["arch"], num_classes, int(settings["width"]),
                                       bool(settings["pretrained_backbone"]))
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE)
        self.last_scores: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        if self.settings.get("channels_last"):  # faster convolutions on CPU, bf16 above all
            self.network.to(memory_format=torch.channels_last)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.network(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["label"].long(), ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.confusion.update(self.network(batch["image"]).argmax(1), batch["label"].long())

    def on_validation_epoch_end(self) -> None:
        self.last_scores = segmentation_scores(self.confusion.compute().long(), IGNORE)
        self.confusion.reset()
        self.log("val/miou", self.last_scores["miou"])
        self.log("val/pixel_accuracy", self.last_scores["pixel_accuracy"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=float(self.settings["lr"]),
                                      weight_decay=float(self.settings["weight_decay"]))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(self.settings["lr"]),
                                                       total_steps=int(self.settings["max_steps"]), pct_start=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def cache_folder(data_key: str, settings: dict[str, Any], seed: int = 0) -> Path:
    """One folder per prepared dataset (source, size, resize), architecture and seed."""
    name = f"{data_key}-{settings['arch']}" + (f"-w{settings['width']}" if settings["arch"] in ("unet", "small") else "")
    name += f"-seed{seed}" if seed else ""
    return Path(str(settings["cache_dir"])).expanduser() / name


def load_segmenter(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained segmenter (eval mode, CPU) and its info (architecture, data, held-out scores)."""
    folder = Path(folder)
    info_path, weights_path = folder / INFO_FILE, folder / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"'{folder}' holds no trained segmenter ({INFO_FILE} and {WEIGHTS_FILE})")
    info = json.loads(info_path.read_text())
    network = build_segmenter(info["arch"], int(info["num_classes"]), int(info.get("width", 16)))
    state = load_safetensors(weights_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"'{weights_path}' does not fit a {info['arch']} segmenter: "
                              f"{str(err).splitlines()[0]}") from None
    return network.eval().requires_grad_(False), info


def data_key(data: DictConfig, real_key: str) -> str:
    """The cache key of what a segmenter trains on: the real rows' key, and with data.extra the
    synthetic rows' key and share, so a mixed segmenter never stands in for the real data's one."""
    if not data.get("extra"):
        return real_key
    from sdm.data.mixing import extra_ratio, extra_source_cfg
    from sdm.data.prepare import prepare_data

    synthetic = prepare_data(extra_source_cfg(data), show_progress=False)
    return f"{real_key}+{synthetic.root.name}-r{extra_ratio(data):g}"


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
    from sdm.hardware import cpu_has_bf16

    on_gpu = settings.get("accelerator", "auto") != "cpu" and torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16()
    return "bf16-mixed" if native else "32-true"


def train_segmenter(cfg: DictConfig) -> Path:
    """Train (or reuse) the segmenter of `cfg.data`; returns its cache folder."""
    from sdm.data.datamodule import SidewalkDataModule
    from sdm.data.prepare import prepare_data

    settings = OmegaConf.to_container(cfg.segmenter, resolve=True)
    if int(settings["max_steps"]) < 1:
        raise ConfigError(f"segmenter.max_steps={settings['max_steps']} is invalid: expected an integer >= 1")
    prepared = prepare_data(cfg.data, show_progress=False)
    key = data_key(cfg.data, prepared.root.name)
    folder = cache_folder(key, settings, int(cfg.seed))
    cached = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else None
    if cached is not None and cached.get("steps") != int(settings["max_steps"]):
        print(f"the cached segmenter {folder} trained {cached.get('steps')} steps, not segmenter.max_steps="
              f"{settings['max_steps']}: training it again")
    elif cached is not None and not settings.get("retrain"):
        print(f"using the cached segmenter {folder} (segmenter.retrain=true trains a new one)")
        return folder
    started = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True)
    task = SegmenterTask(settings, int(cfg.data.num_classes))
    data = cfg.data.copy()
    if settings.get("batch_size"):  # the segmenter's own batch, not the diffusion model's
        data.batch_size = int(settings["batch_size"])
    if settings.get("augment") is not None:  # and its own augmentations
        data.augment = settings["augment"]
    datamodule = SidewalkDataModule(data)
    logger = L.pytorch.loggers.TensorBoardLogger(str(cfg.output_dir), name="tb", version="", default_hp_metric=False)
    every = min(int(settings["val_every"]), int(settings["max_steps"]))
    trainer = L.Trainer(
        max_steps=int(settings["max_steps"]), max_epochs=-1, precision=training_precision(settings), logger=logger,
        val_check_interval=every, check_val_every_n_epoch=None, num_sanity_val_steps=0, use_distributed_sampler=False,
        enable_checkpointing=False, enable_progress_bar=bool(settings.get("progress_bar", True)),
        log_every_n_steps=10, accelerator=settings.get("accelerator", "auto"), devices=1,
    )
    trainer.fit(task, datamodule=datamodule)
    trainer.validate(task, datamodule=datamodule, verbose=False)
    scores = task.last_scores
    network = task.network.float().to(memory_format=torch.contiguous_format).cpu().eval()
    calibration = calibrate(network, ((b["image"], b["label"].long()) for b in datamodule.val_dataloader()),
                            int(cfg.data.num_classes))
    info = {
        "arch": settings["arch"], "width": int(settings["width"]), "num_classes": int(cfg.data.num_classes),
        "data_key": key, "size": list(prepared.size), "steps": int(trainer.global_step), "seed": int(cfg.seed),
        "extra": mix_info(cfg.data, datamodule),
        "real_val_miou": scores["miou"], "real_val_pixel_accuracy": scores["pixel_accuracy"],
        "real_val_per_class_iou": {str(k): v for k, v in scores["per_class_iou"].items()},
        "calibration": calibration,  # the validation split: ceiling, blur control, other masks
        "seconds": round(time.perf_counter() - started, 1), "tensorboard": str(Path(str(cfg.output_dir)) / "tb"),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in task.network.state_dict().items()}
    save_safetensors(state, folder / WEIGHTS_FILE)
    write_atomically(folder / INFO_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    print(f"segmenter: mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} on the real "
          f"held-out split after {info['steps']} steps ({info['seconds']:.0f} s), blurred photos at "
          f"{calibration['blur_ratio']:.0%} of that -> {folder}")
    return folder


def _main() -> None:
    import hydra

    from sdm.errors import exit_on_sdm_error

    @hydra.main(version_base="1.3", config_path="../../conf", config_name="segmenter")
    @exit_on_sdm_error
    def run(cfg: DictConfig) -> None:
        from sdm.data.prepare import prepare_data
        from sdm.metrics.held_out import refuse_training_rows, score_held_out, test_data_cfg

        test = cfg.segmenter.get("test")
        if test:  # a bad or not held-out test set stops the run before any training
            test = OmegaConf.to_container(test, resolve=True) if OmegaConf.is_config(test) else test
            test_key = prepare_data(test_data_cfg(cfg.data, test), show_progress=False).root.name
            refuse_training_rows(test, test_key, prepare_data(cfg.data, show_progress=False).root.name)
        folder = train_segmenter(cfg)
        if test:
            score_held_out(folder, cfg.data, test, INFO_FILE)

    run()


if __name__ == "__main__":
    _main()
