"""Data throughput on this machine.

    python experiments/bench_data.py    # writes experiments/results_data.md

Rows: scenes generated per second (one core, 256 and 1024), preparation rows per second for
1920x1080 inputs in the Hub schema (decode, validate, resize, write Arrow) to 256 and 1024,
and DataLoader batches per second (augmentation included) at 256 and 1024.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import REPO, machine, markdown_table  # noqa: E402


def scenes_per_second(size: int, seconds: float = 6.0) -> float:
    from sdm.data.scenes import generate_scene

    torch.set_num_threads(1)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 3:
        generate_scene(n, size, size)
        n += 1
    return n / (time.perf_counter() - start)


def hub_folder(root: Path, rows: int) -> Path:
    """Real-looking 1920x1080 rows (generated scenes, PNG-encoded) in the Hub schema."""
    from helpers.rows import hub_row, write_hub_parquet

    from sdm.data.scenes import generate_scene

    return write_hub_parquet(root, [hub_row(*generate_scene(i, 1080, 1920)) for i in range(rows)])


def data_cfg(root: Path, folder: Path, size: int, workers: int):
    cfg = OmegaConf.load(REPO / "conf" / "data" / "sidewalk.yaml")
    cfg.update({"path": str(folder), "size": [size, size], "cache_dir": str(root / "cache"),
                "hub_cache_dir": str(root / "hf"), "batch_size": 2 if size >= 1024 else 8,
                "num_workers": workers, "val_fraction": 0.0, "pin_memory": False})
    return cfg


def main() -> None:
    from sdm.data.datamodule import SidewalkDataModule
    from sdm.data.prepare import prepare_data

    rows = []
    for size in (256, 1024):
        rows.append({"measure": f"scenes generated ({size}x{size}, 1 core)", "rate": f"{scenes_per_second(size):.1f} scenes/s"})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = hub_folder(root / "hub", 24)
        for size in (256, 1024):
            cfg = data_cfg(root, folder, size, workers=2)
            start = time.perf_counter()
            prepared = prepare_data(cfg, show_progress=False)
            rate = prepared.info["rows"] / (time.perf_counter() - start)
            rows.append({"measure": f"prepare 1920x1080 -> {size}x{size} (crop)", "rate": f"{rate:.1f} rows/s"})
            print(rows[-1], flush=True)
            dm = SidewalkDataModule(cfg)
            dm.setup("fit")
            for _ in range(2):  # the first pass pays the worker start; time the second
                loader = dm.train_dataloader()
                start, n = time.perf_counter(), 0
                for batch in loader:
                    n += 1
                    shape = tuple(batch["image"].shape)
                elapsed = time.perf_counter() - start
            rows.append({"measure": f"DataLoader {size}x{size}, batch {shape[0]}, 2 workers, augmented",
                         "rate": f"{n / elapsed:.1f} batches/s ({n * shape[0] / elapsed:.0f} img/s)"})
            print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    out = REPO / "experiments" / "results_data.md"
    out.write_text(f"# Data throughput\n\nMachine: {machine()}.\n\n{table}\n\n"
                   f"Inputs: 24 generated 1920x1080 street scenes PNG-encoded in the Hub schema "
                   f"(pixel_values, label), read back through `datasets.load_dataset`.\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
