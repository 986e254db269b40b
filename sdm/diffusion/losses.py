"""The hybrid loss of improved DDPM / SDM: ``L_simple + lambda * L_vlb``.

diffusers ships schedules but no variational bound, so the VLB term lives here. Everything
is derived from the scheduler's own ``betas`` (one source of truth), tabulated once per
device in float64, and evaluated with autocast disabled: the KL of two nearly equal
Gaussians is a small difference of large numbers, which bf16/fp16 would destroy.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, fields

import torch
from torch import Tensor

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class DiffusionTables:
    """Per-timestep float64 constants of the forward process and its posterior q(x_{t-1}|x_t,x0)."""

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    log_betas: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiffusionTables:
        """Closed forms of Ho et al. (2020), eqs. 6-7; the log variance at t = 0 (where the
        posterior variance is 0) is clipped to the value at t = 1, as in improved DDPM."""
        betas = betas.detach().to(torch.float64)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        first = post_var[1:2] if post_var.numel() > 1 else betas[:1]
        return cls(
            betas=betas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
            log_betas=betas.log(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=torch.cat([first, post_var[1:]]).log(),
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        )

    def to(self, device: torch.device) -> DiffusionTables:
        return DiffusionTables(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def at(self, name: str, t: Tensor, ndim: int = 4) -> Tensor:
        """Gather table ``name`` at timesteps ``t`` (shape B), shaped to broadcast over images."""
        values = getattr(self, name)[t.to(device=self.betas.device, dtype=torch.long)]
        return values.reshape(-1, *([1] * (ndim - 1)))


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def diffusion_tables(scheduler, device: torch.device | str | None = None) -> DiffusionTables:
    """Float64 tables for ``scheduler`` on ``device``, built once and cached (schedules are fixed)."""
    device = torch.device(device if device is not None else "cpu")
    per_device = _TABLES.setdefault(scheduler, {})
    if device not in per_device:
        cpu = torch.device("cpu")
        if cpu not in per_device:
            per_device[cpu] = DiffusionTables.from_betas(scheduler.betas.cpu())
        per_device[device] = per_device[cpu].to(device)
    return per_device[device]


def prediction_type_of(scheduler) -> str:
    pred = scheduler.config.prediction_type
    if pred not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {pred!r} unsupported; use 'epsilon' or 'v_prediction'")
    return pred


def add_noise(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Sample q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the same tables as the loss."""
    tab = diffusion_tables(scheduler, x0.device)
    a = tab.at("sqrt_alphas_cumprod", t, x0.ndim)
    s = tab.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim)
    return (a * x0.double() + s * noise.double()).to(x0.dtype)


def training_target(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the first three output channels regress: eps, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    if prediction_type_of(scheduler) == "epsilon":
        return noise
    tab = diffusion_tables(scheduler, x0.device)
    a = tab.at("sqrt_alphas_cumprod", t, x0.ndim)
    s = tab.at("sqrt_one_minus_alphas_cumprod", t, x0.ndim)
    return (a * noise.double() - s * x0.double()).to(x0.dtype)


def predict_x0(
    tab: DiffusionTables, x_t: Tensor, t: Tensor, pred: Tensor, prediction_type: str
) -> Tensor:
    """Invert the forward process: x0 from x_t and the network's eps (or v) prediction."""
    a = tab.at("sqrt_alphas_cumprod", t, x_t.ndim)
    s = tab.at("sqrt_one_minus_alphas_cumprod", t, x_t.ndim)
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a
    return a * x_t - s * pred


def q_posterior(
    tab: DiffusionTables, x0: Tensor, x_t: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
    mean = (
        tab.at("posterior_mean_coef1", t, x_t.ndim) * x0
        + tab.at("posterior_mean_coef2", t, x_t.ndim) * x_t
    )
    var = tab.at("posterior_variance", t, x_t.ndim)
    logvar = tab.at("posterior_log_variance_clipped", t, x_t.ndim)
    return mean, var.expand_as(x_t), logvar.expand_as(x_t)


def learned_log_variance(tab: DiffusionTables, frac: Tensor, t: Tensor) -> Tensor:
    """Improved-DDPM variance: interpolate log(beta_t) and log(posterior variance) by (frac+1)/2."""
    frac01 = (frac + 1.0) / 2.0
    max_log = tab.at("log_betas", t, frac.ndim)
    min_log = tab.at("posterior_log_variance_clipped", t, frac.ndim)
    return frac01 * max_log + (1.0 - frac01) * min_log


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of 8-bit data in [-1, 1] under N(mean, e^{2 log_scale}) integrated over each bin.

    Bins have width 2/255; the end bins extend to -inf and +inf. Probabilities are floored
    at 1e-12 (as in improved DDPM) so a single outlier pixel costs at most 27.6 nats and its
    gradient stays bounded. The exact normal CDF replaces guided-diffusion's tanh
    approximation.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    floor = math.log(1e-12)
    log_cdf_upper = torch.special.log_ndtr(upper).clamp(min=floor)
    log_sf_lower = torch.special.log_ndtr(-lower).clamp(min=floor)
    # difference of CDFs on the mean's side of the bin, where both are small (no cancellation)
    delta = torch.where(
        centered > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_delta = torch.log(delta.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_delta))


def _mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def vlb_terms(
    tab: DiffusionTables,
    pred_frozen: Tensor,
    frac: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    prediction_type: str,
) -> Tensor:
    """Per-sample L_t in bits: KL(q || p) for t > 0, decoder NLL of x0 for t = 0."""
    true_mean, _, true_logvar = q_posterior(tab, x0, x_t, t)
    x0_hat = predict_x0(tab, x_t, t, pred_frozen, prediction_type)
    model_mean, _, _ = q_posterior(tab, x0_hat, x_t, t)
    model_logvar = learned_log_variance(tab, frac, t)
    kl = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / _LOG2
    nll = (
        -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / _LOG2
    )
    return torch.where(t.to(kl.device) == 0, nll, kl)


def hybrid_loss(
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    scheduler,
    *,
    learn_sigma: bool,
    vlb_weight: float = 0.001,
) -> dict[str, Tensor]:
    """Per-sample (shape B) ``loss``, ``mse`` and ``vlb`` (bits; zeros without learned sigma).

    ``vlb`` is the single-timestep term L_t; the bound is L_vlb = T * E_t[L_t], so
    ``loss = mse + vlb_weight * T * vlb`` (= mse + vlb for the paper's T = 1000, lambda = 0.001).
    The VLB sees a detached eps/v prediction, so it trains only the variance channels.
    """
    channels = x0.shape[1]
    expected = 2 * channels if learn_sigma else channels
    if model_output.shape[1] != expected:
        raise ValueError(
            f"model_output has {model_output.shape[1]} channels; expected {expected} "
            f"(learn_sigma={learn_sigma}, image channels={channels})"
        )
    prediction_type = prediction_type_of(scheduler)
    with torch.autocast(device_type=model_output.device.type, enabled=False):
        out = model_output.float()
        pred = out[:, :channels]
        target = training_target(scheduler, x0.float(), noise.float(), t).float()
        mse = _mean_flat((pred - target) ** 2)
        if learn_sigma:
            tab = diffusion_tables(scheduler, model_output.device)
            vlb = vlb_terms(
                tab,
                pred.detach().double(),
                out[:, channels:].double(),
                x0.double(),
                x_t.double(),
                t,
                prediction_type,
            ).float()
        else:
            vlb = torch.zeros_like(mse)
        loss = mse + vlb_weight * scheduler.config.num_train_timesteps * vlb
    return {"loss": loss, "mse": mse, "vlb": vlb}
