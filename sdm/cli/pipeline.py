"""The whole pipeline as one command: prepare -> segmenter -> train -> fine-tune -> sample -> evaluate.

    sdm-pipeline conf/pipeline/demo.yaml          (make demo: the scenes, CPU)
    sdm-pipeline conf/pipeline/sidewalk.yaml      (the real dataset, GPUs)
    sdm-pipeline conf/pipeline/demo.yaml root=runs/demo2 train.trainer.max_steps=100

Each stage is the project's own command line, run in a child process (from the folder the
pipeline was started in, ending with it) with its output in `<root>/logs/<stage>.log`. A stage
whose outputs are complete is skipped, so re-running the command after a failure, Ctrl-C or a
pre-emption carries on; training resumes its last checkpoint (ckpt_path=auto). A finished stage
whose settings have changed since is refused, never silently kept: `force=<stage>` runs it (and
the stages after it) again. Unknown stages and settings are refused before any stage runs. The
summary names each stage's status and time, and the first failing stage with its log's end.

Not a Hydra app itself: its first argument is a pipeline file, a path (users keep their own
pipelines beside their data), read with OmegaConf and the same dotted overrides; every stage it
runs is a Hydra app.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sdm.core.atomic import write_json
from sdm.core.children import preexec_ending_with
from sdm.core.configs import CONFIG_DIR, compose
from sdm.core.errors import ConfigError, SDMError
from sdm.core.exits import exit_on_sdm_error
from sdm.core.places import check_output_folder

LOG_TAIL = 25
CONF = CONFIG_DIR


KNOWN_KEYS = ("root", "data_source", "data", "segmenter", "train", "finetune", "sample", "evaluate", "force")


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    done: Callable[[], bool]  # outputs complete: the stage is skipped
    config: str | None = None  # the Hydra config its overrides compose (checked before any stage runs)
    cached: bool = False  # reuses its own cache (prepare, segmenter): running it redoes nothing downstream
    outputs: Path | None = None  # made again from scratch when the stage is forced (samples/)


def as_overrides(node: object, prefix: str = "") -> list[str]:
    """A nested block of settings -> Hydra overrides: {trainer: {max_steps: 5}} -> trainer.max_steps=5."""
    if isinstance(node, dict):
        return [item for key, value in node.items()
                for item in as_overrides(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(node, list):
        return [f"{prefix}=[{','.join(str(v) for v in node)}]"]
    return [f"{prefix}={'null' if node is None else node}"]


def overrides(cfg: DictConfig, key: str) -> list[str]:
    """The overrides of one stage's block (`train:`, `sample:` ...); none when it is empty."""
    block = cfg.get(key)
    return as_overrides(OmegaConf.to_container(block, resolve=True)) if block else []


def compose_data(overrides_: list[str]) -> dict:
    """The resolved `data` block of the training config these overrides compose."""
    cfg = compose("train", overrides_)
    return OmegaConf.to_container(cfg.data, resolve=True)


def changed(node: dict, base: dict) -> dict:
    """The entries of `node` that differ from `base` (recursively)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = changed(value, base[key])
            if inner:
                out[key] = inner
        elif base.get(key, object()) != value:
            out[key] = value
    return out


def data_overrides(cfg: DictConfig) -> list[str]:
    """The data settings the training stage will use, as overrides for prepare and the segmenter.

    They come from composing the training config itself (its experiment included), so the
    dataset prepared, the segmenter trained and the model trained share one cache key.
    """
    extra = as_overrides(OmegaConf.to_container(cfg.data, resolve=True), "data") if cfg.get("data") else []
    source = [f"data={cfg.data_source}"]
    try:
        trained = compose_data([*overrides(cfg, "train"), *source, *extra])
        defaults = compose_data(source)
    except ConfigError as err:
        raise ConfigError(f"stage 'train': {err}") from None
    return [*source, *as_overrides(changed(trained, defaults), "data")]


def manifest_complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "manifest.json").read_text()).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def evaluated(folder: Path) -> bool:
    report, manifest = folder / "evaluation.json", folder / "manifest.json"
    return report.is_file() and manifest.is_file() and report.stat().st_mtime >= manifest.stat().st_mtime


def stages(cfg: DictConfig) -> list[Stage]:
    """The configured stages in order, with what marks each one done."""
    root = Path(str(cfg.root))
    python = sys.executable
    data = data_overrides(cfg)
    train_dir, finetune_dir, samples = root / "train", root / "finetune", root / "samples"
    weights = finetune_dir if cfg.get("finetune") is not None else train_dir
    plan = [
        Stage("prepare", [python, "-m", "sdm.cli.prepare", *data], lambda: False, "prepare", cached=True),
        Stage("segmenter", [python, "-m", "sdm.cli.segmenter", *data, *overrides(cfg, "segmenter")],
              lambda: False, "segmenter", cached=True),
        Stage("train", [python, "-m", "sdm.cli.train", *overrides(cfg, "train"), *data, f"run_dir={train_dir}", "ckpt_path=auto"],
              lambda: (train_dir / "export" / "ema.safetensors").is_file(), "train"),
    ]
    if cfg.get("finetune") is not None:
        plan.append(Stage("finetune", [python, "-m", "sdm.cli.train", *overrides(cfg, "train"), *data, "experiment=finetune_cfg",
                                       *overrides(cfg, "finetune"), f"init_from={train_dir}",
                                       f"run_dir={finetune_dir}", "ckpt_path=auto"],
                          lambda: (finetune_dir / "export" / "ema.safetensors").is_file(), "train"))
    plan += [
        Stage("sample", [python, "-m", "sdm.cli.sample", f"weights={weights}", f"out_dir={samples}", *overrides(cfg, "sample")],
              lambda: manifest_complete(samples), "sample", outputs=samples),
        Stage("evaluate", [python, "-m", "sdm.cli.evaluate", f"samples={samples}", "evaluation.progress=false",
                           *overrides(cfg, "evaluate")], lambda: evaluated(samples), "evaluate"),
    ]
    return plan


def check_stage_settings(plan: list[Stage]) -> None:
    """Compose every stage's config as its command will: a misspelt key or a missing option is
    refused now, naming the stage, not after the stages before it have run for an hour."""
    for stage in plan:
        if stage.config is None:
            continue
        try:
            compose(stage.config, [arg for arg in stage.command[3:] if "=" in arg])
        except ConfigError as err:
            raise ConfigError(f"stage '{stage.name}': {err}") from None


def done_record(root: Path, stage: Stage) -> Path:
    return root / "logs" / f"{stage.name}.done.json"


def settings_changed(root: Path, stage: Stage) -> str | None:
    """How the stage's command differs from the one that finished it (None: same, or no record)."""
    try:
        before = json.loads(done_record(root, stage).read_text())["command"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    now = stage.command[1:]  # not the interpreter: another environment runs the same stage
    if before == now:
        return None
    gone, new = [a for a in before if a not in now], [a for a in now if a not in before]
    return f"{' '.join(gone) or '(nothing)'} -> {' '.join(new) or '(nothing)'}"


def plan_actions(plan: list[Stage], root: Path, forced: set[str]) -> dict[str, str]:
    """stage -> "run" | "skip" | "redo" (done, but forced or made stale by a stage before it that
    runs). A finished stage with changed settings, not forced, is refused here: before any stage runs."""
    actions, stale, refused = {}, False, []
    for stage in plan:
        done = not stage.cached and stage.done()
        if done and not stale and stage.name not in forced:
            change = settings_changed(root, stage)
            if change is not None:
                refused.append(f"  {stage.name}: {change}")
            actions[stage.name] = "skip"
            continue
        actions[stage.name] = "redo" if done else "run"
        stale = stale or not stage.cached
    if refused:
        names = ",".join(line.split(":")[0].strip() for line in refused)
        raise PipelineError(f"root={root} holds finished stages made with other settings:\n" + "\n".join(refused)
                            + f"\nTheir outputs are kept as they are. Pass force={names} to run them (and the stages "
                            "after them) again with the new settings (training continues its checkpoint; samples "
                            "are made anew), or choose another root=")
    return actions


def forced_stages(cfg: DictConfig, plan: list[Stage]) -> set[str]:
    value = cfg.get("force")
    names = {str(v) for v in value} if OmegaConf.is_list(value) else set(str(value).split(",")) if value else set()
    unknown = sorted(names - {stage.name for stage in plan})
    if unknown:
        raise ConfigError(f"force={value}: no stage {unknown[0]!r} in this pipeline; its stages are "
                          f"{', '.join(stage.name for stage in plan)}")
    return names


def run_stage(stage: Stage, log: Path, cwd: Path) -> int:
    """Run one stage with its output in `log`; returns its exit status. The stage runs in its own
    session and ends with this process (even one killed with SIGKILL); Ctrl-C here is passed on
    once, the stage stops as its command does on Ctrl-C (training after a checkpoint), and the
    pipeline then stops too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write(" ".join(stage.command) + "\n\n")
        handle.flush()
        process = subprocess.Popen(stage.command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=preexec_ending_with(os.getpid()))
        try:
            return process.wait()
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: no waiting for the stage's checkpoint
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


def run_pipeline(cfg: DictConfig, cwd: Path | None = None) -> list[tuple[str, str, float]]:
    """Run every stage not yet done; returns (stage, status, seconds). Stops at the first failure."""
    root = check_output_folder(str(cfg.root), "root")  # absolute, from the folder the pipeline started in
    cfg = OmegaConf.merge(cfg, {"root": str(root)})
    cwd = cwd or Path.cwd()
    plan = stages(cfg)
    check_stage_settings(plan)
    actions = plan_actions(plan, root, forced_stages(cfg, plan))
    summary: list[tuple[str, str, float]] = []
    for number, stage in enumerate(plan, 1):
        log = root / "logs" / f"{stage.name}.log"
        if actions[stage.name] == "skip":
            summary.append((stage.name, "skipped (complete)", 0.0))
            print(f"[{number}/{len(plan)}] {stage.name}: complete, skipped")
            continue
        if actions[stage.name] == "redo" and stage.outputs is not None and stage.outputs.is_dir():
            print(f"[{number}/{len(plan)}] {stage.name}: made again, so {stage.outputs} is removed first")
            shutil.rmtree(stage.outputs)
        print(f"[{number}/{len(plan)}] {stage.name} ... (log: {log})", flush=True)
        started = time.perf_counter()
        done_record(root, stage).unlink(missing_ok=True)
        status = run_stage(stage, log, cwd)
        seconds = time.perf_counter() - started
        if status != 0:
            summary.append((stage.name, f"FAILED (exit {status})", seconds))
            print_summary(summary)
            raise PipelineError(f"stage '{stage.name}' failed with exit status {status}; its log is {log}, "
                                f"which ends:\n{tail(log)}\nfix it and run the same command again: completed "
                                "stages are skipped")
        write_json(done_record(root, stage), {"command": stage.command[1:]})
        summary.append((stage.name, "ran", seconds))
    print_summary(summary)
    report = root / "samples" / "evaluation_report.txt"
    if report.is_file():
        print(f"\nreport: {report}\n        {report.with_name('evaluation.html')}")
    return summary


def print_summary(summary: list[tuple[str, str, float]]) -> None:
    print("\nstage       status               minutes")
    for name, status, seconds in summary:
        print(f"{name:<11} {status:<20} {seconds / 60:7.1f}")


class PipelineError(SDMError):
    """A stage of the pipeline failed."""


def load_config(path: str, dotlist: list[str]) -> DictConfig:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pipeline config '{path}' not found (see conf/pipeline/)")
    bad = [item for item in dotlist if "=" not in item]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not a setting: pass key=value, e.g. root=runs/demo2 sample.limit=8")
    cfg = OmegaConf.merge(OmegaConf.load(file), OmegaConf.from_dotlist(dotlist))
    unknown = [key for key in cfg if key not in KNOWN_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), KNOWN_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{unknown[0]!r} is not a stage or setting of a pipeline{hint}; known: {', '.join(KNOWN_KEYS)}")
    if not cfg.get("root"):
        raise ConfigError(f"{path}: 'root' (the folder of the pipeline's outputs) is required")
    return cfg


@exit_on_sdm_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    run_pipeline(load_config(args[0], args[1:]))


if __name__ == "__main__":
    main()
