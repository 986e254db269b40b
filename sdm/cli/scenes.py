"""`sdm-scenes --num 16 --size 256 --out DIR`: a grid PNG of embedded street scenes, to look at them.

An argparse command, not a Hydra app: a picture for people, no run to configure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdm.core.exits import exit_on_sdm_error
from sdm.core.places import check_output_folder
from sdm.core.viz import save_png
from sdm.data.scenes.sets import scene_grid


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    """CLI: write a grid PNG of generated scenes (images above their coloured masks)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="square size, or use --height/--width")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("."), help="directory for scenes_grid.png")
    args = ap.parse_args(argv)
    height, width = args.height or args.size, args.width or args.size
    out = check_output_folder(args.out, "--out")
    grid = scene_grid(args.num, height, width, args.seed, args.cols)
    path = out / "scenes_grid.png"
    save_png(grid, path)
    print(f"wrote {path} ({args.num} scenes)")


if __name__ == "__main__":
    main()
