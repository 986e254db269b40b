"""Checks in front of Hydra's submitit SLURM launcher, before anything is queued.

A job whose tasks do not match Lightning's devices, or that asks for a partition, GPUs, CPUs
or memory the cluster does not have, would sit in the queue or hang at start-up; here it
fails at submission with one `error:` line (exit 2). `gpus_per_node: null` asks one GPU per
device for GPU training and none for `trainer.accelerator=cpu`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf


def job_problems(params: dict[str, Any], cfg: DictConfig) -> list[str]:
    """What in one job's config contradicts the launcher's request (train.py or sample.py)."""
    problems = []
    tasks, nodes = params.get("tasks_per_node"), params.get("nodes")
    trainer = cfg.get("trainer")
    if trainer is not None:  # train.py: Lightning wants one SLURM task per device, on every node
        devices = OmegaConf.select(cfg, "trainer.devices")
        if not isinstance(devices, int):
            problems.append(f"trainer.devices={devices!r}: under SLURM give the number of devices per node")
        elif tasks != devices:
            problems.append(f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: Lightning needs "
                            "one task per device")
        if nodes != trainer.get("num_nodes", 1):
            problems.append(f"hydra.launcher.nodes={nodes} but trainer.num_nodes={trainer.get('num_nodes', 1)}")
    elif tasks != 1 or nodes != 1:  # sample.py starts its own process per GPU, on one node
        problems.append(f"sample.py runs as one task on one node (it starts `devices` processes itself): got "
                        f"hydra.launcher.tasks_per_node={tasks}, nodes={nodes}")
    return problems


def gpus_per_node_for(cfg: DictConfig) -> int:
    """`gpus_per_node: null`: one GPU per device, none for CPU training (train.py says
    trainer.accelerator=cpu, sample.py device=cpu)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=OmegaConf.select(cfg, "device"))
    devices = OmegaConf.select(cfg, "trainer.devices", default=OmegaConf.select(cfg, "devices", default=1))
    if accelerator == "cpu":
        return 0
    return devices if isinstance(devices, int) else 1  # `auto` is refused by job_problems


def partitions() -> dict[str, dict[str, Any]] | None:
    """name -> {cpus, memory_mb, gpus, nodes, default} from sinfo, or None without SLURM tools."""
    if shutil.which("sinfo") is None:
        return None
    done = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%D"], capture_output=True, text=True, timeout=60)
    return parse_sinfo(done.stdout) if done.returncode == 0 else None


def gpu_count(gres: str) -> int:
    """GPUs per node in a `%G` field: gpu:a100:8(S:0-1),gpu:2, bare gpu (one), (null)."""
    total = 0
    for part in gres.split(","):
        fields = part.split("(")[0].split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> dict[str, dict[str, Any]]:
    """Lines of `sinfo -h -o '%P|%c|%m|%G|%D'`: partition (* = default), CPUs and memory (MB) per
    node, generic resources, node count. A partition of several node types has a line per type:
    each is kept as a group, since a job's nodes must each fit it."""
    found: dict[str, dict[str, Any]] = {}
    for line in text.split():
        name, cpus, memory, gres, count = line.split("|")
        partition = found.setdefault(name.rstrip("*"), {"default": name.endswith("*"), "groups": []})
        partition["groups"].append({"cpus": int(cpus.rstrip("+")), "memory_mb": int(memory.rstrip("+")),
                                    "gpus": gpu_count(gres), "nodes": int(count)})
    return found


def _node_problems(params: dict[str, Any], node: dict[str, Any], name: str) -> list[str]:
    """What one node of a group lacks for one node's share of the job."""
    problems = []
    gpus = params.get("gpus_per_node") if isinstance(params.get("gpus_per_node"), int) else 0
    if gpus > node["gpus"]:
        problems.append(f"hydra.launcher.gpus_per_node={gpus} but the nodes of partition '{name}' have "
                        f"{node['gpus'] or 'no'} GPUs; for CPU training pass trainer.accelerator=cpu")
    tasks = params.get("tasks_per_node")
    cpus = int(params.get("cpus_per_task") or 1) * (tasks if isinstance(tasks, int) else 1)
    if cpus > node["cpus"]:
        problems.append(f"hydra.launcher.cpus_per_task x tasks_per_node = {cpus} CPUs but the nodes of partition "
                        f"'{name}' have {node['cpus']}")
    memory = params.get("mem_gb")
    if memory is not None and float(memory) * 1024 > node["memory_mb"]:
        problems.append(f"hydra.launcher.mem_gb={memory} but the nodes of partition '{name}' have "
                        f"{node['memory_mb'] / 1024:.0f} GB")
    return problems


def cluster_problems(params: dict[str, Any], available: dict[str, dict[str, Any]]) -> list[str]:
    """What the request asks of the cluster that its partition cannot give: no node type that
    fits one node's share, or fewer fitting nodes than asked for."""
    wanted = params.get("partition")
    name = wanted or next((n for n, p in available.items() if p["default"]), None)
    if name not in available:
        where = f"partition '{wanted}'" if wanted else "no partition (and the cluster has no default one)"
        return [f"hydra.launcher.partition: {where} does not exist on this cluster; it has {', '.join(available)}"]
    groups = available[name]["groups"]
    per_group = [_node_problems(params, node, name) for node in groups]
    fitting = sum(node["nodes"] for node, problems in zip(groups, per_group, strict=True) if not problems)
    if not fitting:
        return min(per_group, key=len)  # the node type that comes closest
    if int(params.get("nodes") or 1) > fitting:
        return [f"hydra.launcher.nodes={params.get('nodes')} but partition '{name}' has {fitting} node(s) that fit "
                "the job"]
    return []


def check_submission(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> None:
    """Exit 2 with every problem of the sweep named, before any job is submitted."""
    assert launcher.config is not None and launcher.hydra_context is not None
    problems: list[str] = []
    for overrides in job_overrides:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        if launcher.params.get("gpus_per_node") is None:
            launcher.params["gpus_per_node"] = gpus_per_node_for(cfg)
        problems += [p for p in job_problems(launcher.params, cfg) if p not in problems]
    available = partitions()
    if available is not None:
        problems += cluster_problems(launcher.params, available)
    if problems:
        sweep = Path(str(launcher.config.hydra.sweep.dir))
        if sweep.is_dir() and {p.name for p in sweep.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(sweep)  # the sweeper wrote only its config: leave no empty sweep behind
        print("error: nothing was submitted:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(2)


KILL_ON_BAD_EXIT = "export SLURM_KILL_BAD_EXIT=1"


def with_kill_on_bad_exit(setup: Sequence[str] | None) -> list[str]:
    """The job's setup lines plus srun's --kill-on-bad-exit (by its environment variable, which
    the launcher's config can set): when one rank fails (a write error, an exception), srun ends
    the others, which would otherwise wait at the next collective until NCCL's timeout."""
    lines = list(setup or [])
    return lines if KILL_ON_BAD_EXIT in lines else [KILL_ON_BAD_EXIT, *lines]


def report_failed_job(err: Exception, sweep: Path) -> None:
    """Exit 1 with the end of a failed job's error, not a traceback of the launcher around it."""
    lines = str(err).strip().splitlines()
    shown = "\n  ".join(lines[-25:])
    print(f"error: a SLURM job did not complete ({type(err).__name__}); the end of its report:\n  {shown}\n"
          f"Its full logs are in {sweep}/.submitit/. A job stopped by a time limit or preemption after its "
          "requeues (hydra.launcher.max_num_timeout) continues from its checkpoint when submitted again with the "
          f"same overrides and hydra.sweep.dir={sweep}",
          file=sys.stderr)
    sys.exit(1)


def install_checks() -> None:
    """Put the checks in front of Hydra's SLURM launcher. Hydra takes launchers from the
    `hydra_plugins` namespace only (a subclass here cannot be named in the config), and its
    plugin scan re-executes their modules; so the scan runs first and the class it keeps is
    patched. train.py and sample.py call this before Hydra starts."""
    import importlib

    from hydra.core.plugins import Plugins

    Plugins.instance()
    try:
        launcher = importlib.import_module("hydra_plugins.hydra_submitit_launcher.submitit_launcher").SlurmLauncher
    except ImportError:  # without the plugin hydra/launcher=slurm cannot be chosen at all
        return
    from sdm.cluster.watch import install_queue_fallback

    install_queue_fallback()
    if getattr(launcher.launch, "__name__", "") != "checked_launch":
        original = launcher.launch

        def checked_launch(self: Any, job_overrides: Sequence[Sequence[str]],
                           initial_job_idx: int) -> Sequence[JobReturn]:
            check_submission(self, job_overrides)
            self.params["setup"] = with_kill_on_bad_exit(self.params.get("setup"))
            try:
                return original(self, job_overrides, initial_job_idx)
            except Exception as err:  # a job failed or ran out of requeues: its own log says why
                if not type(err).__module__.startswith("submitit"):
                    raise
                report_failed_job(err, Path(str(self.config.hydra.sweep.dir)))

        launcher.launch = checked_launch
