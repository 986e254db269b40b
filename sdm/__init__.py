"""sdm: semantic image synthesis with diffusion models, to grow segmentation datasets.

Packages, each importing only from those below it (checked by `make lint`):
cli > cluster > training > generation | metrics > segmenter > checkpoint > diffusion | models > data > core.
"""

import os

# albumentations asks the network for a newer version when it is imported: never here (offline clusters)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
