"""Generation: EMA weights + masks -> sample PNGs, comparison grids and a manifest (sample.py).

masks (what to generate from) -> weights (the EMA U-Net) -> run (batches through the sampler)
-> layout (files, seeds, manifest) and grids. Nothing here imports the LightningModule.
"""

from sdm.generation.command import generate
from sdm.generation.layout import default_out_dir, run_dir_of, sample_seed
from sdm.generation.masks import Mask, folder_masks, load_masks, read_mask, val_masks
from sdm.generation.settings import check_settings
from sdm.generation.weights import Model, load_model, weights_fingerprint

__all__ = [
    "Mask", "Model", "check_settings", "default_out_dir", "folder_masks", "generate", "load_masks", "load_model",
    "read_mask", "run_dir_of", "sample_seed", "val_masks", "weights_fingerprint",
]
