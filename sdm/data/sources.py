"""Where rows come from: a Hub dataset (or a local copy in its schema), a folder of image and
label files, or generated scenes.

Every source returns a `datasets.Dataset` (or `IterableDataset` when streaming) with the
columns ``pixel_values`` and ``label`` left undecoded, so that `sdm.data.rows` decodes and
checks each row itself and can name the row that is broken. `data.name` picks the source:
`sidewalk` and `hub` read the Hub (sidewalk is the hub source with its own id and columns),
`folder` a folder (sdm.data.folders), `scenes` the embedded street scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from datasets import Image as ImageFeature

from sdm.core.errors import ConfigError, DataError
from sdm.data.folders import folder_fingerprint, load_folder
from sdm.data.rows import parse_size
from sdm.data.scenes import scenes_dataset

HUB_ID = "segments/sidewalk-semantic"
COLUMNS = ("pixel_values", "label")
INSTANCE = "instance"  # optional: instance ids, the edge channel's source (Cityscapes, COCO-Stuff folders)
SCENES_VERSION = 1  # bump when the generator changes what a seed draws, to refresh caches


def hub_help(path: str, err: BaseException) -> str:
    """The message for a Hub dataset that cannot be loaded (gated, offline, misspelt)."""
    return (
        f"cannot load the Hub dataset '{path}': {type(err).__name__}: {str(err).splitlines()[0][:300]}\n"
        "  - the dataset is gated: accept its terms on the Hub page, then `huggingface-cli login` or "
        "export HF_TOKEN=<your token>;\n"
        "  - without network, point at a local copy in the same schema: data.path=/path/to/folder "
        "(a folder with data/*.parquet, as `snapshot_download` leaves it) or data.path=/path/*.parquet "
        "(export HF_HUB_OFFLINE=1 to skip the connection retries);\n"
        "  - or try the whole pipeline offline on generated street scenes: data=scenes"
    )


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists() or "*" in path


def load_sidewalk(
    path: str = HUB_ID,
    *,
    revision: str | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
    setting: str = "data.path",
    columns: tuple[str, str] = COLUMNS,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load a Hub dataset (sidewalk by default) by Hub id, local folder, or parquet file(s), its
    image and label `columns` renamed to the Hub schema's. `setting` is the key the user wrote the
    path in (data.path, data.extra, mask_source.path), for the messages."""
    kwargs: dict[str, Any] = {"split": split, "streaming": streaming, "cache_dir": cache_dir}
    try:
        if _is_local(path):
            local = Path(path).expanduser()
            if local.is_dir():
                ds = datasets.load_dataset(str(local), **kwargs)
            elif local.suffix == ".parquet" or "*" in path:
                if "*" not in path and not local.exists():
                    raise DataError(f"{setting} '{path}' does not exist")
                kwargs["split"] = "train"  # data_files without a split name land in 'train'
                ds = datasets.load_dataset("parquet", data_files=str(local), **kwargs)
            else:
                raise DataError(
                    f"{setting} '{path}' is neither a folder nor a .parquet file (or glob); "
                    f"give a local copy in the Hub schema or the Hub id '{HUB_ID}'"
                )
        else:
            ds = datasets.load_dataset(path, revision=revision, **kwargs)
    except DataError:
        raise
    except Exception as err:  # the Hub and fsspec raise many types for the same problem
        if _is_local(path):
            raise DataError(f"{setting}: cannot read the local dataset at '{path}': {err}") from err
        raise DataError(hub_help(path, err)) from err
    return undecoded(ds, origin=path, columns=columns)


def undecoded(
    ds: datasets.Dataset | datasets.IterableDataset, origin: str, columns: tuple[str, str] = COLUMNS
) -> datasets.Dataset | datasets.IterableDataset:
    """Check the schema, rename the image and label `columns` to the Hub schema's, and turn off
    decoding of both."""
    # some streamed datasets only know their columns after one row
    names = list(ds.features) if ds.features is not None else list(next(iter(ds), {}).keys())
    missing = [c for c in columns if c not in names]
    if missing:
        hint = (f"the schema of {HUB_ID}: 'pixel_values' (Image, RGB) and 'label' (Image, mode L, ids 0..34)"
                if tuple(columns) == COLUMNS else f"the columns data.image_column={columns[0]!r} and "
                f"data.label_column={columns[1]!r}")
        raise DataError(f"{origin}: wrong columns: missing {missing}; found {names}. Expected {hint}; name the "
                        f"dataset's own with data.image_column and data.label_column")
    for column in columns:
        if ds.features is not None and not isinstance(ds.features[column], ImageFeature):
            raise DataError(
                f"{origin}: column '{column}' has type {ds.features[column]!r}; expected datasets.Image()"
            )
        ds = ds.cast_column(column, ImageFeature(decode=False))
    if INSTANCE in names and ds.features is not None and isinstance(ds.features[INSTANCE], ImageFeature):
        ds = ds.cast_column(INSTANCE, ImageFeature(decode=False))
    extra = [c for c in names if c not in (*columns, INSTANCE)]
    ds = ds.remove_columns(extra) if extra else ds
    renames = {old: new for old, new in zip(columns, COLUMNS, strict=True) if old != new}
    return ds.rename_columns(renames) if renames else ds


def load_scenes(num: int, height: int, width: int, seed: int = 0) -> datasets.Dataset:
    """The embedded street scenes, in the Hub schema, so everything downstream is shared."""
    if num < 1:
        raise DataError(f"data.scenes.num must be at least 1, got {num}")
    return undecoded(scenes_dataset(num, height, width, seed=seed, show_progress=True), "scenes")


SOURCES = ("sidewalk", "hub", "folder", "scenes")  # the data.name values this project can load and prepare


def load_source(cfg: Any) -> datasets.Dataset | datasets.IterableDataset:
    """Rows for the configured `data` group (`cfg.name` is one of SOURCES)."""
    if cfg.name == "scenes":
        height, width = parse_size(cfg.scenes.get("size") or cfg.size)
        return load_scenes(cfg.scenes.num, height, width, cfg.scenes.seed)
    if cfg.name in ("sidewalk", "hub"):
        return load_sidewalk(
            cfg.path,
            revision=cfg.get("revision"),
            split=cfg.get("split", "train"),
            streaming=bool(cfg.get("streaming", False)),
            cache_dir=cfg.get("hub_cache_dir"),
            setting=str(cfg.get("path_setting") or "data.path"),
            columns=(str(cfg.get("image_column") or COLUMNS[0]), str(cfg.get("label_column") or COLUMNS[1])),
        )
    if cfg.name == "folder":
        if bool(cfg.get("streaming", False)):
            raise ConfigError("data.streaming=true reads the Hub; a folder source is prepared once instead")
        return load_folder(str(cfg.path), str(cfg.get("layout") or "auto"), str(cfg.get("split", "train")),
                           str(cfg.get("on_bad_row", "error")))
    raise DataError(f"unknown data source data.name={cfg.name!r}; expected one of {list(SOURCES)}")


def source_key(cfg: Any, ds: datasets.Dataset | datasets.IterableDataset | None) -> str:
    """A short, readable cache key for the rows the source yields (`ds` unused for scenes)."""
    if cfg.name == "scenes":
        height, width = parse_size(cfg.scenes.get("size") or cfg.size)
        return f"scenes-v{SCENES_VERSION}-n{cfg.scenes.num}-s{cfg.scenes.seed}-{height}x{width}"
    if cfg.name == "folder":
        name = Path(str(cfg.path)).expanduser().resolve().name or "folder"
        fingerprint = folder_fingerprint(str(cfg.path), str(cfg.get("layout") or "auto"), str(cfg.get("split", "train")))
        return f"{name}-{cfg.get('split', 'train')}-{fingerprint}"
    name = Path(str(cfg.path).rstrip("/*")).name or "sidewalk"
    fingerprint = getattr(ds, "_fingerprint", None) or f"{cfg.path}@{cfg.get('revision')}"
    return f"{name}-{cfg.get('split', 'train')}-{datasets.fingerprint.Hasher.hash(fingerprint)[:10]}"


def overlay_source(data: Any, overrides: dict[str, Any], what: str) -> Any:
    """Data settings laid over a run's, to read another source at the run's size (masks to generate
    from, a held-out test set). Naming a `path` makes it a Hub-schema source, naming `scenes`
    the embedded scenes, unless `name` says otherwise; synthetic rows (`extra`) never come along."""
    from omegaconf import OmegaConf

    if not isinstance(overrides, dict):
        raise ConfigError(f"{what}={overrides!r}: expected data settings laid over the run's, e.g. "
                          f"'{what}={{path:/data/test_parquet}}' or '{what}={{scenes:{{seed:1}}}}'")
    overrides = dict(overrides)
    if "size" in overrides:
        raise ConfigError(f"{what}.size={overrides['size']}: this source is read at the model's size "
                          f"{list(parse_size(data['size']))}; leave size out")
    if "name" not in overrides and "path" in overrides:  # a path of the run's own kind, else a Hub-schema copy
        overrides["name"] = data["name"] if data.get("name") in ("sidewalk", "hub", "folder") else "sidewalk"
    elif "name" not in overrides and "scenes" in overrides:
        overrides["name"] = "scenes"
    plain = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    if overrides.get("name") in ("sidewalk", "hub", "folder") and "path" in overrides and str(overrides["path"]) != HUB_ID:
        path = Path(str(overrides["path"])).expanduser()
        overrides["path"] = str(path.resolve()) if path.exists() else str(overrides["path"])
    merged = OmegaConf.merge(OmegaConf.create(plain), overrides)
    merged.extra = None
    merged.path_setting = f"{what}.path"  # messages name the key the user wrote
    if merged.name == "scenes" and not OmegaConf.select(merged, "scenes.num"):
        raise ConfigError(f"{what} names the embedded scenes without a count: add scenes.num, e.g. "
                          f"'{what}={{scenes:{{num:500,seed:1}}}}'")
    return merged
