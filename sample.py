"""Generate images from masks (conf/sample.yaml): a shim for `python sample.py weights=runs/<run>` from a clone; the command lives in sdm/cli/sample.py (`sdm-sample`)."""

from sdm.cli.sample import main

if __name__ == "__main__":
    main()
