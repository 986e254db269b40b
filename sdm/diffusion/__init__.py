"""Diffusion maths: noise schedule, hybrid loss, sampling with classifier-free guidance."""

from sdm.diffusion.losses import add_noise, hybrid_loss, training_target
from sdm.diffusion.sampling import SAMPLERS, guided_prediction, sample
from sdm.diffusion.schedule import build_noise_scheduler, noise_config

__all__ = [
    "SAMPLERS",
    "add_noise",
    "build_noise_scheduler",
    "guided_prediction",
    "hybrid_loss",
    "noise_config",
    "sample",
    "training_target",
]
