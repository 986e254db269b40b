"""Train SDM (conf/train.yaml): a shim for `python train.py experiment=quickstart` from a clone; the command lives in sdm/cli/train.py (`sdm-train`)."""

from sdm.cli.train import main

if __name__ == "__main__":
    main()
