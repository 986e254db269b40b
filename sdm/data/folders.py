"""A folder of image and label files, paired by name, in the layouts the common datasets ship in.

    plain       images/x.jpg               labels/x.png                 [instances/x.png]
                (or images/<split>/, labels/<split>/)
    ade20k      images/<split>/x.jpg        annotations/<split>/x.png     (split: training, validation)
    cityscapes  leftImg8bit/<split>/<city>/x_leftImg8bit.png
                gtFine/<split>/<city>/x_gtFine_labelIds.png   [x_gtFine_instanceIds.png]
    coco_stuff  <split>_img/x.jpg           <split>_label/x.png          [<split>_inst/x.png]  (SPADE's layout)
    celebamask  <split>/images/x.jpg        <split>/labels/x.png          (split: train, test)

The rows leave here in the Hub schema (`pixel_values`, `label`, undecoded paths), so decoding,
checks and the class table's mapping are the same as for any other source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Image as ImageFeature

from sdm.core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_LISTED = 5


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps its files; `{split}` is replaced by the split's folder name."""

    images: str
    labels: str
    image_tail: str = ""  # what the image's stem adds to the shared name (cityscapes: _leftImg8bit)
    label_tail: str = ""
    instances: str | None = None
    instance_tail: str = ""
    nested: bool = False  # files sit in sub-folders (cityscapes' cities)
    splits: tuple[tuple[str, str], ...] = ()  # this project's split name -> the layout's folder name

    def split_folder(self, split: str) -> str:
        return dict(self.splits).get(split, split)


LAYOUTS: dict[str, Layout] = {
    "plain": Layout("images", "labels", instances="instances"),
    "ade20k": Layout("images/{split}", "annotations/{split}", splits=(("train", "training"), ("val", "validation"))),
    "cityscapes": Layout("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit", "_gtFine_labelIds",
                         "gtFine/{split}", "_gtFine_instanceIds", nested=True),
    "coco_stuff": Layout("{split}_img", "{split}_label", instances="{split}_inst"),
    "celebamask": Layout("{split}/images", "{split}/labels", splits=(("val", "test"),)),
}


@dataclass(frozen=True)
class Pairs:
    """The matched files of one split, and what could not be matched."""

    images: list[Path]
    labels: list[Path]
    instances: list[Path] | None
    unmatched_images: list[Path]
    unmatched_labels: list[Path]


def detect_layout(root: Path, split: str) -> str:
    """The layout whose folders `root` has (the most specific first)."""
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "annotations").is_dir() and (root / "images").is_dir():
        return "ade20k"
    if any(root.glob("*_img")) and any(root.glob("*_label")):
        return "coco_stuff"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "plain"
    if any((d / "images").is_dir() and (d / "labels").is_dir() for d in root.iterdir() if d.is_dir()):
        return "celebamask"
    raise DataError(
        f"data.path '{root}': no known layout (images/ + labels/, ADE20K's images/ + annotations/, Cityscapes' "
        f"leftImg8bit/ + gtFine/, COCO-Stuff's <split>_img/ + <split>_label/, or <split>/images/ + "
        f"<split>/labels/); found {sorted(p.name for p in root.iterdir())[:10]}")


def _folder(root: Path, pattern: str, split: str) -> Path:
    return root / pattern.format(split=split)


def _files(folder: Path, nested: bool) -> list[Path]:
    found = folder.rglob("*") if nested else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _key(path: Path, folder: Path, tail: str) -> str:
    """The name two files share: the path under its folder, without suffix and tail."""
    relative = path.relative_to(folder).with_suffix("")
    stem = relative.name.removesuffix(tail) if tail else relative.name
    return str(relative.with_name(stem))


def find_pairs(root: Path, layout_name: str, split: str) -> Pairs:
    """Pair the split's images and labels by name (and instance maps where the layout has them)."""
    layout = LAYOUTS[layout_name]
    folder_split = layout.split_folder(split)
    images_dir, labels_dir = _folder(root, layout.images, folder_split), _folder(root, layout.labels, folder_split)
    if layout_name == "plain" and (root / "images" / folder_split).is_dir():
        images_dir, labels_dir = root / "images" / folder_split, root / "labels" / folder_split
    for what, folder in (("images", images_dir), ("labels", labels_dir)):
        if not folder.is_dir():
            raise DataError(f"data.path '{root}' (layout {layout_name}, split {split}): no {what} folder {folder}")
    image_files = [p for p in _files(images_dir, layout.nested) if p.stem.endswith(layout.image_tail)]
    label_files = [p for p in _files(labels_dir, layout.nested) if p.stem.endswith(layout.label_tail)]
    labels = {_key(p, labels_dir, layout.label_tail): p for p in label_files}
    images = {_key(p, images_dir, layout.image_tail): p for p in image_files}
    shared = sorted(images.keys() & labels.keys())
    instances = None
    if layout.instances:
        instances_dir = _folder(root, layout.instances, folder_split)
        if layout_name == "plain" and images_dir.parent == root / "images":
            instances_dir = root / "instances" / folder_split
        found = {_key(p, instances_dir, layout.instance_tail): p for p in _files(instances_dir, layout.nested)
                 if p.stem.endswith(layout.instance_tail)} if instances_dir.is_dir() else {}
        if found and all(k in found for k in shared):
            instances = [found[k] for k in shared]
    return Pairs([images[k] for k in shared], [labels[k] for k in shared], instances,
                 [images[k] for k in sorted(images.keys() - labels.keys())],
                 [labels[k] for k in sorted(labels.keys() - images.keys())])


def _listed(paths: list[Path]) -> str:
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return ", ".join(str(p) for p in paths[:MAX_LISTED]) + more


def load_folder(path: str, layout: str = "auto", split: str = "train", on_unpaired: str = "error") -> datasets.Dataset:
    """Rows of a folder dataset in the Hub schema; unpaired files are refused (named) unless
    `on_unpaired` is 'skip' (data.on_bad_row), when they are left out and counted."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path '{path}' is not a folder")
    name = detect_layout(root, split) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise DataError(f"data.layout={layout!r}; expected auto or one of {list(LAYOUTS)}")
    pairs = find_pairs(root, name, split)
    unpaired = [f"{len(pairs.unmatched_images)} images have no label ({_listed(pairs.unmatched_images)})"
                if pairs.unmatched_images else "",
                f"{len(pairs.unmatched_labels)} labels have no image ({_listed(pairs.unmatched_labels)})"
                if pairs.unmatched_labels else ""]
    unpaired = [u for u in unpaired if u]
    if unpaired and on_unpaired == "error":
        raise DataError(f"data.path '{root}' (layout {name}, split {split}): " + "; ".join(unpaired)
                        + ". Add the missing files, or pass data.on_bad_row=skip to leave them out.")
    if unpaired:
        print(f"left out (data.on_bad_row=skip): {'; '.join(unpaired)}")
    if not pairs.images:
        raise DataError(f"data.path '{root}' (layout {name}, split {split}): no image has a label of the same name")
    columns = {"pixel_values": [{"path": str(p), "bytes": None} for p in pairs.images],
               "label": [{"path": str(p), "bytes": None} for p in pairs.labels]}
    features = {"pixel_values": ImageFeature(decode=False), "label": ImageFeature(decode=False)}
    if pairs.instances is not None:
        columns["instance"] = [{"path": str(p), "bytes": None} for p in pairs.instances]
        features["instance"] = ImageFeature(decode=False)
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    ds.info.description = f"{name}:{split}"
    return ds


def folder_fingerprint(path: str, layout: str, split: str) -> str:
    """A digest of the files a folder source reads (names, sizes, times): a changed file, a new
    one or another split gives another cache."""
    root = Path(path).expanduser()
    name = detect_layout(root, split) if layout == "auto" else layout
    pairs = find_pairs(root, name, split)
    digest = hashlib.sha256(f"{name}:{split}".encode())
    for file in pairs.images + pairs.labels + (pairs.instances or []):
        stat = file.stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:10]
