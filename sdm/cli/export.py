"""`sdm-export <samples folder> [--out DIR] [--size H W]`: a finished sample.py folder as a dataset in
the Hub schema of segments/sidewalk-semantic (parquet shards and a dataset card).

An argparse command, not a Hydra app: it takes one folder and writes beside it, with no
config to compose (`sample.py export=true` is the Hydra way to the same export).
"""

from __future__ import annotations

import argparse

from sdm.core.exits import exit_on_sdm_error
from sdm.generation.export import ROWS_PER_SHARD, export_dataset
from sdm.generation.filtering import DEFAULT_TOLERANCE, PixelFilter


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="a finished sample.py output folder")
    parser.add_argument("--out", help="export folder (default: <samples>/hf)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize (labels nearest)")
    parser.add_argument("--rows-per-shard", type=int, default=ROWS_PER_SHARD)
    parser.add_argument("--filter", metavar="SEGMENTER", help="unlabel the pixels a segmenter of the real rows finds "
                        "wrong: `auto` (the run's cached default segmenter) or a segmenter folder")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="with --filter: unlabel a pixel whose loss exceeds this x its class's mean real loss")
    args = parser.parse_args(argv)
    pixel_filter = PixelFilter(args.filter, args.tolerance) if args.filter else None
    export_dataset(args.samples, args.out, size=tuple(args.size) if args.size else None,
                   rows_per_shard=args.rows_per_shard, pixel_filter=pixel_filter)


if __name__ == "__main__":
    main()
