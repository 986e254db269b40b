"""A non-editable install carries the configs and the commands: the wheel holds sdm/conf, and an
installed sdm composes its configs from there, not from a clone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
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


def test_a_wheel_in_a_fresh_venv_samples_with_the_cli_and_the_pipeline(tmp_path: Path) -> None:
    """The install users make: a non-editable wheel in a new venv (its dependencies are this
    environment's, made visible with a .pth, so nothing is downloaded), used from another folder."""
    import sysconfig

    import torch
    from helpers.configs import compose_train
    from omegaconf import OmegaConf
    from PIL import Image

    from sdm.checkpoint.files import EXPORT_DIR, export_ema
    from sdm.training.module import SDMModule

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    (Path(own_site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after its own packages
    wheel = next((tmp_path / "dist").glob("sdm-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)

    cfg = compose_train(tmp_path / "train", "data.size=[16,16]")  # a tiny export, made here
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = SDMModule(plain)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_ema(module.ema.module.state_dict(), plain, tmp_path / "run" / EXPORT_DIR)
    (tmp_path / "masks").mkdir()
    Image.fromarray(((np.arange(16)[None, :] // 4) * 7 % 35).repeat(16, 0).astype(np.uint8)).save(
        tmp_path / "masks" / "m.png")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sample = subprocess.run([venv / "bin" / "sdm-sample", f"weights={tmp_path / 'run'}", f"masks={tmp_path / 'masks'}",
                             f"out_dir={tmp_path / 'samples'}", "sampler=ddim", "sampler.num_steps=2", "num_per_mask=1",
                             "precision=fp32", "device=cpu"], cwd=work, env=env, capture_output=True, text=True)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert (tmp_path / "samples" / "images" / "m_0.png").is_file()
    converted = subprocess.run([venv / "bin" / "sdm-diffusers", str(tmp_path / "run"), "--out", str(tmp_path / "pipe")],
                               cwd=work, env=env, capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr[-2000:]
    code = ("import sdm, numpy as np; from sdm.pipelines import SDMPipeline; "
            f"pipe = SDMPipeline.from_pretrained({str(tmp_path / 'pipe')!r}); "
            "image = pipe(np.zeros((16, 16), np.uint8), num_inference_steps=2).images[0]; "
            "print(sdm.__file__, image.size)")
    done = subprocess.run([python, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    where, size = done.stdout.strip().split(" ", 1)
    assert where.startswith(str(venv)) and size == "(16, 16)"  # the wheel's sdm, not the clone's
