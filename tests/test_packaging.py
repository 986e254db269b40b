"""A non-editable install carries the configs and the commands: the wheel holds sdm/conf, and an
installed sdm composes its configs from there, not from a clone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_wheel_carries_the_configs_and_an_installed_sdm_uses_them(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("sdm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"sdm/{name}" for name in shipped} <= names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sdm-train = sdm.cli.train:main" in entry_points and "sdm-evaluate = sdm.cli.evaluate:main" in entry_points

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    code = ("import sdm.core.configs as c; from sdm.training.fit import register_resolvers; register_resolvers(); "
            "cfg = c.compose('train', ['experiment=quickstart', 'debug=fast']); "
            "print(c.CONFIG_DIR.resolve(), cfg.trainer.max_steps)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-2000:]
    config_dir, steps = done.stdout.split()
    assert Path(config_dir) == (site / "sdm" / "conf").resolve() and steps == "8"
