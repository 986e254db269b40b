"""Image sets and stand-in metric networks for the evaluation tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdm.data.classes import PALETTE, colorize

NUM_CLASSES = 35


class PaletteReader(nn.Module):
    """A perfect segmenter for images that are colourings of their masks: the nearest palette colour."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("palette", torch.from_numpy(PALETTE[:NUM_CLASSES].astype(np.float32)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float().clamp(-1, 1) + 1) * 127.5
        return -((rgb[:, :, None] - self.palette.T[None, :, :, None, None]) ** 2).sum(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


class MeanColour(nn.Module):
    """A stand-in Inception for FID/KID: uint8 images -> per-channel means and spreads (N, 6)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def stripes(size: int, seed: int) -> np.ndarray:
    """A label of 3 to 5 horizontal bands of random classes 1..34."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), np.uint8)
    cuts = np.sort(rng.choice(np.arange(2, size - 2), rng.integers(2, 5), replace=False))
    for start, cls in zip([0, *cuts], rng.choice(np.arange(1, NUM_CLASSES), len(cuts) + 1, replace=False), strict=True):
        label[start:] = cls
    return label


def save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path.name


def write_sample_folder(root: Path, labels: list[np.ndarray], samples: list[list[np.ndarray]],
                        real: list[np.ndarray] | None = None, settings: dict | None = None,
                        train_data: dict | None = None, run_dir: Path | None = None) -> Path:
    """A folder in sample.py's layout (labels/, images/, real/, manifest.json)."""
    items = []
    for i, (label, images) in enumerate(zip(labels, samples, strict=True)):
        name = f"{i:06d}"
        save(label, root / "labels" / f"{name}.png")
        for k, image in enumerate(images):
            save(image, root / "images" / f"{name}_{k}.png")
        if real is not None:
            save(real[i], root / "real" / f"{name}.png")
        items.append({"mask": name, "index": i, "label": f"labels/{name}.png",
                      "real": f"real/{name}.png" if real is not None else None,
                      "images": [f"images/{name}_{k}.png" for k in range(len(images))]})
    settings = settings or {"sampler": {"name": "ddim", "num_steps": 10, "guidance_scale": 1.5}}
    manifest = {"settings": settings, "complete": True, "items": items, "train_data": train_data,
                "weights": {"run_dir": str(run_dir) if run_dir else None}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def coloured_set(root: Path, n: int = 6, per_mask: int = 3, size: int = 32, noise: float = 0.0,
                 **kwargs) -> tuple[Path, list[np.ndarray]]:
    """Samples that are colourings of their masks (plus optional noise), real photos the clean colouring."""
    rng = np.random.default_rng(0)
    labels = [stripes(size, seed) for seed in range(n)]
    real = [colorize(label) for label in labels]
    samples = [[np.clip(r.astype(np.float64) + rng.normal(0, noise, r.shape), 0, 255).astype(np.uint8)
                for _ in range(per_mask)] for r in real]
    return write_sample_folder(root, labels, samples, real, **kwargs), labels


TEXTURE = 40.0


def textured(label: np.ndarray, amplitude: float = TEXTURE) -> np.ndarray:
    """A 'photo' of a mask: its palette colours under a one-pixel checkerboard, detail that a 2x
    down-and-up blur removes exactly (each 2x2 block averages to the flat colour)."""
    height, width = label.shape
    board = (np.indices((height, width)).sum(0) % 2) * 2 - 1
    return np.clip(colorize(label).astype(np.float64) + amplitude * board[..., None], 0, 255).astype(np.uint8)


def nearest_palette(rgb: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    return -((rgb[:, :, None] - palette.T[None, :, :, None, None]) ** 2).sum(1)


class DetailReader(PaletteReader):
    """A segmenter that needs detail, like a strong one: it reads each pixel as the nearest textured
    palette colour, and smooth pixels (no checkerboard around them) as class 0, wrong for any mask."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float().clamp(-1, 1) + 1) * 127.5
        height, width = rgb.shape[-2:]
        board = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 * 2 - 1
        expected = (self.palette.T[:, :, None, None] + TEXTURE * board).clamp(0, 255)  # (3, C, H, W)
        logits = -((rgb[:, :, None] - expected[None]) ** 2).sum(1)
        mean = torch.nn.functional.avg_pool2d(rgb, 3, 1, 1, count_include_pad=False)
        smooth = (rgb - mean).abs().amax(1) < 5
        logits[:, 0] = torch.where(smooth, torch.full_like(logits[:, 0], 1e9), logits[:, 0])
        return logits


class SmoothReader(PaletteReader):
    """A segmenter blind to detail, like a weak one: it reads one class per 4x4 block from the
    block's mean colour, so a photo and its blurred copy look about the same to it."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = torch.nn.functional.avg_pool2d((images.float().clamp(-1, 1) + 1) * 127.5, 4)
        block_mean = ((self.palette + TEXTURE).clamp(0, 255) + (self.palette - TEXTURE).clamp(0, 255)) / 2
        return torch.nn.functional.interpolate(nearest_palette(rgb, block_mean), scale_factor=4.0)


class ConfusedReader(DetailReader):
    """A DetailReader that mistakes every class above 17 for class 1: a low ceiling."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = super().forward(images)
        ids = logits.argmax(1)
        ids = torch.where(ids > 17, torch.ones_like(ids), ids)
        return torch.nn.functional.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()


def textured_set(root: Path, n: int = 6, per_mask: int = 2, size: int = 32, blur_samples: bool = False,
                 **kwargs) -> Path:
    """Real photos are textured colourings of their masks; the samples are those photos (real as
    generated), or with `blur_samples` their 2x down-and-up blurred copies."""
    labels = [stripes(size // 4, seed).repeat(4, 0).repeat(4, 1) for seed in range(n)]  # bands on 4x4 blocks
    real = [textured(label) for label in labels]
    if blur_samples:
        from sdm.segmenter.controls import blur_control

        def blur(photo: np.ndarray) -> np.ndarray:
            tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
            return blur_control(tensor)[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()

        samples = [[blur(r)] * per_mask for r in real]
    else:
        samples = [[r] * per_mask for r in real]
    return write_sample_folder(root, labels, samples, real, **kwargs)


def evaluation_settings(**overrides):
    """conf/evaluation/default.yaml as the tests use it: no weights folder, no progress bars."""
    from omegaconf import OmegaConf

    from helpers import REPO

    base = OmegaConf.load(REPO / "conf" / "evaluation" / "default.yaml")
    base.weights_dir = None
    base.progress = False
    return OmegaConf.merge(base, overrides)


def oracle():
    """A perfect segmenter and a stand-in Inception, for sets of coloured masks."""
    from sdm.metrics.scoring import Networks

    return Networks(segmenter=PaletteReader(), inception=MeanColour())
