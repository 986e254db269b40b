"""Network speed on this machine: training step and guided sampling step, images per second.

    python experiments/bench_model.py            # all rows, writes experiments/results_model.md
    python experiments/bench_model.py --quick    # tiny only

Each row runs in its own process so that peak RSS is that row's. A training step is the whole
step of the module: one-hot, noising, U-Net forward, hybrid loss (MSE + VLB), backward,
gradient clipping and AdamW. A guided sampling step is one U-Net pass over cond + uncond
(2B) plus the DDIM update, in the steady state of a sampling loop (the SPADE modulation
is computed once per mask and reused across steps, as `sdm.diffusion.sample` does). `ref64` is the configuration the paper's code was measured in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, compose, machine, markdown_table, peak_rss_gib, rate  # noqa: E402

CASES = [  # (model preset, image size, batch)
    ("tiny", 64, 4),
    ("tiny", 64, 16),
    ("small", 128, 2),
    ("ref64", 64, 4),
]
# The paper's code on this machine class (2 cores, float32, torch 2.13), ref64 at batch 4:
# upper ends of the measured ranges, so the ratios below are conservative.
REFERENCE = {"train img/s": 1.8, "forward img/s": 4.8, "guided step img/s": 2.6}


def measure(preset: str, size: int, batch: int, bf16: bool, channels_last: bool) -> dict:
    from omegaconf import OmegaConf

    from sdm.diffusion import guided_prediction, noise_config
    from sdm.diffusion.sampling import build_sampler_scheduler
    from sdm.training.module import SDMModule

    cfg = compose(f"model={preset}", f"data.size=[{size},{size}]", f"channels_last={channels_last}")
    module = SDMModule(OmegaConf.to_container(cfg, resolve=True))
    module.train()
    optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
    label = torch.randint(0, 35, (batch, size, size), dtype=torch.uint8)
    batch_data = {"image": torch.rand(batch, 3, size, size) * 2 - 1, "label": label}
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        with autocast:
            loss = module.diffusion_losses(batch_data, generator, 0.2, module.unet)[0]["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.unet.parameters(), 1.0)
        optimizer.step()

    train_rate = rate(train_step, batch)
    module.eval()
    cond = module.condition(label)
    x = torch.randn(batch, 3, size, size)
    t = torch.full((batch,), 500)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.no_grad(), autocast:
            module.unet(x, t, cond)

    forward_rate = rate(forward, batch)
    scheduler = build_sampler_scheduler("ddim", noise_config(module.cfg))
    scheduler.set_timesteps(50)

    paired = torch.cat([cond, torch.zeros_like(cond)])

    def guided_step() -> None:
        with torch.no_grad(), autocast:
            out = guided_prediction(module.unet, x, t, cond, 1.5, True, paired)
        scheduler.step(out[:, :3].float(), 500, x)

    with module.unet.reuse_condition():  # as `sample` runs it: SPADE modulation once per mask
        guided_rate = rate(guided_step, batch)
    return {
        "model": preset, "size": size, "batch": batch, "precision": "bf16" if bf16 else "fp32",
        "channels_last": "on" if channels_last else "off",
        "params (M)": f"{sum(p.numel() for p in module.unet.parameters()) / 1e6:.1f}",
        "train img/s": f"{train_rate:.2f}", "forward img/s": f"{forward_rate:.2f}",
        "guided step img/s": f"{guided_rate:.2f}", "peak RSS GiB": f"{peak_rss_gib():.2f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "experiments" / "results_model.md"))
    args = parser.parse_args()
    if args.one:
        preset, size, batch, bf16, cl = json.loads(args.one)
        print(json.dumps(measure(preset, size, batch, bf16, cl)))
        return
    rows = []
    cases = [c for c in CASES if c[0] == "tiny"] if args.quick else CASES
    for preset, size, batch in cases:
        for bf16 in (False, True):
            for cl in (False, True):
                spec = json.dumps([preset, size, batch, bf16, cl])
                done = subprocess.run([sys.executable, __file__, "--one", spec], capture_output=True,
                                      text=True, cwd=REPO, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    ratios = [
        {"ref64 setting": f"{r['precision']}, channels_last {r['channels_last']}",
         **{k: f"{float(r[k]) / v:.2f}x" for k, v in REFERENCE.items()}}
        for r in rows if r["model"] == "ref64"
    ]
    comparison = markdown_table(ratios) if ratios else "(ref64 not measured)"
    Path(args.out).write_text(
        f"# Network speed (CPU)\n\nMachine: {machine()}.\n\n{table}\n\n"
        f"## Against the paper's code\n\nSame network (`model=ref64`, 64x64, batch 4), the paper's "
        f"code measured on this machine class in float32 with torch 2.13: train 1.5-1.8, forward "
        f"4.4-4.8, guided sampling step 2.6 img/s, peak RSS 1.9 GiB in training. Speed-up over the "
        f"upper end of each range:\n\n{comparison}\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
