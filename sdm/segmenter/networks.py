"""The segmenter networks: `unet` (the default instrument on the CPU), `small` (the former one) and the
torchvision models `lraspp` (MobileNet-V3) and `deeplabv3` (ResNet-50) for real data on a GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdm.core.errors import ConfigError

ARCHS = ("unet", "small", "lraspp", "deeplabv3")
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
