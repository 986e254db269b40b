"""The LightningModule: the U-Net, its EMA, the hybrid loss, the optimizer, validation grids."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from sdm.core.errors import SDMError
from sdm.core.seeding import stable_seed
from sdm.core.viz import grid, to_uint8_image
from sdm.data.classes import class_table
from sdm.diffusion import add_noise, build_noise_scheduler, hybrid_loss, noise_config, sample
from sdm.models import build_unet, drop_condition, label_to_condition
from sdm.training.ema import EMA, ema_decay


class DivergedError(SDMError):
    """The loss became NaN, infinite or absurdly large; training stops instead of going on."""


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0, cosine: bool = True) -> float:
    """LR multiplier: linear warm-up from 0, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def training_seed(seed: int, step: int, micro_batch: int, sample: int) -> int:
    """Seed of one training sample's (drop, t, noise): a hash of its coordinates, `sample` being
    its index in the global batch. Resume is exact, no two samples of a run share a stream (a sum
    such as seed * P + step would give seed 1 at step 0 the stream of seed 0 at step P), and the
    draws do not depend on how the global batch is split over GPUs."""
    return stable_seed("train", seed, step, micro_batch, sample)


def draw_noise(generators: torch.Generator | list[torch.Generator], shape: tuple[int, ...], num_timesteps: int,
               device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(uniform for the mask drop, t, noise) for a batch of `shape`: in batch order from one
    generator, or each sample from its own (a list, one per sample)."""
    if isinstance(generators, torch.Generator):
        b = shape[0]
        return (torch.rand(b, device=device, generator=generators),
                torch.randint(0, num_timesteps, (b,), device=device, generator=generators),
                torch.randn(shape, device=device, generator=generators, dtype=dtype))
    parts = [draw_noise(g, (1, *shape[1:]), num_timesteps, device, dtype) for g in generators]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


class SDMModule(L.LightningModule):
    """Trains SDM; `cfg` is the resolved run config as a plain dict (saved in checkpoints)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        self.unet = build_unet(cfg)
        self.ema = EMA(self.unet, cfg["ema"]["decay"], cfg["ema"]["warmup"])
        self._ema_updates = 0  # EMA updates so far (on_train_start reads a restored count)
        self.scheduler = build_noise_scheduler(**noise_config(cfg))
        self.num_timesteps = int(cfg["diffusion"]["num_train_timesteps"])
        self.drop_prob = float(cfg["guidance"]["drop_prob"])
        if cfg.get("compile"):
            self.unet.compile()  # in place: the state dict keeps its keys, checkpoints stay portable
        self.channels_last = bool(cfg.get("channels_last", False))
        self._val_batch: dict[str, Tensor] | None = None
        # (samples, labels, per_mask) -> metrics of the validation grid; set by training.py, so the
        # module never holds a metric network (sdm.training.validation)
        self.sample_scorer: Callable[[Tensor, Tensor, int], dict[str, float]] | None = None
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)

    def condition(self, label: Tensor, instance: Tensor | None = None) -> Tensor:
        """uint8 ids -> one-hot (+ edge) map on the device, in the network's memory format; the edge
        channel marks the boundaries of `instance` ids where the data has them, else of the classes."""
        cond = label_to_condition(label.long(), self.unet.num_classes, self.unet.edge_channel, instance)
        return cond.contiguous(memory_format=torch.channels_last) if self.channels_last else cond

    def _generators(self, stream: int, batch_size: int) -> list[torch.Generator]:
        """One random stream per sample of this rank's micro-batch. Rank r holds the samples at
        positions r, r + world, ... of the global batch (sdm.data.datamodule), so every sample
        gets the same draws however many GPUs share the batch: 2 x 4 trains as 1 x 8."""
        rank, world, seed = self.global_rank, self.trainer.world_size, int(self.cfg["seed"])
        return [torch.Generator(device=self.device).manual_seed(
                    training_seed(seed, self.global_step, stream, rank + world * j)) for j in range(batch_size)]

    def diffusion_losses(self, batch: dict[str, Tensor], generators: torch.Generator | list[torch.Generator],
                         drop_prob: float, network: torch.nn.Module) -> tuple[dict[str, Tensor], Tensor]:
        x0 = batch["image"]
        uniform, t, noise = draw_noise(generators, tuple(x0.shape), self.num_timesteps, self.device, x0.dtype)
        cond = drop_condition(self.condition(batch["label"], batch.get("instance")), uniform < drop_prob)
        x_t = add_noise(self.scheduler, x0, noise, t)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        out = network(x_t, t, cond)
        losses = hybrid_loss(out, x0, x_t, t, noise, self.scheduler,
                             learn_sigma=self.unet.out_channels == 6,
                             vlb_weight=float(self.cfg["loss"]["vlb_weight"]))
        return losses, t

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        stream = batch_idx % self.trainer.accumulate_grad_batches
        generators = self._generators(stream, batch["image"].shape[0])
        losses, t = self.diffusion_losses(batch, generators, self.drop_prob, self.unet)
        loss = losses["loss"].mean()
        # every rank must stop together, or DDP would wait forever in the gradient all-reduce
        limit = float(self.cfg["loss"]["diverged_above"])
        value = loss.detach().float().item()  # one host sync per step, as logging the loss costs anyway
        diverged = not math.isfinite(value) or value > limit
        if self.trainer.strategy.reduce_boolean_decision(diverged, all=False):
            raise DivergedError(
                f"training diverged: loss {value:.4g} on rank {self.global_rank} (or a bad loss on another "
                f"rank) at step {self.global_step}, where a healthy loss is about 0.01 to 2 "
                f"(loss.diverged_above={limit:g}); training stopped. The last checkpoint was written before this "
                "step. Lower optim.lr, use trainer.precision=bf16-mixed or 32-true, or check the data"
            )
        self.log_losses("train", losses, t)
        return loss

    def log_losses(self, stage: str, losses: dict[str, Tensor], t: Tensor) -> None:
        on_step = stage == "train"
        for name in ("loss", "mse", "vlb"):
            self.log(f"{stage}/{name}", losses[name].mean(), on_step=on_step, on_epoch=not on_step,
                     prog_bar=name == "loss", sync_dist=not on_step)
        quarter = (t * 4 // self.num_timesteps).clamp(max=3)
        for q in range(4):
            chosen = quarter == q
            if chosen.any():
                # rank-local: a quarter may be missing from one rank's batch, and a synced
                # metric that only some ranks log would put the collectives out of step
                self.log(f"{stage}/mse_q{q}", losses["mse"][chosen].mean(), on_step=on_step,
                         on_epoch=not on_step, batch_size=int(chosen.sum()))

    def on_train_start(self) -> None:
        self._ema_updates = int(self.ema.n_averaged)  # counted here on: no device sync per step

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # the first update copies the weights (decay 0), later ones average with ema_decay
        used = ema_decay(self.ema.decay, self._ema_updates, self.ema.warmup) if self._ema_updates else 0.0
        self.ema.update_parameters(self.unet)
        self._ema_updates += 1
        self.log("train/ema_decay", used, on_step=True, on_epoch=False)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Loss of the EMA weights, with noise fixed per row (by its index in the validation set;
        per batch where rows carry no index) so curves compare across steps, runs and GPU counts."""
        if "index" in batch:
            generators: torch.Generator | list[torch.Generator] = [
                torch.Generator(device=self.device).manual_seed(10_007 + int(i)) for i in batch["index"]]
        else:
            generators = torch.Generator(device=self.device).manual_seed(10_007 + batch_idx)
        losses, t = self.diffusion_losses(batch, generators, 0.0, self.ema.module)
        self.log_losses("val", losses, t)
        if batch_idx == 0 and self._val_batch is None:
            n = int(self.cfg["validation"]["num_masks"])
            data = getattr(self.trainer, "datamodule", None)
            first = data.first_val_rows(n) if hasattr(data, "first_val_rows") else None
            source = first if first is not None else batch
            self._val_batch = {k: v[:n].detach().clone().to(self.device) for k, v in source.items() if k != "index"}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self._val_batch is None or not self.trainer.is_global_zero:
            return
        if int(self.cfg["validation"]["num_masks"]) < 1:
            return
        picture, samples = self.sample_grid(self._val_batch)
        if self.sample_scorer is not None:
            per_mask = samples.shape[0] // len(self._val_batch["label"])
            for name, value in self.sample_scorer(samples, self._val_batch["label"], per_mask).items():
                self.log(name, value, rank_zero_only=True)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("samples/mask_real_samples", picture, self.global_step, dataformats="HWC")

    @torch.no_grad()
    def sample_images(self, label: Tensor, num_per_mask: int, *, steps: int | None = None,
                      instance: Tensor | None = None,
                      guidance: float | None = None, seed: int = 0) -> Tensor:
        """EMA samples for each mask: (B * num_per_mask) x 3 x H x W in [-1, 1]."""
        sampler = self.cfg["sampler"]
        edges = None if instance is None else instance.to(self.device)
        cond = self.condition(label.to(self.device), edges).repeat_interleave(num_per_mask, dim=0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16()):
            return sample(
                self.ema.module, cond, noise_config=noise_config(self.cfg), sampler=sampler["name"],
                num_steps=int(steps or sampler["num_steps"]),
                guidance_scale=float(sampler["guidance_scale"] if guidance is None else guidance),
                eta=float(sampler["eta"]), timestep_spacing=sampler["timestep_spacing"], generator=generator,
            ).float()

    def _bf16(self) -> bool:
        return "bf16" in str(self.trainer.precision) if self._trainer is not None else False

    def sample_grid(self, batch: dict[str, Tensor]) -> tuple[np.ndarray, Tensor]:
        """One row per validation mask: coloured mask | real image | samples (and the samples)."""
        val = self.cfg["validation"]
        per_mask = int(val["samples_per_mask"])
        samples = self.sample_images(batch["label"], per_mask, steps=int(val["num_steps"]), seed=0,
                                     instance=batch.get("instance"))
        rows = []
        for i, label in enumerate(batch["label"]):
            row = [class_table(self.cfg["data"]).colorize(label.cpu().numpy()), to_uint8_image(batch["image"][i])]
            row += [to_uint8_image(s) for s in samples[i * per_mask : (i + 1) * per_mask]]
            rows.append(row)
        return grid(rows), samples

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.cfg["optim"]
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=float(opt["lr"]), betas=tuple(opt["betas"]),
            weight_decay=float(opt["weight_decay"]), eps=float(opt.get("eps", 1e-8)),
        )
        total = int(self.cfg["trainer"]["max_steps"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, int(opt["warmup_steps"]), total,
                                       float(opt["min_lr_ratio"]), opt["schedule"] == "cosine"),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
