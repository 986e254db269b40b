"""Sampling loop with classifier-free guidance, for any configured diffusers scheduler.

Schedulers are stateful (step index, multistep history), so :func:`sample` builds a fresh
one per call from the training schedule's kwargs: the same betas and prediction type the
network was trained with, whatever sampler is chosen.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from sdm.diffusion.schedule import schedule_kwargs

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: Sampler names accepted by :func:`sample` (see :func:`build_sampler_scheduler`).
SAMPLERS: frozenset[str] = frozenset({"ddpm", "ddim", "dpmpp", "unipc"})
#: "leading" (diffusers' default) never starts at t = T-1; prefer "trailing" for few steps.
TIMESTEP_SPACINGS: tuple[str, ...] = ("trailing", "linspace", "leading")


def _split_noise_config(noise_config: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Separate ``learn_sigma`` (a model property) from the schedule kwargs."""
    cfg = {str(k): v for k, v in dict(noise_config).items()}
    learn_sigma = bool(cfg.pop("learn_sigma", True))
    return schedule_kwargs(**cfg), learn_sigma


def build_sampler_scheduler(
    sampler: str,
    noise_config: Mapping[str, Any],
    *,
    timestep_spacing: str = "trailing",
    clip_denoised: bool = True,
) -> SchedulerMixin:
    """A fresh diffusers scheduler for ``sampler`` on the training betas.

    ``clip_denoised`` clips each step's x0 prediction to [-1, 1], as the paper's sampler does
    (DPM-Solver++ and UniPC get it through thresholding with max value 1, which is a clip).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid choices: {sorted(SAMPLERS)}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(
            f"unknown timestep_spacing {timestep_spacing!r}; valid choices: {list(TIMESTEP_SPACINGS)}"
        )
    base, learn_sigma = _split_noise_config(noise_config)
    base["timestep_spacing"] = timestep_spacing
    if sampler == "ddpm":
        return DDPMScheduler(
            **base,
            variance_type="learned_range" if learn_sigma else "fixed_small",
            clip_sample=clip_denoised,
            clip_sample_range=1.0,
        )
    if sampler == "ddim":
        return DDIMScheduler(**base, clip_sample=clip_denoised, set_alpha_to_one=True)
    thresholding = {"thresholding": clip_denoised, "sample_max_value": 1.0}
    if sampler == "dpmpp":
        # Cosine betas end near 1, where lambda(t) diverges; diffusers advises clipping it.
        lambda_min = -5.1 if base["beta_schedule"] == "squaredcos_cap_v2" else -math.inf
        return DPMSolverMultistepScheduler(
            **base,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lambda_min_clipped=lambda_min,
            **thresholding,
        )
    return UniPCMultistepScheduler(**base, **thresholding)


def guided_prediction(
    model_fn: ModelFn,
    x: Tensor,
    t: Tensor,
    cond: Tensor,
    guidance_scale: float,
    learn_sigma: bool,
    paired_cond: Tensor | None = None,
) -> Tensor:
    """Classifier-free guidance: ``u + s * (c - u)`` on the prediction channels only.

    The null condition is an all-zero map. Variance channels (learned sigma) come from the
    conditional pass. Both passes run as one batch of 2B; s = 1 needs only the conditional
    pass, and s = 0 without learned sigma only the unconditional one. ``paired_cond`` is
    ``cat([cond, zeros])`` made once by a sampling loop, so the network sees the same tensor
    at every step (and may reuse what it computed from it).
    """
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    channels = x.shape[1]
    expected = 2 * channels if learn_sigma else channels

    def checked(out: Tensor) -> Tensor:
        if out.shape[1] != expected:
            raise ValueError(
                f"model returned {out.shape[1]} channels; expected {expected} (learn_sigma={learn_sigma})"
            )
        return out.float()

    if guidance_scale == 1.0:
        return checked(model_fn(x, t, cond))
    null = torch.zeros_like(cond)
    if guidance_scale == 0.0 and not learn_sigma:
        return checked(model_fn(x, t, null))
    if paired_cond is None:
        paired_cond = torch.cat([cond, null])
    both = checked(model_fn(torch.cat([x, x]), torch.cat([t, t]), paired_cond))
    out_c, out_u = both.chunk(2)
    pred_c, pred_u = out_c[:, :channels], out_u[:, :channels]
    guided = pred_u + guidance_scale * (pred_c - pred_u)
    return torch.cat([guided, out_c[:, channels:]], dim=1)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    cond: Tensor,
    *,
    noise_config: Mapping[str, Any],
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float = 1.5,
    eta: float = 0.0,
    timestep_spacing: str = "trailing",
    generator: torch.Generator | list[torch.Generator] | None = None,
    x_T: Tensor | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    clip_denoised: bool = True,
    image_channels: int = 3,
    scheduler: SchedulerMixin | None = None,
) -> Tensor:
    """Generate B images (B x 3 x H x W in [-1, 1]) for the condition maps ``cond`` (B x C x H x W).

    ``model_fn(x, t, cond)`` returns 3 channels, or 6 with learned sigma (``noise_config``
    holds the kwargs of ``build_noise_scheduler``, ``learn_sigma`` included). All noise is
    drawn from ``generator`` (a list gives each batch item its own stream);
    ``callback(i, num_steps, x)`` runs after every step. A ready ``scheduler`` (a diffusers
    pipeline's component) replaces the one ``sampler`` names; its step gets the generator and eta
    where it takes them, and the variance channels where it learns the variance.
    """
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if scheduler is None:
        scheduler = build_sampler_scheduler(
            sampler, noise_config, timestep_spacing=timestep_spacing, clip_denoised=clip_denoised
        )
    _, learn_sigma = _split_noise_config(noise_config)
    total = scheduler.config.num_train_timesteps
    if not 1 <= int(num_steps) <= total:
        raise ValueError(f"num_steps must be in [1, {total}], got {num_steps}")

    device = cond.device
    # DDPM/DDIM index CPU tables with the timestep, so their timesteps stay on the CPU.
    multistep = isinstance(scheduler, DPMSolverMultistepScheduler | UniPCMultistepScheduler)
    scheduler.set_timesteps(int(num_steps), device=device if multistep else None)
    shape = (cond.shape[0], image_channels, *cond.shape[2:])
    if x_T is None:
        x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
        x = x_T.to(device=device, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma

    accepts = set(inspect.signature(scheduler.step).parameters)
    step_kwargs: dict[str, Any] = {"generator": generator} if "generator" in accepts else {}
    if "eta" in accepts:  # DDIM
        step_kwargs.update(eta=float(eta), use_clipped_model_output=clip_denoised)
    learned_variance = scheduler.config.get("variance_type") in ("learned", "learned_range")

    timesteps = scheduler.timesteps
    paired_cond = torch.cat([cond, torch.zeros_like(cond)])
    # an SDMUNet computes its SPADE modulation once per mask instead of once per step
    reuse = getattr(model_fn, "reuse_condition", contextlib.nullcontext)
    with reuse():
        for i, t in enumerate(timesteps):
            t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            x_in = scheduler.scale_model_input(x, t)
            out = guided_prediction(model_fn, x_in, t_batch, cond, guidance_scale, learn_sigma, paired_cond)
            if not learned_variance:
                out = out[:, :image_channels]  # DDIM/UniPC would misread the variance channels
            x = scheduler.step(out, t, x, **step_kwargs).prev_sample.float()
            if callback is not None:
                callback(i, len(timesteps), x)
    return x.clamp(-1.0, 1.0)
