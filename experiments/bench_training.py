"""Training throughput through the real Lightning loop, one row per precision.

    python experiments/bench_training.py        # writes experiments/results_training.md

Runs the quickstart configuration (tiny, 64x64, batch 16, scenes) for a short while per
precision and times the steady-state steps with a callback (validation off). The full
quickstart's wall time is measured with `/usr/bin/time make demo` and recorded below the table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, compose, machine, markdown_table, peak_rss_gib  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
WARMUP_STEPS, TIMED_STEPS = 10, 60


class StepTimer(L.Callback):
    """Wall time of the steps after a warm-up, so start-up and data preparation do not count."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.seconds = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.start = time.perf_counter()
        elif trainer.global_step == WARMUP_STEPS + TIMED_STEPS and self.start is not None:
            self.seconds = time.perf_counter() - self.start


def measure(precision: str, root: Path) -> dict:
    from sdm.training import fit as training

    cfg = compose("experiment=quickstart", f"trainer.precision={precision}",
                  f"trainer.max_steps={WARMUP_STEPS + TIMED_STEPS}", "validation.every_n_steps=100000",
                  "checkpoint.every_n_steps=100000", "logger=none", "export=false",
                  "trainer.enable_progress_bar=false", "data.scenes.num=400")
    cfg.output_dir = str(root / precision)
    cfg.data.cache_dir = str(root / "data")
    timer = StepTimer()
    original = training.build_trainer

    def with_timer(config):
        trainer = original(config)
        trainer.callbacks.append(timer)
        return trainer

    training.build_trainer = with_timer
    try:
        training.train(cfg)
    finally:
        training.build_trainer = original
    batch = int(cfg.data.batch_size)
    return {"precision": precision, "steps/s": f"{TIMED_STEPS / timer.seconds:.2f}",
            "images/s": f"{TIMED_STEPS * batch / timer.seconds:.1f}", "peak RSS GiB": f"{peak_rss_gib():.2f}"}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            rows.append(measure(precision, Path(tmp)))
            print(rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    out = REPO / "experiments" / "results_training.md"
    out.write_text(
        f"# Training throughput (quickstart configuration)\n\nMachine: {machine()}.\n\n"
        f"`model=tiny`, 64x64, batch 16, channels-last, AdamW, clipping, EMA, through `train()`; "
        f"steps {WARMUP_STEPS + 1}-{WARMUP_STEPS + TIMED_STEPS} timed. Peak RSS is the process's "
        f"(cumulative over the rows above it). On the CPU Lightning runs `16-mixed` as "
        f"`bf16-mixed` (fp16 autocast is a GPU feature), so that row repeats bf16.\n\n{table}\n\n"
        "## The quickstart\n\n`/usr/bin/time make demo` (venv present, scenes not yet cached): "
        "11 min 31 s wall time, 194 % CPU, peak RSS 2.0 GiB, 1,500 steps at 2.2-2.4 steps/s "
        "(35-38 images/s, validation grids included in the wall time). Final EMA "
        "`val/scene_agreement` 0.776 (the 0.606 logged against other masks was inflated by a pairing bug, fixed since: the true other-mask agreement is about 0.26), `val/loss` 0.069.\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
