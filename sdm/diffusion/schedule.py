"""Noise schedule construction.

One function turns the ``conf/diffusion`` group into a diffusers ``DDPMScheduler``: that
object is the single source of truth for the betas used in training (noising, hybrid loss)
and, through :func:`schedule_kwargs`, for every sampler built at inference time.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDPMScheduler

#: Our schedule names -> diffusers' ``beta_schedule`` names.
BETA_SCHEDULES: dict[str, str] = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
#: What the network's first three output channels predict.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


def _check(schedule: str, prediction_type: str, num_train_timesteps: int) -> None:
    """Fail early with the valid choices, instead of deep inside diffusers."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(
            f"unknown noise schedule {schedule!r}; valid choices: {sorted(BETA_SCHEDULES)}"
        )
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; valid choices: {list(PREDICTION_TYPES)}"
        )
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")


def schedule_kwargs(
    schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
) -> dict[str, Any]:
    """The diffusers keyword arguments shared by every scheduler class (same betas everywhere)."""
    _check(schedule, prediction_type, num_train_timesteps)
    return {
        "num_train_timesteps": int(num_train_timesteps),
        "beta_start": float(beta_start),
        "beta_end": float(beta_end),
        "beta_schedule": BETA_SCHEDULES[schedule],
        "prediction_type": prediction_type,
    }


def build_noise_scheduler(
    schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
    learn_sigma: bool = True,
) -> DDPMScheduler:
    """Build the training scheduler (the paper: linear betas 1e-4..0.02, T = 1000).

    ``learn_sigma`` selects the ``learned_range`` variance (6-channel network output, the
    improved-DDPM interpolation between posterior variance and beta_t); otherwise the
    posterior variance ("fixed_small") is used when this scheduler samples.
    """
    return DDPMScheduler(
        **schedule_kwargs(schedule, num_train_timesteps, beta_start, beta_end, prediction_type),
        variance_type="learned_range" if learn_sigma else "fixed_small",
    )


def noise_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The scheduler settings of a resolved run config: its diffusion group and model.learn_sigma."""
    return {**cfg["diffusion"], "learn_sigma": bool(cfg["model"]["learn_sigma"])}
