"""A finished generation as a dataset in the Hub schema of segments/sidewalk-semantic.

`pixel_values` and `label` are `datasets.Image` columns as on the Hub, so training code loads
the export unchanged (`data=sidewalk data.path=<export>` here, `load_dataset("parquet", ...)`
anywhere); extra columns say where each image came from. The export is built in a temporary
folder and renamed into place: a reader never sees half of it.

    python -m sdm.cli.export <sample.py folder> [--out DIR] [--size H W] [--rows-per-shard N]
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdm.core.atomic import WriteError, describe_write_failure, remove_leftovers, temporary_name
from sdm.core.errors import DataError
from sdm.core.places import check_output_folder
from sdm.core.viz import image_problem
from sdm.data.classes import class_table
from sdm.generation.filtering import LabelFilter, PixelFilter, prepare_filter
from sdm.generation.layout import MANIFEST

MARKER = "sdm_export.json"  # what tells a folder is an export of ours (safe to replace)
ROWS_PER_SHARD = 500
EXTRA_COLUMNS = ("source_mask", "sample_index", "seed", "sampler", "num_steps", "guidance_scale", "filtered_share")


def features() -> Any:
    import datasets

    return datasets.Features({
        "pixel_values": datasets.Image(), "label": datasets.Image(),
        "source_mask": datasets.Value("string"), "sample_index": datasets.Value("int32"),
        "seed": datasets.Value("int64"), "sampler": datasets.Value("string"),
        "num_steps": datasets.Value("int32"), "guidance_scale": datasets.Value("float32"),
        "filtered_share": datasets.Value("float32"),  # of the labelled pixels, unlabeled by the filter (0: none)
    })


def read_finished_manifest(samples: Path) -> dict[str, Any]:
    path = samples / MANIFEST
    if not path.is_file():
        raise DataError(f"{samples}: no {MANIFEST} there, so not a sample.py output")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read: {err}") from None
    if not manifest.get("complete"):
        raise DataError(f"{samples}: the generation there is not finished; run the same sample.py command again")
    return manifest


def checked(path: Path, expected: tuple[int, int]) -> Path:
    """`path`, after checking that it decodes whole at the generation's (height, width)."""
    problem = image_problem(path, expected)
    if problem is not None:
        raise DataError(f"{path} {problem}; re-run the same sample.py command, which draws a damaged image "
                        "again, then export")
    return path


def png_bytes(path: Path, expected: tuple[int, int], size: tuple[int, int] | None, label: bool) -> bytes:
    """The file's PNG bytes, checked to decode whole at the generation's (height, width), and
    resized to `size` when asked (labels nearest, photos Lanczos)."""
    checked(path, expected)
    if size is None:
        return path.read_bytes()
    with Image.open(path) as image:
        return encoded(np.asarray(image), size, label)


def encoded(array: np.ndarray, size: tuple[int, int] | None, label: bool) -> bytes:
    """PNG bytes of an array, resized to (height, width) when asked (labels nearest, photos Lanczos)."""
    image = Image.fromarray(array)
    if size is not None:
        resample = Image.Resampling.NEAREST if label else Image.Resampling.LANCZOS
        image = image.resize((size[1], size[0]), resample)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def rows(samples: Path, manifest: dict[str, Any], size: tuple[int, int] | None,
         label_filter: LabelFilter | None = None) -> Iterator[dict[str, Any]]:
    """One row per image: the image, its label (filtered per image with `label_filter`), where it came from."""
    sampler = manifest["settings"]["sampler"]
    expected = tuple(int(v) for v in manifest["settings"]["size"])
    for item in manifest["items"]:
        label_path = samples / item["label"]
        if not label_path.is_file():
            raise DataError(f"{label_path} is listed in {MANIFEST} but missing")
        label = png_bytes(label_path, expected, size, label=True)
        if len(item["images"]) != len(item["sample_seeds"]):
            raise DataError(f"{samples / MANIFEST}: mask {item['mask']!r} lists {len(item['images'])} images but "
                            f"{len(item['sample_seeds'])} seeds; the manifest was edited or damaged")
        for image in item["images"]:
            if not (samples / image).is_file():
                raise DataError(f"{samples / image} is listed in {MANIFEST} but missing")
        labels, shares = [label] * len(item["images"]), [0.0] * len(item["images"])
        if label_filter is not None:  # the mask's images in one pass of the filter's segmenter
            ids = read_array(label_path)
            photos = np.stack([read_array(checked(samples / image, expected)) for image in item["images"]])
            filtered = label_filter(photos, np.broadcast_to(ids, (len(photos), *ids.shape)))
            unlabeled = label_filter.unlabeled
            labelled = max(1, int((ids != unlabeled).sum()))
            labels = [encoded(f, size, label=True) for f in filtered]
            shares = [float(((f == unlabeled) & (ids != unlabeled)).sum()) / labelled for f in filtered]
        for k, (image, seed) in enumerate(zip(item["images"], item["sample_seeds"], strict=True)):
            yield {"pixel_values": {"bytes": png_bytes(samples / image, expected, size, label=False)},
                   "label": {"bytes": labels[k]}, "source_mask": str(item["mask"]), "sample_index": k,
                   "seed": int(seed), "sampler": str(sampler["name"]), "num_steps": int(sampler["num_steps"]),
                   "guidance_scale": float(sampler["guidance_scale"]), "filtered_share": shares[k]}


def dataset_card(manifest: dict[str, Any], num_rows: int, size: tuple[int, int] | None,
                 filtered: dict[str, Any] | None = None) -> str:
    s = manifest["settings"]
    sampler = s["sampler"]
    shape = f"{size[1]}x{size[0]}" if size else f"{s['size'][1]}x{s['size'][0]} (the model's training size)"
    train_data = manifest.get("train_data") or {}
    table = class_table(train_data)
    sidewalk = table.name == "sidewalk"
    schema = ("the schema of `segments/sidewalk-semantic`" if sidewalk
              else "the schema `segments/sidewalk-semantic` uses on the Hub")
    unlabeled = "no ignore id" if table.ignore is None else f"{table.ignore}, {table.names[table.ignore]}"
    licence = ("Licence: the model was trained on `segments/sidewalk-semantic`, which is released under\n"
               "CC BY-NC 4.0; these images derive from it and are shared under the same terms (attribution,\n"
               "non-commercial use only)." if sidewalk else
               f"Licence: these images derive from the model's training data (`{train_data.get('path', '?')}`);\n"
               "its licence applies to them. Set the card's `license` field to it before sharing.")
    return f"""---
license: {'cc-by-nc-4.0' if sidewalk else 'other'}
task_categories:
- image-segmentation
tags:
- synthetic
- semantic-image-synthesis
pretty_name: Synthetic {table.name} scenes (sdm)
---

# Synthetic {table.name} scenes

{num_rows} images generated by sdm (Semantic Image Synthesis via Diffusion Models,
Wang et al. 2022) from {len(manifest['items'])} label maps, {per_map(manifest)} per map, each with the
label map it was generated from. Images are {shape}.

Columns: `pixel_values` (Image, RGB) and `label` (Image, mode L, class ids 0..{table.num_classes - 1} of the
`{table.name}` class table below), {schema}, plus `source_mask` (the label map's name), `sample_index`, `seed`
(sample k of a mask is drawn from `torch.Generator().manual_seed(seed)`), `sampler`, `num_steps` and
`guidance_scale`, and `filtered_share` (the share of the image's labelled pixels the noisy-pixel
filter set to the ignore id, {unlabeled}).
{filter_text(filtered, table.ignore)}
How it was made: weights `{manifest['weights'].get('file')}` (run `{manifest['weights'].get('run')}`),
sampler {sampler['name']} with {sampler['num_steps']} steps, classifier-free guidance
s = {sampler['guidance_scale']}, precision {s['precision']}, masks from `{s['masks']}`.

Classes (id: name): {", ".join(f"{i}: {name}" for i, name in enumerate(table.names))}.

{licence}
"""


def per_map(manifest: dict[str, Any]) -> str:
    """Images per label map: one number, or the range that hardness re-sampling spread them over."""
    counts = [len(item["images"]) for item in manifest["items"]] or [manifest["num_per_mask"]]
    return str(counts[0]) if min(counts) == max(counts) else f"{min(counts)} to {max(counts)} (by hardness)"


def filter_text(filtered: dict[str, Any] | None, unlabeled: int | None = 0) -> str:
    if filtered is None:
        return "\nLabels are the masks the images were generated from, unfiltered.\n"
    return (f"\nLabels are filtered: a pixel whose cross-entropy under the segmenter `{filtered['segmenter']}` "
            f"(trained on the real rows) exceeds {filtered['tolerance']:g} x the mean of its class on the real "
            f"training pixels is set to {unlabeled} (unlabeled); on average {filtered['mean_filtered_share']:.1%} of "
            "an image's labelled pixels.\n")


def export_dataset(samples: str | Path, out_dir: str | Path | None = None, *, size: tuple[int, int] | None = None,
                   rows_per_shard: int = ROWS_PER_SHARD, setting: str = "--out",
                   pixel_filter: PixelFilter | None = None) -> Path:
    """Write `samples` (a finished sample.py folder) as parquet shards + a dataset card; returns the folder.
    `setting` names the output folder in messages as the user wrote it (`--out`, `export_dir`);
    `pixel_filter` unlabels the pixels a segmenter of the real rows finds wrong (sdm.generation.filtering)."""
    import datasets

    samples = Path(samples).expanduser()
    out = check_output_folder(Path(out_dir).expanduser() if out_dir else samples / "hf", setting)
    if rows_per_shard < 1:
        raise DataError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DataError(f"export size must be (height, width) >= 1, got {size}")
    if out.exists() and not (out / MARKER).is_file():
        raise DataError(f"export folder {out} exists and is not an sdm export; choose another one")
    manifest = read_finished_manifest(samples)
    label_filter = None
    if pixel_filter is not None:  # its segmenter is checked and measured before any row is written
        label_filter = prepare_filter(pixel_filter, manifest["train_data"], tuple(manifest["settings"]["size"]))
        print(f"filtering labels with {label_filter.folder} (tolerance {label_filter.tolerance:g} x each class's mean "
              "loss on the real training rows)")
    remove_leftovers(out.parent, "tmp", out.name)  # of exports killed on this host
    tmp = temporary_name(out, "tmp")
    try:
        all_rows = list(rows(samples, manifest, size, label_filter))
        if not all_rows:
            raise DataError(f"{samples / MANIFEST} lists no images")
        shards = [all_rows[i : i + rows_per_shard] for i in range(0, len(all_rows), rows_per_shard)]
        (tmp / "data").mkdir(parents=True)
        for index, shard in enumerate(shards):
            columns = {name: [row[name] for row in shard] for name in shard[0]}
            table = datasets.Dataset.from_dict(columns, features=features())
            table.to_parquet(str(tmp / "data" / f"train-{index:05d}-of-{len(shards):05d}.parquet"))
        filtered = None if label_filter is None else {
            "segmenter": str(label_filter.folder), "tolerance": label_filter.tolerance,
            "mean_filtered_share": sum(row["filtered_share"] for row in all_rows) / len(all_rows)}
        (tmp / "README.md").write_text(dataset_card(manifest, len(all_rows), size, filtered))
        (tmp / MARKER).write_text(json.dumps({"samples": str(samples), "rows": len(all_rows), "shards": len(shards),
                                              "size": list(size) if size else None, "filter": filtered}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as err:  # pyarrow and fsspec report a full disk as OSError from deep inside
        raise WriteError(f"the export to {out} failed: {describe_write_failure(tmp / 'data' / 'train.parquet', err)}"
                         ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {len(all_rows)} images in {len(shards)} parquet shard(s) to {out} "
          f"(train on it: python train.py data=sidewalk data.path={out})")
    return out
