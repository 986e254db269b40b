"""Tests of sdm.diffusion: schedule, hybrid loss (against independent closed forms and the
diffusers scheduler's own posterior), guidance and every sampler (oracle and Gaussian data)."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sdm.diffusion import (
    SAMPLERS,
    add_noise,
    build_noise_scheduler,
    guided_prediction,
    hybrid_loss,
    noise_config,
    sample,
    training_target,
)
from sdm.diffusion.losses import (
    diffusion_tables,
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    normal_kl,
    q_posterior,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
T = 1000


def _np_betas(schedule: str = "linear") -> np.ndarray:
    """Betas written independently of diffusers (improved-DDPM cosine with cap 0.999)."""
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, T, dtype=np.float64)

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])


def _np_posterior(betas: np.ndarray, t: int, x0: np.ndarray, xt: np.ndarray):
    """q(x_{t-1} | x_t, x0) by Bayes' rule on two Gaussians (not the DDPM coefficient formulas)."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = abar[t - 1] if t > 0 else 1.0
    # prior q(x_{t-1}|x0) = N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood q(x_t|x_{t-1}).
    prec = 1.0 / (1.0 - abar_prev) + alphas[t] / betas[t] if t > 0 else np.inf
    var = 1.0 / prec
    mean = (
        var * (math.sqrt(abar_prev) * x0 / (1.0 - abar_prev) + math.sqrt(alphas[t]) * xt / betas[t])
        if t > 0
        else x0
    )
    return mean, var


def _np_kl(m1, v1, m2, v2):
    return np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def _ref_discretized_loglik(x, mean, std):
    """Bins of width 2/255 around 8-bit values, the end bins reaching to infinity, integrated
    with 40-digit arithmetic; probabilities floored at 1e-12 like the loss."""
    mpmath.mp.dps = 40
    out = []
    for xi, mi, si in zip(np.ravel(x), np.ravel(mean), np.ravel(std), strict=True):
        hi = mpmath.inf if xi > 0.999 else mpmath.mpf(float(xi)) + mpmath.mpf(1) / 255
        lo = -mpmath.inf if xi < -0.999 else mpmath.mpf(float(xi)) - mpmath.mpf(1) / 255
        p = mpmath.ncdf(hi, mu=float(mi), sigma=float(si)) - mpmath.ncdf(
            lo, mu=float(mi), sigma=float(si)
        )
        out.append(float(mpmath.log(max(p, mpmath.mpf(1e-12)))))
    return np.reshape(np.array(out), np.shape(x))


def _eight_bit(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen).double() / 127.5 - 1.0


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_betas_match_independent_formula(schedule):
    sch = build_noise_scheduler(schedule)
    np.testing.assert_allclose(
        sch.betas.double().numpy(), _np_betas(schedule), rtol=1e-5, atol=1e-7
    )
    assert sch.config.variance_type == "learned_range"
    assert build_noise_scheduler(learn_sigma=False).config.variance_type == "fixed_small"
    assert build_noise_scheduler(prediction_type="v_prediction").config.prediction_type == (
        "v_prediction"
    )


def test_schedule_bad_names_raise_with_choices():
    with pytest.raises(ValueError, match="valid choices.*cosine.*linear"):
        build_noise_scheduler("quadratic")
    with pytest.raises(ValueError, match="valid choices.*epsilon"):
        build_noise_scheduler(prediction_type="sample")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_diffusion_configs_build(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "diffusion" / f"{name}.yaml"))
    assert cfg["schedule"] == name
    scheduler = build_noise_scheduler(**cfg, learn_sigma=True)
    assert scheduler.config.num_train_timesteps == T and scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.variance_type == "learned_range"
    np.testing.assert_allclose(scheduler.betas.double().numpy(), _np_betas(name), rtol=1e-6, atol=1e-9)
    assert build_noise_scheduler(**cfg, learn_sigma=False).config.variance_type == "fixed_small"


def test_noise_config_is_the_diffusion_group_with_the_models_learn_sigma():
    """Training and sampling build their scheduler from a run config: every key of its diffusion
    group, and learn_sigma from the model group (it decides the network's 6 output channels)."""
    diffusion = OmegaConf.to_container(OmegaConf.load(CONF / "diffusion" / "cosine.yaml"))
    cfg = {"diffusion": diffusion, "model": {"name": "tiny", "learn_sigma": True}, "data": {"num_classes": 5}}
    assert noise_config(cfg) == {**diffusion, "learn_sigma": True}
    scheduler = build_noise_scheduler(**noise_config(cfg))
    assert scheduler.config.variance_type == "learned_range"
    np.testing.assert_allclose(scheduler.betas.double().numpy(), _np_betas("cosine"), rtol=1e-6, atol=1e-9)
    fixed = noise_config({**cfg, "model": {"name": "tiny", "learn_sigma": False}})
    assert fixed == {**diffusion, "learn_sigma": False}
    assert build_noise_scheduler(**fixed).config.variance_type == "fixed_small"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_configs(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "sampler" / f"{name}.yaml"))
    assert set(cfg) == {"name", "num_steps", "eta", "timestep_spacing", "guidance_scale"}
    assert cfg["name"] == name and cfg["guidance_scale"] == 1.5
    assert cfg["timestep_spacing"] == "trailing"
    assert cfg["num_steps"] == 1000 if name == "ddpm" else cfg["num_steps"] <= 50


# --------------------------------------------------------------------------- posterior / VLB


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_tables_match_bayes_posterior(schedule):
    sch = build_noise_scheduler(schedule)
    tab = diffusion_tables(sch)
    betas = sch.betas.double().numpy()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    xt = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 7, 500, 999])
    mean, var, logvar = q_posterior(tab, x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        m_ref, v_ref = _np_posterior(betas, ti, x0[i].numpy(), xt[i].numpy())
        np.testing.assert_allclose(mean[i].numpy(), m_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(var[i].numpy(), v_ref, rtol=1e-9)
        np.testing.assert_allclose(logvar[i].numpy(), np.log(v_ref), rtol=1e-9)
    # the clipped log variance at t = 0 borrows the value at t = 1
    assert tab.posterior_variance[0] == 0
    assert tab.posterior_log_variance_clipped[0] == tab.posterior_log_variance_clipped[1]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_posterior_and_learned_variance_match_diffusers_step(learn_sigma):
    """DDPMScheduler.step = posterior mean (from the exact x0) + exp(logvar / 2) * z.

    The scheduler's tables are lifted to float64 so that its formulas, not its float32
    rounding (amplified ~150x when x0 is recovered at t = 999), are compared.
    """
    sch = build_noise_scheduler(learn_sigma=learn_sigma)
    sch.register_to_config(clip_sample=False)
    tab = diffusion_tables(sch)
    sch.betas = sch.betas.double()
    sch.alphas = 1.0 - sch.betas
    sch.alphas_cumprod = torch.cumprod(sch.alphas, 0)
    sch.one = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 3, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1
    for ti in [1, 2, 10, 250, 999]:
        t = torch.tensor([ti])
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        xt = add_noise(sch, x0, noise, t)
        frac = torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2 - 1
        out = torch.cat([noise, frac], 1) if learn_sigma else noise
        prev = sch.step(out, ti, xt, generator=torch.Generator().manual_seed(5)).prev_sample
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        mean, var, _ = q_posterior(tab, x0, xt, t)
        logvar = learned_log_variance(tab, frac, t) if learn_sigma else var.log()
        torch.testing.assert_close(prev, mean + torch.exp(0.5 * logvar) * z, rtol=0, atol=1e-9)
    # and the untouched float32 scheduler agrees to float32 rounding
    sch32 = build_noise_scheduler(learn_sigma=learn_sigma)
    sch32.register_to_config(clip_sample=False)
    out32 = out.float()
    prev = sch32.step(out32, 999, xt.float(), generator=torch.Generator().manual_seed(5))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    ref = mean + torch.exp(0.5 * logvar) * z.double()
    torch.testing.assert_close(prev.prev_sample.double(), ref, rtol=0, atol=2e-4)


def test_normal_kl_matches_closed_form():
    gen = np.random.default_rng(0)
    m1, m2 = gen.normal(size=100), gen.normal(size=100)
    v1, v2 = gen.uniform(1e-4, 2, 100), gen.uniform(1e-4, 2, 100)
    got = normal_kl(*(torch.from_numpy(a) for a in (m1, np.log(v1), m2, np.log(v2))))
    np.testing.assert_allclose(got.numpy(), _np_kl(m1, v1, m2, v2), rtol=1e-9, atol=1e-12)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.from_numpy(m1), torch.from_numpy(v1).sqrt()),
        torch.distributions.Normal(torch.from_numpy(m2), torch.from_numpy(v2).sqrt()),
    )
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-9, atol=1e-12)


def test_discretized_loglik_matches_high_precision_and_normalises():
    gen = torch.Generator().manual_seed(0)
    x = _eight_bit((2000,), gen)
    x[:5], x[5:10] = -1.0, 1.0
    mean = torch.rand(2000, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    log_std = torch.rand(2000, generator=gen, dtype=torch.float64) * 5 - 6  # std 0.0025..0.37
    got = discretized_gaussian_log_likelihood(x, mean, log_std).numpy()
    ref = _ref_discretized_loglik(x.numpy(), mean.numpy(), np.exp(log_std.numpy()))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    # the 256 bins carry all the probability
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    for m, s in [(0.0, 0.3), (0.95, 0.05), (-1.3, 0.5)]:
        lp = discretized_gaussian_log_likelihood(bins, torch.tensor(m), torch.tensor(math.log(s)))
        assert abs(lp.exp().sum().item() - 1.0) < 1e-9


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vlb_matches_independent_computation(prediction_type):
    sch = build_noise_scheduler(prediction_type=prediction_type)
    betas = sch.betas.double().numpy()
    abar = np.cumprod(1 - betas)
    gen = torch.Generator().manual_seed(2)
    x0 = _eight_bit((5, 3, 4, 4), gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 3, 400, 999])
    xt = add_noise(sch, x0, noise, t)
    out = torch.randn(5, 6, 4, 4, generator=gen, dtype=torch.float64)
    out[:, 3:] = out[:, 3:].tanh()
    terms = hybrid_loss(out, x0, xt, t, noise, sch, learn_sigma=True)
    for i, ti in enumerate(t.tolist()):
        a, s = math.sqrt(abar[ti]), math.sqrt(1 - abar[ti])
        xt_i, pred = xt[i].numpy(), out[i, :3].numpy()
        x0_hat = (xt_i - s * pred) / a if prediction_type == "epsilon" else a * xt_i - s * pred
        post_var_1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
        post_var = betas[ti] * (1 - abar[ti - 1]) / (1 - abar[ti]) if ti > 0 else post_var_1
        frac = (out[i, 3:].numpy() + 1) / 2
        model_var = np.exp(frac * np.log(betas[ti]) + (1 - frac) * np.log(post_var))
        if ti == 0:
            model_mean = x0_hat  # posterior mean at t = 0 is x0 itself
            ref = -_ref_discretized_loglik(x0[i].numpy(), model_mean, np.sqrt(model_var)).mean()
        else:
            m_true, v_true = _np_posterior(betas, ti, x0[i].numpy(), xt_i)
            m_model, _ = _np_posterior(betas, ti, x0_hat, xt_i)
            ref = _np_kl(m_true, v_true, m_model, model_var).mean()
        assert terms["vlb"][i].item() == pytest.approx(ref / math.log(2), rel=1e-6, abs=1e-6)
    target = training_target(sch, x0, noise, t)
    mse = ((out[:, :3] - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["mse"].double(), mse, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vlb"], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- loss properties


def _batch(sch, b=4, seed=0, hw=8):
    gen = torch.Generator().manual_seed(seed)
    x0 = _eight_bit((b, 3, hw, hw), gen).float()
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, T, (b,), generator=gen)
    return x0, noise, t, add_noise(sch, x0, noise, t)


def test_add_noise_matches_diffusers():
    sch = build_noise_scheduler()
    x0, noise, t, xt = _batch(sch)
    torch.testing.assert_close(xt, sch.add_noise(x0, noise, t), rtol=0, atol=2e-6)
    v = training_target(build_noise_scheduler(prediction_type="v_prediction"), x0, noise, t)
    torch.testing.assert_close(v, sch.get_velocity(x0, noise, t), rtol=0, atol=2e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_mse_is_zero_for_perfect_prediction(prediction_type):
    sch = build_noise_scheduler(prediction_type=prediction_type)
    x0, noise, t, xt = _batch(sch)
    target = training_target(sch, x0, noise, t)
    out = torch.cat([target, torch.zeros_like(target)], 1)
    terms = hybrid_loss(out, x0, xt, t, noise, sch, learn_sigma=True)
    assert terms["mse"].abs().max() < 1e-12
    assert terms["loss"].shape == terms["vlb"].shape == (4,)
    assert (terms["vlb"][t > 0] >= 0).all()


def test_vlb_gradient_reaches_only_variance_channels():
    sch = build_noise_scheduler()
    x0, noise, t, xt = _batch(sch)
    t = torch.tensor([0, 1, 500, 999])  # both branches: decoder NLL and KL
    xt = add_noise(sch, x0, noise, t)
    out = torch.randn(4, 6, 8, 8, requires_grad=True)
    hybrid_loss(out, x0, xt, t, noise, sch, learn_sigma=True)["vlb"].sum().backward()
    assert torch.isfinite(out.grad).all()
    assert out.grad[:, :3].abs().max() == 0
    assert (out.grad[:, 3:].abs().amax(dim=(1, 2, 3)) > 0).all()
    assert out.grad[:, 3:].abs().max() > 0
    out.grad = None
    hybrid_loss(out, x0, xt, t, noise, sch, learn_sigma=True)["mse"].sum().backward()
    assert out.grad[:, 3:].abs().max() == 0 and out.grad[:, :3].abs().max() > 0


def test_no_vlb_without_learned_sigma_and_channel_check():
    sch = build_noise_scheduler(learn_sigma=False)
    x0, noise, t, xt = _batch(sch)
    terms = hybrid_loss(torch.randn(4, 3, 8, 8), x0, xt, t, noise, sch, learn_sigma=False)
    assert (terms["vlb"] == 0).all() and torch.equal(terms["loss"], terms["mse"])
    with pytest.raises(ValueError, match="expected 6"):
        hybrid_loss(torch.randn(4, 3, 8, 8), x0, xt, t, noise, sch, learn_sigma=True)


def test_loss_under_bf16_autocast_is_float32():
    sch = build_noise_scheduler()
    x0, noise, t, xt = _batch(sch)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    ref_out = conv(xt)
    ref = hybrid_loss(ref_out, x0, xt, t, noise, sch, learn_sigma=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(xt)
        assert out.dtype == torch.bfloat16
        same = hybrid_loss(ref_out, x0, xt, t, noise, sch, learn_sigma=True)
        low = hybrid_loss(out, x0, xt, t, noise, sch, learn_sigma=True)
    for k in ("loss", "mse", "vlb"):
        assert same[k].dtype == low[k].dtype == torch.float32
        torch.testing.assert_close(same[k], ref[k], rtol=0, atol=0)
        # only the network output's own bf16 rounding remains
        torch.testing.assert_close(low[k], ref[k], rtol=3e-2, atol=1e-3)


# --------------------------------------------------------------------------- sampling


def _oracle(x0: torch.Tensor, sch, learn_sigma: bool = True):
    """A network that knows x0: returns the true eps (or v) for any x_t."""
    tab = diffusion_tables(sch)
    v_pred = sch.config.prediction_type == "v_prediction"

    def model_fn(x, t, cond):
        ref = x0.repeat(x.shape[0] // x0.shape[0], 1, 1, 1)
        a = tab.at("sqrt_alphas_cumprod", t).float()
        s = tab.at("sqrt_one_minus_alphas_cumprod", t).float()
        eps = (x - a * ref) / s
        pred = a * eps - s * ref if v_pred else eps
        return torch.cat([pred, torch.zeros_like(pred)], 1) if learn_sigma else pred

    return model_fn


ORACLE_CASES = [
    ("ddpm", 1000, "linear", "epsilon"),
    ("ddpm", 50, "cosine", "v_prediction"),
    ("ddim", 50, "linear", "epsilon"),
    ("ddim", 50, "cosine", "v_prediction"),
    ("dpmpp", 50, "linear", "epsilon"),
    ("dpmpp", 25, "cosine", "v_prediction"),
    ("unipc", 50, "linear", "epsilon"),
    ("unipc", 25, "cosine", "v_prediction"),
]


@pytest.mark.parametrize(("sampler", "steps", "schedule", "pred"), ORACLE_CASES)
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_oracle_network_lands_on_x0(sampler, steps, schedule, pred, spacing):
    noise_config = {"schedule": schedule, "prediction_type": pred, "learn_sigma": True}
    sch = build_noise_scheduler(**noise_config)
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.8 - 0.9
    out = sample(
        _oracle(x0, sch),
        torch.zeros(1, 4, 8, 8),
        noise_config=noise_config,
        sampler=sampler,
        num_steps=steps,
        timestep_spacing=spacing,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == x0.shape
    assert (out - x0).abs().max() < 1e-4


def _toy_model(learn_sigma: bool = True):
    """A fixed smooth 'network' that depends on x, t and cond (for determinism tests)."""
    torch.manual_seed(0)
    w = torch.randn(3, 3) * 0.3

    def model_fn(x, t, cond):
        eps = torch.einsum("oc,bchw->bohw", w, x) * (t.float() / T).view(-1, 1, 1, 1)
        eps = eps + 0.2 * cond[:, :3]
        var = torch.tanh(x + cond[:, :3])
        return torch.cat([eps, var], 1) if learn_sigma else eps

    return model_fn


def test_ddim_eta0_deterministic_eta1_stochastic():
    cfg = {"learn_sigma": True}
    cond = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = {"noise_config": cfg, "sampler": "ddim", "num_steps": 20, "x_T": x_T}
    a = sample(_toy_model(), cond, **kw, generator=torch.Generator().manual_seed(0))
    b = sample(_toy_model(), cond, **kw, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c = sample(_toy_model(), cond, **kw, eta=1.0, generator=torch.Generator().manual_seed(0))
    d = sample(_toy_model(), cond, **kw, eta=1.0, generator=torch.Generator().manual_seed(1))
    e = sample(_toy_model(), cond, **kw, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert (c - d).abs().max() > 1e-2 and torch.equal(c, e)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_generator_same_images_and_callback(sampler):
    cond = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    kw = {"noise_config": {"learn_sigma": True}, "sampler": sampler, "num_steps": 10}
    a = sample(_toy_model(), cond, **kw, generator=torch.Generator().manual_seed(0))
    b = sample(
        _toy_model(),
        cond,
        **kw,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, n, x: seen.append(i) or None,
    )
    assert torch.equal(a, b) and seen == list(range(10))
    assert a.shape == (2, 3, 8, 8) and a.abs().max() <= 1


def _trailing(n: int) -> np.ndarray:
    return (np.round(np.arange(T, 0, -T / n)) - 1).astype(int)


def _gaussian_chain(betas, timesteps, mu, sigma, stochastic):
    """Exact mean/std of DDIM (eta = 0) or DDPM (posterior variance) samples when the data are
    N(mu, sigma^2) and eps is the optimal E[eps | x_t]: every step is a linear-Gaussian map."""
    abar = np.cumprod(1 - betas)
    m, v = 0.0, 1.0
    for i, t in enumerate(timesteps):
        a, s = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
        ap = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        d = a * a * sigma**2 + s * s  # x0_hat = mu + g (x - a mu), eps_hat = h (x - a mu)
        g, h = a * sigma**2 / d, s / d
        if stochastic:
            beta = 1 - abar[t] / ap
            c1, c2 = (
                math.sqrt(ap) * beta / (1 - abar[t]),
                math.sqrt(abar[t] / ap) * (1 - ap) / (1 - abar[t]),
            )
            slope, noise_var = c1 * g + c2, (1 - ap) / (1 - abar[t]) * beta
        else:
            slope, noise_var = math.sqrt(ap) * g + math.sqrt(1 - ap) * h, 0.0
        m = slope * m + (
            math.sqrt(ap) * mu - slope * a * mu if not stochastic else c1 * (mu - g * a * mu)
        )
        v = slope**2 * v + noise_var
    return m, math.sqrt(v)


def test_gaussian_data_samplers_agree():
    """x0 ~ N(mu, sigma^2) per pixel has a closed-form optimal eps. DDPM and DDIM must match
    their exact linear-Gaussian statistics; DDPM-1000, DPM++-50 and UniPC-50 the data's."""
    mu, sigma = 0.1, 0.3  # P(|x0| > 1) ~ 1e-3: the final clamp to [-1, 1] barely matters
    sch = build_noise_scheduler(learn_sigma=False)
    tab = diffusion_tables(sch)
    betas = sch.betas.double().numpy()

    def optimal_eps(x, t, cond):
        a = tab.at("sqrt_alphas_cumprod", t).float()
        s = tab.at("sqrt_one_minus_alphas_cumprod", t).float()
        return s * (x - a * mu) / (a**2 * sigma**2 + s**2)

    cond = torch.zeros(8, 1, 32, 32)  # 24576 pixels: standard error of the std ~0.0014
    got = {}
    for name, steps in [("ddpm", 1000), ("ddim", 50), ("dpmpp", 50), ("unipc", 50)]:
        x = sample(
            optimal_eps,
            cond,
            noise_config={"learn_sigma": False},
            sampler=name,
            num_steps=steps,
            guidance_scale=1.0,
            clip_denoised=False,
            generator=torch.Generator().manual_seed(0),
        )
        got[name] = (x.mean().item(), x.std().item())
    exact_ddpm = _gaussian_chain(betas, _trailing(1000), mu, sigma, stochastic=True)
    exact_ddim = _gaussian_chain(betas, _trailing(50), mu, sigma, stochastic=False)
    assert got["ddpm"] == pytest.approx(exact_ddpm, abs=0.006), (got, exact_ddpm)
    assert got["ddim"] == pytest.approx(exact_ddim, abs=0.005), (got, exact_ddim)
    for name in ("ddpm", "dpmpp", "unipc"):
        assert got[name] == pytest.approx((mu, sigma), abs=0.01), got
    # (50-step DDIM is first order: std 0.273 here, not 0.3; 200 steps give 0.293.)


# --------------------------------------------------------------------------- guidance


class _Recorder:
    """A conditional toy model that records the batch sizes it is called with."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.conds: list[torch.Tensor] = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        self.conds.append(cond.clone())
        eps = x * 0.5 + cond[:, :3] * 2 + t.view(-1, 1, 1, 1) / T
        var = torch.tanh(cond[:, :3] - x)
        return torch.cat([eps, var], 1)


def test_guidance_scales_and_batching():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    cond = torch.rand(2, 5, 4, 4, generator=gen) + 0.5
    t = torch.tensor([10, 900])
    m = _Recorder()
    out_c, out_u = m(x, t, cond), m(x, t, torch.zeros_like(cond))
    m.batches.clear()

    torch.testing.assert_close(guided_prediction(m, x, t, cond, 1.0, True), out_c)
    assert m.batches == [2]  # s = 1: one conditional pass
    m.batches.clear()
    s0 = guided_prediction(m, x, t, cond, 0.0, True)
    torch.testing.assert_close(s0[:, :3], out_u[:, :3])
    torch.testing.assert_close(s0[:, 3:], out_c[:, 3:])  # variance from the conditional pass
    g = guided_prediction(m, x, t, cond, 1.5, True)
    assert m.batches == [4, 4]  # cond + uncond in one batch of 2B
    torch.testing.assert_close(g[:, :3], out_u[:, :3] + 1.5 * (out_c[:, :3] - out_u[:, :3]))
    torch.testing.assert_close(g[:, 3:], out_c[:, 3:])

    def eps_only(x, t, c):
        return m(x, t, c)[:, :3]

    m.batches.clear()
    torch.testing.assert_close(guided_prediction(eps_only, x, t, cond, 0.0, False), out_u[:, :3])
    assert m.batches == [2]  # s = 0 without learned sigma: one unconditional pass


def test_guidance_in_sampler_uses_zero_null_condition():
    m = _Recorder()
    cond = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    sample(m, cond, noise_config={}, num_steps=3, guidance_scale=1.5)
    assert m.batches == [2, 2, 2]
    for seen in m.conds:  # the first half is the mask, the second the all-zero null map
        torch.testing.assert_close(seen[:1], cond)
        assert seen[1:].abs().sum() == 0


# --------------------------------------------------------------------------- bad input


def test_bad_sampling_arguments_raise():
    cond = torch.zeros(1, 3, 4, 4)
    kw = {"noise_config": {"learn_sigma": False}}
    with pytest.raises(ValueError, match="valid choices.*ddim.*dpmpp.*unipc"):
        sample(_toy_model(False), cond, **kw, sampler="euler")
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(_toy_model(False), cond, **kw, guidance_scale=-0.5)
    with pytest.raises(ValueError, match="guidance_scale"):
        guided_prediction(_toy_model(False), cond, torch.zeros(1), cond, -1.0, False)
    with pytest.raises(ValueError, match="valid choices.*trailing"):
        sample(_toy_model(False), cond, **kw, timestep_spacing="karras")
    with pytest.raises(ValueError, match="num_steps"):
        sample(_toy_model(False), cond, **kw, num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        sample(_toy_model(False), cond, **kw, num_steps=1001)
    with pytest.raises(ValueError, match="valid choices"):
        sample(_toy_model(False), cond, noise_config={"schedule": "sqrt"})
    with pytest.raises(ValueError, match="expected 6"):
        sample(_toy_model(False), cond, noise_config={"learn_sigma": True})


def test_reusing_the_spade_modulation_changes_nothing_and_saves_work():
    from sdm.models import SDMUNet, label_to_condition

    torch.manual_seed(0)
    unet = SDMUNet(num_classes=5, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_ds=(), spade_hidden=16).eval()
    for p in unet.parameters():  # leave the zero-initialised layers behind
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    label = torch.randint(0, 5, (2, 16, 16))
    cond = label_to_condition(label, 5)
    calls = []
    for spade in [m for m in unet.modules() if type(m).__name__ == "SPADE"]:
        spade.shared.register_forward_hook(lambda *args: calls.append(1))
    kwargs = {"noise_config": {"learn_sigma": True}, "sampler": "ddim", "num_steps": 4, "guidance_scale": 1.5}
    plain = sample(lambda x, t, c: unet(x, t, c), cond, generator=torch.Generator().manual_seed(3), **kwargs)
    plain_calls = len(calls)
    calls.clear()
    reused = sample(unet, cond, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.allclose(plain, reused, atol=1e-6)
    assert len(calls) * 4 == plain_calls  # each SPADE ran its mask convs once instead of per step
    assert all(m.cache is None for m in unet.modules() if type(m).__name__ == "SPADE")


# --------------------------------------------------------------------------- configuration of samplers


def test_sampler_schedulers_carry_the_documented_settings():
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    from sdm.diffusion.sampling import build_sampler_scheduler

    linear = {"schedule": "linear", "learn_sigma": True}
    ddpm = build_sampler_scheduler("ddpm", linear)
    assert isinstance(ddpm, DDPMScheduler) and ddpm.config.timestep_spacing == "trailing"
    assert ddpm.config.variance_type == "learned_range"
    assert ddpm.config.clip_sample is True and ddpm.config.clip_sample_range == 1.0
    fixed = build_sampler_scheduler("ddpm", {"schedule": "linear", "learn_sigma": False})
    assert fixed.config.variance_type == "fixed_small"
    ddim = build_sampler_scheduler("ddim", linear)
    assert isinstance(ddim, DDIMScheduler) and ddim.config.clip_sample is True
    assert ddim.config.set_alpha_to_one is True and ddim.config.clip_sample_range == 1.0
    dpm = build_sampler_scheduler("dpmpp", linear)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert (dpm.config.algorithm_type, dpm.config.solver_order) == ("dpmsolver++", 2)
    assert dpm.config.thresholding is True and dpm.config.sample_max_value == 1.0
    assert dpm.config.lambda_min_clipped == -math.inf
    cosine = build_sampler_scheduler("dpmpp", {"schedule": "cosine", "learn_sigma": True})
    assert cosine.config.lambda_min_clipped == -5.1  # cosine betas end near 1: lambda(t) diverges
    unipc = build_sampler_scheduler("unipc", linear)
    assert isinstance(unipc, UniPCMultistepScheduler)
    assert unipc.config.thresholding is True and unipc.config.sample_max_value == 1.0
    for name in sorted(SAMPLERS):
        assert build_sampler_scheduler(name, linear).config.timestep_spacing == "trailing"
        unclipped = build_sampler_scheduler(name, linear, clip_denoised=False, timestep_spacing="linspace")
        assert unclipped.config.timestep_spacing == "linspace"
        assert not unclipped.config.get("clip_sample", False) and not unclipped.config.get("thresholding", False)


def test_clipping_keeps_predicted_images_in_range():
    """An oracle that predicts x0 = 3 (far outside [-1, 1]): clipped samplers land on 1."""
    noise_cfg = {"schedule": "linear", "learn_sigma": False}
    tab = diffusion_tables(build_noise_scheduler("linear", learn_sigma=False))

    def far_out(x, t, cond):
        a = tab.at("sqrt_alphas_cumprod", t).float()
        s = tab.at("sqrt_one_minus_alphas_cumprod", t).float()
        return (x - a * 3.0) / s  # the eps that makes x0_hat = 3

    cond = torch.zeros(2, 1, 4, 4)
    for name in ("ddim", "dpmpp", "unipc"):
        x = sample(far_out, cond, noise_config=noise_cfg, sampler=name, num_steps=10, guidance_scale=1.0,
                   generator=torch.Generator().manual_seed(0))
        assert torch.allclose(x, torch.ones_like(x), atol=1e-3), name


def test_guidance_pairs_each_sample_with_its_own_unconditional_pass():
    """B = 3: the guided output of sample i mixes the cond and null passes of sample i only."""
    x = torch.randn(3, 3, 2, 2)
    t = torch.tensor([5, 6, 7])
    cond = torch.rand(3, 4, 2, 2) + 1

    def model(x_in, t_in, c):
        eps = x_in * 0 + c.sum(1, keepdim=True) + t_in.float().view(-1, 1, 1, 1)
        return torch.cat([eps.expand(-1, 3, -1, -1), -eps.expand(-1, 3, -1, -1)], 1)

    out = guided_prediction(model, x, t, cond, 2.0, learn_sigma=True)
    c_eps = cond.sum(1, keepdim=True) + t.float().view(-1, 1, 1, 1)
    u_eps = t.float().view(-1, 1, 1, 1).expand_as(c_eps)
    torch.testing.assert_close(out[:, :3], (u_eps + 2.0 * (c_eps - u_eps)).expand(-1, 3, -1, -1))
    torch.testing.assert_close(out[:, 3:], (-c_eps).expand(-1, 3, -1, -1))  # variance: conditional pass


def test_schedule_closed_forms_hold_for_one_and_two_steps():
    one = diffusion_tables(build_noise_scheduler("linear", num_train_timesteps=1))
    assert one.betas.shape == (1,) and one.posterior_log_variance_clipped.shape == (1,)
    torch.testing.assert_close(one.posterior_log_variance_clipped, one.betas.log())
    two = diffusion_tables(build_noise_scheduler("linear", num_train_timesteps=2))
    clipped = two.posterior_log_variance_clipped
    assert clipped[0] == clipped[1] == two.posterior_variance[1].log()  # t = 0 takes t = 1's value
    with pytest.raises(ValueError, match="num_train_timesteps must be >= 1"):
        build_noise_scheduler("linear", num_train_timesteps=0)


@pytest.mark.parametrize("shape", [(4, 7), (4, 3, 2, 5, 2)])
def test_closed_forms_work_on_any_tensor_rank(shape):
    """Tables broadcast over whatever follows the batch axis, not only 4-D images."""
    from sdm.diffusion.losses import predict_x0

    scheduler = build_noise_scheduler("linear", prediction_type="v_prediction")
    tab = diffusion_tables(scheduler)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    abar = torch.tensor([float(tab.alphas_cumprod[i]) for i in t]).view(-1, *([1] * (len(shape) - 1)))
    x_t = add_noise(scheduler, x0, noise, t)
    assert x_t.shape == shape
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    v = training_target(scheduler, x0, noise, t)
    torch.testing.assert_close(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(predict_x0(tab, x_t.double(), t, v.double(), "v_prediction").float(), x0,
                               atol=1e-5, rtol=1e-5)
    mean, var, logvar = q_posterior(tab, x0.double(), x_t.double(), t)
    assert mean.shape == var.shape == logvar.shape == shape
    assert training_target(build_noise_scheduler("linear"), x0, noise, t) is noise  # eps prediction
    frac = torch.zeros(shape, dtype=torch.float64)
    assert learned_log_variance(tab, frac, t).shape == shape
