"""`sdm-weights download|check [--dir DIR]`: fetch or check the pretrained weights FID/KID and LPIPS need,
on a machine with internet, for clusters without it.

An argparse command, not a Hydra app: two verbs and a folder, no config to compose.
"""

from __future__ import annotations

import argparse

from sdm.core.exits import exit_on_sdm_error
from sdm.metrics.weights import WEIGHT_FILES, download, missing_message, weight_path


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch or check the metric weights (FID/KID, LPIPS).")
    parser.add_argument("command", choices=["download", "check"])
    parser.add_argument("--dir", default=None, help="a torch hub folder (files go to <dir>/checkpoints; default: torch's own)")
    args = parser.parse_args(argv)
    if args.command == "download":
        for path in download(args.dir):
            print(f"ok {path}")
        if args.dir:
            print(f"use it with evaluation.weights_dir={args.dir}")
        return
    problems = [m for m in (missing_message(n, args.dir) for n in WEIGHT_FILES) if m]
    for name in WEIGHT_FILES:
        print(f"{'ok     ' if weight_path(name, args.dir).is_file() else 'missing'} {weight_path(name, args.dir)}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
