"""The commands, one module each, as console scripts (`sdm-train`, `sdm-sample`, ...) and `python -m sdm.cli.<name>`."""
