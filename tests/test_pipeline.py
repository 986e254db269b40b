"""The one-command pipeline: its stages, skipping what is complete, naming the failing stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdm import pipeline
from sdm.errors import ConfigError
from sdm.pipeline import PipelineError, Stage, as_overrides, load_config, run_pipeline, stages

REPO = Path(__file__).resolve().parents[1]


def test_nested_blocks_become_hydra_overrides():
    block = {"experiment": "quickstart", "trainer": {"max_steps": 5, "devices": None}, "data": {"size": [32, 48]}}
    assert as_overrides(block) == ["experiment=quickstart", "trainer.max_steps=5", "trainer.devices=null",
                                   "data.size=[32,48]"]
    assert as_overrides({"num": 3}, "data.scenes") == ["data.scenes.num=3"]


def test_demo_stages_share_the_data_and_resume_training(tmp_path):
    cfg = load_config(str(REPO / "conf" / "pipeline" / "demo.yaml"), [f"root={tmp_path}", "data.scenes.num=50"])
    plan = {stage.name: stage.command for stage in stages(cfg)}
    assert list(plan) == ["prepare", "segmenter", "train", "sample", "evaluate"]  # no fine-tune in the demo
    data = [arg for arg in plan["prepare"] if arg.startswith("data")]
    # the quickstart's own data settings reach prepare and the segmenter: one cache key for all
    assert {"data=scenes", "data.size=[32,32]", "data.scenes.size=[32,32]", "data.scenes.num=50"} <= set(data)
    assert [a for a in plan["segmenter"] if a.startswith("data")] == data
    assert [a for a in plan["train"] if a.startswith("data")] == data
    assert f"run_dir={tmp_path / 'train'}" in plan["train"] and "ckpt_path=auto" in plan["train"]
    assert f"weights={tmp_path / 'train'}" in plan["sample"] and "num_per_mask=5" in plan["sample"]
    assert f"samples={tmp_path / 'samples'}" in plan["evaluate"]
    sidewalk = load_config(str(REPO / "conf" / "pipeline" / "sidewalk.yaml"), [f"root={tmp_path}"])
    plan = {stage.name: stage.command for stage in stages(sidewalk)}
    assert "finetune" in plan and f"init_from={tmp_path / 'train'}" in plan["finetune"]
    assert "experiment=finetune_cfg" in plan["finetune"] and f"weights={tmp_path / 'finetune'}" in plan["sample"]
    assert "data=sidewalk" in plan["prepare"] and "segmenter.arch=lraspp" in plan["segmenter"]


def test_complete_stages_are_skipped_and_the_first_failure_is_named(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "first.done"
    plan = [
        Stage("first", [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"], marker.is_file),
        Stage("second", [sys.executable, "-c", "import sys; print('line one'); print('it broke'); sys.exit(3)"],
              lambda: False),
        Stage("third", [sys.executable, "-c", "raise SystemExit(0)"], lambda: False),
    ]
    monkeypatch.setattr(pipeline, "stages", lambda cfg: plan)
    cfg = OmegaConf.create({"root": str(tmp_path)})
    with pytest.raises(PipelineError, match=r"stage 'second' failed with exit status 3; its log is .*second\.log"
                                            r"(.|\n)*it broke"):
        run_pipeline(cfg, cwd=tmp_path)
    assert marker.is_file() and not (tmp_path / "logs" / "third.log").exists()
    out = capsys.readouterr().out
    assert "first " in out and "ran" in out and "FAILED (exit 3)" in out
    with pytest.raises(PipelineError):
        run_pipeline(cfg, cwd=tmp_path)
    assert "[1/3] first: complete, skipped" in capsys.readouterr().out


def test_sample_and_evaluate_are_done_only_when_their_files_say_so(tmp_path):
    assert not pipeline.manifest_complete(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False}))
    assert not pipeline.manifest_complete(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": True}))
    assert pipeline.manifest_complete(tmp_path) and not pipeline.evaluated(tmp_path)
    (tmp_path / "evaluation.json").write_text("{}")
    assert pipeline.evaluated(tmp_path)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="pipeline config .* not found"):
        load_config(str(tmp_path / "missing.yaml"), [])
    (tmp_path / "p.yaml").write_text("data_source: scenes\n")
    with pytest.raises(ConfigError, match="'root'"):
        load_config(str(tmp_path / "p.yaml"), [])
