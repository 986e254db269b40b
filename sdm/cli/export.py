"""`sdm-export <samples folder> [--out DIR] [--size H W]`: a finished sample.py folder as a dataset in
the Hub schema of segments/sidewalk-semantic (parquet shards and a dataset card).

An argparse command, not a Hydra app: it takes one folder and writes beside it, with no
config to compose (`sample.py export=true` is the Hydra way to the same export).
"""

from __future__ import annotations

import argparse

from sdm.core.exits import exit_on_sdm_error
from sdm.generation.export import ROWS_PER_SHARD, export_dataset


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="a finished sample.py output folder")
    parser.add_argument("--out", help="export folder (default: <samples>/hf)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize (labels nearest)")
    parser.add_argument("--rows-per-shard", type=int, default=ROWS_PER_SHARD)
    args = parser.parse_args(argv)
    export_dataset(args.samples, args.out, size=tuple(args.size) if args.size else None,
                   rows_per_shard=args.rows_per_shard)


if __name__ == "__main__":
    main()
