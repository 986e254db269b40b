"""The model card beside every export (front matter the Hub reads, the evaluation's own numbers) and
the push command (what it would upload, one line where the Hub cannot be reached)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers.configs import compose_train
from helpers.evaluation import oracle
from helpers.generation import SIZE, bands, mask_folder, sample_cfg
from omegaconf import OmegaConf
from PIL import Image

from sdm.checkpoint.card import CARD, SAMPLES, model_card, write_model_card
from sdm.checkpoint.files import EXPORT_DIR, export_ema
from sdm.cli.push import main as push_cli
from sdm.core.configs import compose
from sdm.core.errors import ConfigError, DataError
from sdm.data.classes import colorize
from sdm.generation import generate
from sdm.metrics.evaluation import evaluate_set
from sdm.metrics.image_sets import from_sample_folder
from sdm.pipelines.push import push, upload_plan
from sdm.pipelines.save import save_pipeline
from sdm.training.module import SDMModule


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def export(tmp_path):
    cfg = compose_train(tmp_path / "run", f"data.size=[{SIZE},{SIZE}]", "data.scenes.num=12")
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = SDMModule(plain)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / "run" / EXPORT_DIR
    export_ema(module.ema.module.state_dict(), plain, folder)
    write_model_card(folder, plain)
    return folder, plain


def test_the_card_s_front_matter_is_what_the_hub_reads(export):
    folder, config = export
    matter = front_matter((folder / CARD).read_text())
    assert matter["library_name"] == "diffusers" and matter["pipeline_tag"] == "image-to-image"
    assert matter["license"] == "mit" and "semantic-image-synthesis" in matter["tags"]  # the scenes are sdm's own
    assert "model-index" not in matter  # no evaluation yet: no numbers
    sidewalk = {**config, "data": {**config["data"], "name": "sidewalk", "path": "segments/sidewalk-semantic"}}
    matter = front_matter(model_card(sidewalk))
    assert matter["license"] == "cc-by-nc-4.0" and matter["datasets"] == ["segments/sidewalk-semantic"]
    assert "CC BY-NC 4.0" in model_card(sidewalk) and f"- {config['trainer']['max_steps']} steps, batch" in model_card(sidewalk)


def test_an_evaluation_writes_its_numbers_and_a_picture_on_the_card(export, tmp_path):
    folder, _ = export
    labels = {f"m{i}": bands(SIZE, SIZE, (1 + i, 2 + i, 10)) for i in range(3)}
    masks = mask_folder(tmp_path, labels)
    (masks.parent / "images").mkdir()
    for name, label in labels.items():  # real photos: the calibration picture
        Image.fromarray(colorize(label)).save(masks.parent / "images" / f"{name}.png")
    out = tmp_path / "samples"
    generate(sample_cfg(f"weights={folder}", f"masks={masks}", f"out_dir={out}"))
    ecfg = compose("evaluate", ["evaluation.progress=false", "evaluation.tensorboard=false"]).evaluation
    report = evaluate_set(from_sample_folder(out), out, ecfg, nets=oracle())
    card = (folder / CARD).read_text()
    matter = front_matter(card)
    metrics = {m["type"]: m["value"] for m in matter["model-index"][0]["results"][0]["metrics"]}
    assert metrics["miou"] == report["metrics"]["miou"] == json.loads((out / "evaluation.json").read_text())[
        "metrics"]["miou"]
    assert metrics["consistency_ratio"] == report["metrics"]["consistency_ratio"]
    names = {m["type"]: m["name"] for m in matter["model-index"][0]["results"][0]["metrics"]}
    assert "segmenter injected" in names["miou"]  # the instrument that measured it
    assert (folder / SAMPLES).is_file() and f"![masks and samples]({SAMPLES})" in card
    pipe = save_pipeline(folder, tmp_path / "pipe")
    assert (pipe / CARD).read_text() == card and (pipe / SAMPLES).is_file()  # the pipeline carries both


def test_push_checks_the_folder_and_says_in_one_line_when_the_hub_is_out_of_reach(export, tmp_path, capsys):
    folder, _ = export
    (folder / ".ema.safetensors.partial-host-1-abc").write_bytes(b"")  # a killed write's leftover stays home
    kind, files = upload_plan(folder)
    assert kind == "model" and sorted(p.name for p in files) == [CARD, "config.yaml", "ema.safetensors"]
    push_cli([str(folder), "--repo", "me/tiny", "--dry-run"])
    assert "would upload 3 files to the model repo me/tiny" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"cannot push to the Hub \(.*\); the model waits in .*: log in"):
        push(folder, "me/tiny")  # HF_HUB_OFFLINE=1 in the tests, as on a machine without the Hub
    with pytest.raises(ConfigError, match=r"--repo 'tiny': expected <user or organisation>/<name>"):
        push(folder, "tiny")
    (folder / CARD).unlink()
    with pytest.raises(DataError, match=r"no README.md; the Hub shows the card first"):
        upload_plan(folder)
    (tmp_path / "data" / "data").mkdir(parents=True)
    (tmp_path / "data" / "data" / "train-00000-of-00001.parquet").write_bytes(b"x")
    (tmp_path / "data" / "README.md").write_text("card")
    assert upload_plan(tmp_path / "data")[0] == "dataset"
    with pytest.raises(DataError, match=r"neither a model .* nor a dataset"):
        upload_plan(tmp_path / "data" / "data")
