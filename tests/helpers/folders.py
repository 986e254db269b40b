"""Small datasets on disk in the layouts of the common segmentation datasets, made by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# layout -> (image path, label path, instance path or None) for one name, split `s`
PATHS = {
    "plain": lambda n, s: (f"images/{n}.jpg", f"labels/{n}.png", f"instances/{n}.png"),
    "ade20k": lambda n, s: (f"images/{ {'train': 'training'}.get(s, s)}/{n}.jpg",
                            f"annotations/{ {'train': 'training'}.get(s, s)}/{n}.png", None),
    "cityscapes": lambda n, s: (f"leftImg8bit/{s}/aachen/{n}_leftImg8bit.png", f"gtFine/{s}/aachen/{n}_gtFine_labelIds.png",
                                f"gtFine/{s}/aachen/{n}_gtFine_instanceIds.png"),
    "coco_stuff": lambda n, s: (f"{s}_img/{n}.jpg", f"{s}_label/{n}.png", f"{s}_inst/{n}.png"),
    "celebamask": lambda n, s: (f"{s}/images/{n}.jpg", f"{s}/labels/{n}.png", None),
}

# the values a dataset's label files hold: (range of class values, the extra value that maps to "unlabeled")
FILE_VALUES = {"plain": (range(0, 5), None), "ade20k": (range(1, 151), 0), "cityscapes": (range(0, 34), None),
               "coco_stuff": (range(0, 182), 255), "celebamask": (range(0, 19), None)}


def label_values(layout: str, height: int, width: int, seed: int) -> np.ndarray:
    """Four horizontal bands of the layout's file values (one of them its 'unlabeled' value, if any)."""
    values, unlabeled = FILE_VALUES[layout]
    rng = np.random.default_rng(seed)
    picks = rng.choice(np.array(values), size=4, replace=False)
    if unlabeled is not None:
        picks[-1] = unlabeled
    label = np.zeros((height, width), np.uint8)
    for i, value in enumerate(picks):
        label[i * height // 4:(i + 1) * height // 4] = value
    return label


def write_layout(root: Path, layout: str, names: list[str], split: str = "train", size: tuple[int, int] = (12, 16),
                 instances: bool = True) -> dict[str, np.ndarray]:
    """Images (coloured by their label) and label files of `layout` under `root`; returns name -> file values."""
    written = {}
    for i, name in enumerate(names):
        image_path, label_path, instance_path = PATHS[layout](name, split)
        label = label_values(layout, *size, seed=i)
        image = np.stack([label, 255 - label, (label * 3) % 255], -1).astype(np.uint8)
        for path, array in ((image_path, image), (label_path, label)):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / path, quality=95) if path.endswith(".jpg") else \
                Image.fromarray(array).save(root / path)
        if instances and instance_path:
            (root / instance_path).parent.mkdir(parents=True, exist_ok=True)
            instance = (np.arange(size[1])[None, :] // 4 + 1).repeat(size[0], 0).astype(np.uint16)
            Image.fromarray(instance).save(root / instance_path)
        written[name] = label
    return written
