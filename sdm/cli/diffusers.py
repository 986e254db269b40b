"""`sdm-diffusers <weights> [--out DIR] [--sampler NAME]`: a run's weights (a run folder, its export,
a checkpoint or a converted official model) as a diffusers pipeline folder, for
`SDMPipeline.from_pretrained(DIR)`.

An argparse command, not a Hydra app: it reads one set of weights and writes one folder, with no
config to compose.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdm.core.exits import exit_on_sdm_error
from sdm.diffusion.sampling import SAMPLERS
from sdm.pipelines.save import save_pipeline


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a run folder, an export folder, a .ckpt or a converted official export")
    parser.add_argument("--out", help="the pipeline folder (default: <weights>/pipeline)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), help="the scheduler (default: the run's sampler)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    weights = Path(args.weights).expanduser()
    out = Path(args.out) if args.out else (weights if weights.is_dir() else weights.parent) / "pipeline"
    folder = save_pipeline(weights, out, args.sampler, args.overwrite)
    print(f"pipeline: {folder}\n  from sdm.pipelines import SDMPipeline\n"
          f"  images = SDMPipeline.from_pretrained('{folder}')(label_map, num_images_per_mask=5).images")


if __name__ == "__main__":
    main()
