"""The configs tests train with: conf/debug/fast.yaml on the quickstart."""

from __future__ import annotations

from pathlib import Path

FAST_TRAIN = ["experiment=quickstart", "debug=fast"]  # conf/debug/fast.yaml


def compose_train(output_dir, *overrides: str, cache_dir=None):
    """The train config as `python train.py` would compose it, writing under output_dir."""
    from sdm.core.configs import compose
    from sdm.training.fit import register_resolvers

    register_resolvers()
    cfg = compose("train", [*FAST_TRAIN, *overrides])
    cfg.output_dir = str(output_dir)
    cfg.data.cache_dir = str(cache_dir or (Path(output_dir).parent / "data-cache"))
    return cfg
