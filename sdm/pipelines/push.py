"""Upload an export, a pipeline folder or a synthetic dataset to the Hugging Face Hub.

What goes up is checked first: a model folder needs its weights and its card, a dataset folder its
parquet shards and its card. Where the Hub cannot be reached, one line says so and where the
folder waits; nothing is half-uploaded by this command (huggingface_hub commits a folder at once).
"""

from __future__ import annotations

from pathlib import Path

from sdm.checkpoint.card import CARD
from sdm.checkpoint.files import EXPORT_CONFIG, EXPORT_WEIGHTS
from sdm.core.errors import ConfigError, DataError

SKIPPED = (".", "__pycache__")  # hidden files (temporaries of killed writes) and caches stay home


def upload_plan(folder: str | Path) -> tuple[str, list[Path]]:
    """(repo type, the files that would be uploaded) of a folder sdm wrote; DataError naming what is
    missing for any other folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(SKIPPED) for part in p.relative_to(folder).parts))
    names = {p.relative_to(folder).as_posix() for p in files}
    if "model_index.json" in names or EXPORT_WEIGHTS in names:
        kind = "model"
        if EXPORT_WEIGHTS in names and EXPORT_CONFIG not in names:
            raise DataError(f"{folder}: {EXPORT_WEIGHTS} without {EXPORT_CONFIG}; push a whole export")
    elif any(n.startswith("data/") and n.endswith(".parquet") for n in names):
        kind = "dataset"
    else:
        raise DataError(f"{folder}: neither a model (an export with {EXPORT_WEIGHTS}, or a pipeline folder with "
                        f"model_index.json) nor a dataset (data/*.parquet, as sdm-export writes)")
    if CARD not in names:
        raise DataError(f"{folder}: no {CARD}; the Hub shows the card first (sdm writes one with every export)")
    return kind, files


def push(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> str:
    """Upload `folder` to `repo_id`; returns its URL (or, with dry_run, the plan as text)."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo {repo_id!r}: expected <user or organisation>/<name>")
    kind, files = upload_plan(folder)
    if dry_run:
        return f"would upload {len(files)} files to the {kind} repo {repo_id}:\n" + "\n".join(
            f"  {p.relative_to(Path(folder).expanduser())}" for p in files)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=kind,
                                 ignore_patterns=[".*", "**/.*", "**/__pycache__/**"])
    except Exception as err:  # offline, no token, no rights: huggingface_hub raises many types
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DataError(f"cannot push to the Hub ({type(err).__name__}: {first}); the {kind} waits in {folder}: "
                        f"log in (huggingface-cli login) and run the same command again") from None
    return str(getattr(info, "commit_url", info))
