"""GPU memory of one training step, estimated on a machine without a GPU.

    python experiments/bench_memory.py                       # sidewalk1024 and sidewalk256, writes results_memory.md
    python experiments/bench_memory.py --cases sidewalk1024:2:on

Each case builds the experiment's module under FakeTensorMode (shapes and dtypes, no data, no
compute) and traces a training step with torch's MemTracker: the noising, the U-Net forward
under bf16 autocast, the hybrid loss, backward and AdamW. The first step runs untraced so that
the AdamW state exists; the second step's peak is the steady state a GPU holds. The weights
column includes the EMA copy the module keeps beside the network.

What it cannot see, so a GPU will show more: the CUDA context (about 0.5-1 GiB), the caching
allocator's fragmentation, DDP's gradient buckets (about one gradient copy), and CUDA's own
autocast policy (CPU autocast stands in: both run convolutions and matmuls in bf16 and
normalisations in float32). Run on a GPU, `bench_training.py` measures the real peak.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compose, machine, markdown_table  # noqa: E402

GIB = 2**30
DEFAULT_CASES = ["sidewalk1024:2:on", "sidewalk1024:2:off", "sidewalk256:4:off", "sidewalk256:4:on"]


def traced_step(experiment: str, batch: int, checkpointing: bool) -> dict[str, float]:
    """Peak bytes per kind of memory in the second training step of `experiment`."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from sdm.diffusion import add_noise, hybrid_loss
    from sdm.training.module import SDMModule

    cfg = compose(f"experiment={experiment}", f"model.use_checkpoint={str(checkpointing).lower()}")
    height, width = cfg.data.size
    with FakeTensorMode(allow_non_fake_inputs=True):
        module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
        unet = module.unet.train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        memory = torch.channels_last if module.channels_last else torch.contiguous_format
        channels = unet.num_classes + (1 if unet.edge_channel else 0)

        def step() -> None:
            # the condition is built directly: label_to_condition checks the ids, which needs data
            x0, cond = torch.randn(batch, 3, height, width), torch.zeros(batch, channels, height, width)
            noise, t = torch.randn_like(x0), torch.randint(0, module.num_timesteps, (batch,))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x_t = add_noise(module.scheduler, x0, noise, t).contiguous(memory_format=memory)
                out = unet(x_t, t, cond.contiguous(memory_format=memory))
                losses = hybrid_loss(out, x0, x_t, t, noise, module.scheduler, learn_sigma=unet.out_channels == 6,
                                     vlb_weight=float(cfg.loss.vlb_weight))
            losses["loss"].mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # creates the AdamW state
        tracker = MemTracker()
        tracker.track_external(module, optimizer)
        with tracker:
            step()
        peak = tracker.get_tracker_snapshot("peak")
    (device,) = peak
    values = {str(kind.value if hasattr(kind, "value") else kind): float(v) for kind, v in peak[device].items()}
    values["parameters"] = float(sum(p.numel() for p in unet.parameters()))
    return values


def fits(peak_gib: float) -> str:
    """Which A100 class the step fits: the peak plus a CUDA context of 1 GiB and 10 % for the allocator."""
    need = peak_gib * 1.1 + 1.0
    return ", ".join(f"{name} GB" for name, usable in (("40", 39.4), ("80", 79.1)) if need <= usable) or "neither"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="EXPERIMENT:BATCH:on|off",
                        help="experiment, batch per GPU and gradient checkpointing")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_memory.md")))
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        experiment, batch, checkpointing = case.split(":")
        started = time.perf_counter()
        values = traced_step(experiment, int(batch), checkpointing == "on")
        cfg = compose(f"experiment={experiment}")
        rows.append({
            "experiment": experiment,
            "size": "x".join(map(str, cfg.data.size)), "batch per GPU": batch, "checkpointing": checkpointing,
            "parameters (M)": f"{values['parameters'] / 1e6:.1f}",
            "weights + EMA GiB": f"{values.get('Parameter', 0) / GIB:.2f}",
            "gradients GiB": f"{values.get('Gradient', 0) / GIB:.2f}",
            "AdamW state GiB": f"{values.get('Optstate', 0) / GIB:.2f}",
            "activations GiB": f"{values.get('Activation', 0) / GIB:.2f}",
            "temporaries GiB": f"{values.get('Temp', 0) / GIB:.2f}",
            "peak GiB": f"{values['Total'] / GIB:.2f}",
            "fits (+1 GiB context, 10 % margin)": fits(values["Total"] / GIB),
            "trace s": f"{time.perf_counter() - started:.0f}",
        })
        print(markdown_table(rows[-1:]), flush=True)
    table = markdown_table(rows)
    text = (f"# Training memory per GPU, estimated\n\n`python experiments/bench_memory.py --cases {' '.join(args.cases)}` "
            f"on {machine()}, bf16 autocast. How the estimate is made, and what it leaves out (the CUDA context, "
            f"fragmentation, DDP buckets), is in the script's docstring: a GPU will need more than the peak column."
            f"\n\n{table}\n")
    Path(args.out).write_text(text)
    print(table)


if __name__ == "__main__":
    main()
