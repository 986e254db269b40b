"""`sdm-push <folder> --repo <user>/<name> [--private] [--dry-run]`: an export, a pipeline folder or a
synthetic dataset (sdm-export) to the Hugging Face Hub, with its card.

An argparse command, not a Hydra app: one folder, one repository, nothing to compose.
"""

from __future__ import annotations

import argparse

from sdm.core.exits import exit_on_sdm_error
from sdm.pipelines.push import push


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an export, a pipeline folder (sdm-diffusers) or an sdm-export dataset")
    parser.add_argument("--repo", required=True, help="the Hub repository, <user or organisation>/<name>")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    args = parser.parse_args(argv)
    print(push(args.folder, args.repo, args.private, args.dry_run))


if __name__ == "__main__":
    main()
