"""`sdm-convert <checkpoint.pt> dataset=ade20k|coco|celeba [key=value ...]`: one of the paper authors'
published checkpoints as this project's export (ema.safetensors + config.yaml).

Its key=value flags are the official scripts' names (image_size, num_classes, no_instance ...),
parsed by sdm.checkpoint.official.convert rather than composed by Hydra: they describe a foreign
checkpoint, not a config of this project.
"""

from __future__ import annotations

import sys

from sdm.checkpoint.official.convert import __doc__ as USAGE
from sdm.checkpoint.official.convert import parse_args, run
from sdm.core.exits import exit_on_sdm_error


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    run(parse_args(argv))


if __name__ == "__main__":
    main()
