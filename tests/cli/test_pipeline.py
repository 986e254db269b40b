"""The one-command pipeline: its stages, skipping what is complete, naming the failing stage."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdm.cli import pipeline
from sdm.cli.pipeline import PipelineError, Stage, as_overrides, load_config, run_pipeline, stages
from sdm.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


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


def test_every_stage_runs_the_projects_own_command(tmp_path):
    cfg = load_config(str(REPO / "conf" / "pipeline" / "sidewalk.yaml"), [f"root={tmp_path}"])
    plan = {stage.name: stage for stage in stages(cfg)}
    heads = {name: stage.command[:4] for name, stage in plan.items()}
    python = sys.executable
    assert heads == {
        "prepare": [python, "-m", "sdm.cli.prepare", "data=sidewalk"],
        "segmenter": [python, "-m", "sdm.cli.segmenter", "data=sidewalk"],
        "train": [python, "-m", "sdm.cli.train", "experiment=sidewalk256"],
        "finetune": [python, "-m", "sdm.cli.train", "experiment=sidewalk256"],
        "sample": [python, "-m", "sdm.cli.sample", f"weights={tmp_path / 'finetune'}"],
        "evaluate": [python, "-m", "sdm.cli.evaluate", f"samples={tmp_path / 'samples'}"],
    }
    assert plan["finetune"].command[-2:] == [f"run_dir={tmp_path / 'finetune'}", "ckpt_path=auto"]
    assert plan["sample"].command[4] == f"out_dir={tmp_path / 'samples'}"
    assert plan["evaluate"].command[3:5] == [f"samples={tmp_path / 'samples'}", "evaluation.progress=false"]
    # prepare and the segmenter reuse their own caches: they always run, and are quick when cached
    assert plan["prepare"].done() is False and plan["segmenter"].done() is False
    for name in ("train", "finetune"):
        assert plan[name].done() is False
        export = tmp_path / name / "export" / "ema.safetensors"
        export.parent.mkdir(parents=True)
        export.write_bytes(b"x")
        assert plan[name].done() is True
    assert plan["sample"].done() is False and plan["evaluate"].done() is False


def test_logs_hold_the_command_and_its_output_and_the_report_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "evaluation_report.txt").write_text("table")
    plan = [Stage("only", [sys.executable, "-c", "import os, sys; print(os.getcwd()); print('err', file=sys.stderr)"],
                  lambda: False)]
    monkeypatch.setattr(pipeline, "stages", lambda cfg: plan)
    summary = run_pipeline(OmegaConf.create({"root": str(tmp_path / "nested" / "..")}), cwd=tmp_path)
    assert [(name, status) for name, status, _ in summary] == [("only", "ran")] and 0 < summary[0][2] < 60
    log = (tmp_path / "logs" / "only.log").read_text().splitlines()
    assert log[0] == " ".join(plan[0].command) and log[1] == ""
    assert log[2] == str(tmp_path) and log[3] == "err"  # the stage ran in cwd, stderr into the same log
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'nested' / '..' / 'samples' / 'evaluation_report.txt'}" in out
    assert "only        ran" in out
    assert pipeline.tail(tmp_path / "logs" / "only.log", 2) == f"    {tmp_path}\n    err"
    monkeypatch.setattr(pipeline, "stages", lambda cfg: [Stage("only", plan[0].command, lambda: True)])
    summary = run_pipeline(OmegaConf.create({"root": str(tmp_path)}), cwd=tmp_path)
    assert summary == [("only", "skipped (complete)", 0.0)]


# --- what users get wrong: places, typos, changed settings (issue 24) ------------------------


def writer_stage(name: str, cfg, done=lambda: False, outputs=None) -> Stage:
    """A stage that writes <root>/<name>.out and says from which folder it ran."""
    code = f"import os; open({str(Path(str(cfg.root)) / (name + '.out'))!r}, 'w').write(os.getcwd())"
    return Stage(name, [sys.executable, "-c", code], done, outputs=outputs)


def test_a_relative_root_is_one_folder_for_logs_checks_and_stages(tmp_path, monkeypatch):
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    seen = []
    monkeypatch.setattr(pipeline, "stages", lambda cfg: seen.append(cfg.root) or [writer_stage("only", cfg)])
    run_pipeline(OmegaConf.create({"root": "runs/mine"}))
    assert seen == [str(caller / "runs" / "mine")]  # resolved once, from the folder the pipeline started in
    assert (caller / "runs" / "mine" / "only.out").read_text() == str(caller)  # the stage ran there too
    assert (caller / "runs" / "mine" / "logs" / "only.log").is_file()


def test_a_misspelt_stage_or_setting_is_refused_before_any_stage_runs(tmp_path, capsys):
    demo = str(REPO / "conf" / "pipeline" / "demo.yaml")
    with pytest.raises(ConfigError, match=r"'smaple' is not a stage or setting of a pipeline \(did you mean 'sample'\?\)"):
        load_config(demo, [f"root={tmp_path}", "smaple.limit=2"])
    with pytest.raises(ConfigError, match="'limit' is not a setting: pass key=value"):
        load_config(demo, [f"root={tmp_path}", "limit"])
    cases = {"train.trainer.max_stepz=3": r"stage 'train': Could not override 'trainer\.max_stepz'\. It is not a setting",
             "data_source=foo": r"Could not find 'data/foo' \(available: ade20k, celebamask, cityscapes, coco_stuff, folder, hub, scenes, sidewalk\)",
             "sample.sampler.num_stepz=2": r"stage 'sample': Could not override 'sampler\.num_stepz'"}
    for override, message in cases.items():
        with pytest.raises(SystemExit) as code:
            pipeline.main([demo, f"root={tmp_path / 'root'}", override])
        err = capsys.readouterr().err
        assert code.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(message, err), err
        assert not (tmp_path / "root" / "logs").exists()  # no stage started


def test_a_finished_stage_with_changed_settings_is_refused_until_forced(tmp_path, monkeypatch, capsys):
    samples = tmp_path / "samples"
    version = {"value": "5"}

    def plan(cfg):
        train = writer_stage("train", cfg, done=lambda: (tmp_path / "train.out").is_file())
        sample = Stage("sample", [sys.executable, "-c", f"import os; os.makedirs({str(samples)!r}, exist_ok=True); "
                                  f"open({str(samples / 'made')!r}, 'a').write('x')", f"num_per_mask={version['value']}"],
                       lambda: (samples / "made").is_file(), outputs=samples)
        return [train, sample]

    monkeypatch.setattr(pipeline, "stages", plan)
    cfg = OmegaConf.create({"root": str(tmp_path)})
    run_pipeline(cfg)
    assert (samples / "made").read_text() == "x"
    version["value"] = "2"  # sample.num_per_mask=2 on a finished root
    with pytest.raises(PipelineError, match=r"finished stages made with other settings:\n  sample: num_per_mask=5 -> "
                                            r"num_per_mask=2\n.*Pass force=sample"):
        run_pipeline(cfg)
    assert (samples / "made").read_text() == "x"  # kept as it was: nothing ran
    with pytest.raises(ConfigError, match="force=smaple: no stage 'smaple' in this pipeline; its stages are train, sample"):
        run_pipeline(OmegaConf.create({"root": str(tmp_path), "force": "smaple"}))
    summary = run_pipeline(OmegaConf.create({"root": str(tmp_path), "force": "sample"}))
    assert [status for _, status, _ in summary] == ["skipped (complete)", "ran"]
    assert (samples / "made").read_text() == "x"  # made anew, not appended to
    assert run_pipeline(cfg)[1][1] == "skipped (complete)"  # the new settings are now the finished ones
    summary = run_pipeline(OmegaConf.create({"root": str(tmp_path), "force": "train"}))
    assert [status for _, status, _ in summary] == ["ran", "ran"]  # a stage after a re-run one is made again
    assert "sample: made again, so" in capsys.readouterr().out


def test_a_bad_root_is_named_before_any_stage(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as code:
        pipeline.main([str(REPO / "conf" / "pipeline" / "demo.yaml"), f"root={tmp_path / 'taken'}"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err == f"error: root={tmp_path / 'taken'} is a file, not a folder; choose a folder\n"


def test_each_stage_composes_its_own_config_and_only_the_data_stages_reuse_their_caches(tmp_path):
    """What decides the plan beyond the commands: which config a stage's settings are checked
    against before anything runs, which stages reuse their own cache (prepare, segmenter: running
    them makes nothing after them stale), and which outputs are made anew when forced."""
    cfg = load_config(str(REPO / "conf" / "pipeline" / "sidewalk.yaml"),
                      [f"root={tmp_path}", "evaluate.evaluation.batch_size=8"])
    plan = stages(cfg)
    assert [(s.name, s.config, s.cached, s.outputs) for s in plan] == [
        ("prepare", "prepare", True, None), ("segmenter", "segmenter", True, None), ("train", "train", False, None),
        ("finetune", "train", False, None), ("sample", "sample", False, tmp_path / "samples"),
        ("evaluate", "evaluate", False, None)]
    commands = {s.name: s.command for s in plan}
    assert "trainer.max_steps=10000" in commands["finetune"] and f"init_from={tmp_path / 'train'}" in commands["finetune"]
    assert "trainer.max_steps=10000" not in commands["train"]  # the fine-tune block is its own
    assert f"weights={tmp_path / 'finetune'}" in commands["sample"]  # samples come from the fine-tuned model
    assert commands["evaluate"][-1] == "evaluation.batch_size=8"  # the evaluate block reaches its stage
    assert {s.name: s.done() for s in plan} == dict.fromkeys(commands, False)  # nothing made yet
    (tmp_path / "finetune" / "export").mkdir(parents=True)
    (tmp_path / "finetune" / "export" / "ema.safetensors").write_bytes(b"")
    assert [s.name for s in stages(cfg) if s.done()] == ["finetune"]
    assert pipeline.plan_actions(stages(cfg), tmp_path, set()) == {  # made, but after stages that run: made again
        "prepare": "run", "segmenter": "run", "train": "run", "finetune": "redo", "sample": "run", "evaluate": "run"}
    for force in ("train,sample", ["train", "sample"]):
        assert pipeline.forced_stages(OmegaConf.create({"force": force}), plan) == {"train", "sample"}


def test_every_finished_stage_with_changed_settings_is_listed_with_its_change_and_in_the_force_hint(tmp_path):
    before = {"train": ["a=1", "b=1"], "sample": ["s=1"], "evaluate": []}
    now = {"train": ["a=2", "b=2"], "sample": [], "evaluate": ["e=1"]}
    plan = [Stage(name, [sys.executable, "-c", "pass", *now[name]], lambda: True) for name in before]
    (tmp_path / "logs").mkdir()
    for stage in plan:
        pipeline.done_record(tmp_path, stage).write_text(json.dumps({"command": ["-c", "pass", *before[stage.name]]}))
    with pytest.raises(PipelineError) as caught:
        pipeline.plan_actions(plan, tmp_path, set())
    assert ("holds finished stages made with other settings:\n  train: a=1 b=1 -> a=2 b=2\n  sample: s=1 -> (nothing)\n"
            "  evaluate: (nothing) -> e=1\nTheir outputs are kept as they are. Pass force=train,sample,evaluate to run"
            in str(caught.value))
