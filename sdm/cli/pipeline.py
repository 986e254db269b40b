"""The whole pipeline as one command: prepare -> segmenter -> train -> fine-tune -> sample -> evaluate.

    sdm-pipeline conf/pipeline/demo.yaml          (make demo: the scenes, CPU)
    sdm-pipeline conf/pipeline/sidewalk.yaml      (the real dataset, GPUs)
    sdm-pipeline conf/pipeline/demo.yaml root=runs/demo2 train.trainer.max_steps=100

Each stage is the project's own command line, run in a child process with its output in
`<root>/logs/<stage>.log`. A stage whose outputs are complete is skipped, so re-running the
command after a failure or a pre-emption carries on; training resumes its last checkpoint
(ckpt_path=auto). The summary names each stage's status and time, and the first failing
stage with the end of its log.

Not a Hydra app itself: its first argument is a pipeline file, a path (users keep their own
pipelines beside their data), read with OmegaConf and the same dotted overrides; every stage it
runs is a Hydra app.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sdm.core.configs import CONFIG_DIR, compose
from sdm.core.errors import ConfigError, SDMError, exit_on_sdm_error

LOG_TAIL = 25
CONF = CONFIG_DIR


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    done: Callable[[], bool]  # outputs complete: the stage is skipped


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
    trained = compose_data([*overrides(cfg, "train"), *source, *extra])
    defaults = compose_data(source)
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
    root = Path(str(cfg.root)).expanduser()
    python = sys.executable
    data = data_overrides(cfg)
    train_dir, finetune_dir, samples = root / "train", root / "finetune", root / "samples"
    weights = finetune_dir if cfg.get("finetune") is not None else train_dir
    plan = [
        Stage("prepare", [python, "-m", "sdm.cli.prepare", *data], lambda: False),  # reuses its cache itself
        Stage("segmenter", [python, "-m", "sdm.cli.segmenter", *data, *overrides(cfg, "segmenter")],
              lambda: False),  # reuses its cache itself
        Stage("train", [python, "-m", "sdm.cli.train", *overrides(cfg, "train"), *data, f"run_dir={train_dir}", "ckpt_path=auto"],
              lambda: (train_dir / "export" / "ema.safetensors").is_file()),
    ]
    if cfg.get("finetune") is not None:
        plan.append(Stage("finetune", [python, "-m", "sdm.cli.train", *overrides(cfg, "train"), *data, "experiment=finetune_cfg",
                                       *overrides(cfg, "finetune"), f"init_from={train_dir}",
                                       f"run_dir={finetune_dir}", "ckpt_path=auto"],
                          lambda: (finetune_dir / "export" / "ema.safetensors").is_file()))
    plan += [
        Stage("sample", [python, "-m", "sdm.cli.sample", f"weights={weights}", f"out_dir={samples}", *overrides(cfg, "sample")],
              lambda: manifest_complete(samples)),
        Stage("evaluate", [python, "-m", "sdm.cli.evaluate", f"samples={samples}", "evaluation.progress=false",
                           *overrides(cfg, "evaluate")], lambda: evaluated(samples)),
    ]
    return plan


def run_stage(stage: Stage, log: Path, cwd: Path) -> int:
    """Run one stage with its output in `log`; returns its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        handle.write(" ".join(stage.command) + "\n\n")
        handle.flush()
        return subprocess.run(stage.command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).returncode


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


def run_pipeline(cfg: DictConfig, cwd: Path | None = None) -> list[tuple[str, str, float]]:
    """Run every stage not yet done; returns (stage, status, seconds). Stops at the first failure."""
    root = Path(str(cfg.root)).expanduser()
    cwd = cwd or Path(__file__).resolve().parents[2]
    plan = stages(cfg)
    summary: list[tuple[str, str, float]] = []
    for number, stage in enumerate(plan, 1):
        log = root / "logs" / f"{stage.name}.log"
        if stage.done():
            summary.append((stage.name, "skipped (complete)", 0.0))
            print(f"[{number}/{len(plan)}] {stage.name}: complete, skipped")
            continue
        print(f"[{number}/{len(plan)}] {stage.name} ... (log: {log})", flush=True)
        started = time.perf_counter()
        status = run_stage(stage, log, cwd)
        seconds = time.perf_counter() - started
        if status != 0:
            summary.append((stage.name, f"FAILED (exit {status})", seconds))
            print_summary(summary)
            raise PipelineError(f"stage '{stage.name}' failed with exit status {status}; its log is {log}, "
                                f"which ends:\n{tail(log)}\nfix it and run the same command again: completed "
                                "stages are skipped")
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
    cfg = OmegaConf.merge(OmegaConf.load(file), OmegaConf.from_dotlist(dotlist))
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
