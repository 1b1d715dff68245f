"""Do the two libraries compute the same thing? Checks on one shared initial state.

The pythae model's weights are copied into the aetk_jax parameters (a torch
``Linear`` weight ``(out, in)`` is a flax ``Dense`` kernel ``(in, out)``
transposed; pythae's encoder head is log σ² and ours log σ, so that head's
weight and bias are halved). Then, on one batch of the benchmark data:

* every model: the reconstruction log-likelihood log p(x|μ(x)) at the
  posterior mean (pythae's own loss function vs ``aet.base.loglikelihood``);
* VAE, β-VAE, InfoVAE: the KL at the posterior and the *whole loss* with the
  same noise: the code z = μ + σ ε is drawn on the aetk_jax side with the
  loss's key, and pythae's reparameterisation is handed the same ε (and, for
  InfoVAE, the same prior draws through its ``loss_function``);
* HVAE: the potential gradient ∇U(z) = −∇ log p(x|z) + z at z = μ(x)
  (pythae's ``_dU_dz`` vs ``aet.hvae.grad_potential_energy``); the full HVAE
  losses are not comparable because pythae's estimator differs (see
  ``PYTHAE_HVAE_DIFFERENCES``);
* RHVAE: the inverse metric G⁻¹(z) at z = μ(x) with the batch as centroids
  (pythae's ``G_inv`` after ``_update_metric`` vs ``aet.rhvae.G_inv`` after
  ``aet.rhvae.update_metric``), when aetk_jax's RHVAE exists.

Each check records both values, the largest absolute and relative difference,
the tolerance and ``ok``. A failed check marks the model's timings as not
comparable in the report, so a fast wrong answer cannot win.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import aetk_jax as aet

from . import jax_side, torch_side
from .config import Setting

RTOL = 1e-4
ATOL = 1e-3

PYTHAE_HVAE_DIFFERENCES = [
    "the posterior scale is softplus(log_var) in HVAE.forward, exp(log_var / 2) everywhere else",
    "the position update uses the initial momentum (z + eps * rho), not the half-step momentum",
    "the tempered momentum is overwritten by the untempered one (tempering has no effect)",
    "grad U is taken with torch.autograd.grad without create_graph: no gradient flows through it",
    "log q keeps only -0.5 * sum(log_var): no (z0 - mu)^2 term and no initial-momentum density",
]
PYTHAE_RHVAE_DIFFERENCES = [
    "training uses the current batch as centroids (mu(x_b) and L(x_b)); the stored metric keeps the last 100 batches",
    "the position half of the generalized leapfrog is explicit: G_inv is held at the step's start point",
    "the first momentum half-step runs 3 fixed-point iterations whose gradients are not differentiated (no create_graph)",
    "G_inv = sum over centroids (no mean)",
    "its config's beta_zero is used as the square root of beta_0 (rho_0 = gamma / beta_zero); the benchmark passes sqrt(beta_0)",
]


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.array(a, dtype=np.float32))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _dense(lin: torch.nn.Linear, scale: float = 1.0) -> dict[str, jnp.ndarray]:
    return {"kernel": jnp.asarray(_np(lin.weight).T * scale), "bias": jnp.asarray(_np(lin.bias) * scale)}


def _body(seq: torch.nn.Sequential) -> dict[str, Any]:
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    return {f"dense_{i}": _dense(lin) for i, lin in enumerate(linears)}


def copy_weights(torch_model: Any, variables: Any, s: Setting) -> Any:
    """``variables`` with every parameter replaced by the pythae model's (shapes checked)."""
    enc, dec = torch_model.encoder, torch_model.decoder
    params: dict[str, Any] = {
        "encoder": {"body": _body(enc.body), "mu": _dense(enc.mu), "logsigma": _dense(enc.log_var, 0.5)},
        "decoder": {"body": _body(dec.body), "logits": _dense(dec.out)},
    }
    if s.model == "rhvae":
        params.update(_metric_params(torch_model.metric, variables["params"]))
    old = variables["params"]
    shapes_old = jax.tree_util.tree_map(jnp.shape, old)
    shapes_new = jax.tree_util.tree_map(jnp.shape, params)
    if shapes_old != shapes_new:
        raise ValueError(f"parameter trees differ:\naetk_jax: {shapes_old}\nfrom pythae: {shapes_new}")
    return {**variables, "params": params}


def _metric_params(metric: Any, params: Any) -> dict[str, Any]:
    """The metric network's parameters, matched to aetk_jax's MetricNetwork by head shape."""
    name = next(k for k in params if k not in ("encoder", "decoder"))
    mine = params[name]
    d = metric.latent_dim
    heads = {k: v for k, v in mine.items() if k != "body"}
    out: dict[str, Any] = {"body": _body(metric.body)}
    n_low = d * (d - 1) // 2
    for k, v in heads.items():
        width = v["kernel"].shape[-1]
        if width == d * (d + 1) // 2 and len(heads) == 1:
            # one head: the d diagonal entries first, then the strict lower triangle row by row
            diag, low = _dense(metric.diag), _dense(metric.lower)
            out[k] = {n: jnp.concatenate([diag[n], low[n]], axis=-1) for n in ("kernel", "bias")}
        elif width == d and "diag" in k:
            out[k] = _dense(metric.diag)
        elif width == n_low and ("low" in k or "off" in k):
            out[k] = _dense(metric.lower)
        else:
            raise ValueError(f"cannot match aetk_jax's metric head {k!r} (width {width}) to pythae's diag/lower heads")
    return {name: out}


def _compare(name: str, a: Any, b: Any, rtol: float = RTOL, atol: float = ATOL, note: str = "") -> dict[str, Any]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    ok = bool(np.all(diff <= atol + rtol * np.abs(b)) and np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    rec = {
        "check": name,
        "aetk_jax": a.tolist() if a.size <= 4 else float(np.mean(a)),
        "pythae": b.tolist() if b.size <= 4 else float(np.mean(b)),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff / np.maximum(np.abs(b), 1e-12)).max()) if diff.size else 0.0,
        "rtol": rtol,
        "atol": atol,
        "ok": ok,
    }
    if note:
        rec["note"] = note
    return rec


def check(s: Setting, x: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Run the checks for ``s`` on the first ``batch_size`` rows of ``x``; a JSON-able dict."""
    tm, _ = torch_side.build(s, seed=seed)
    tm.train()
    model, _, hp = jax_side.build(s)
    xb = np.asarray(x[: s.batch_size], np.float32)
    xj, xt = jnp.asarray(xb), _t(xb)
    key = jax.random.key(seed + 17)
    variables = jax_side.init_variables(model, s, xb, jax.random.key(seed))
    variables = copy_weights(tm, variables, s)
    if s.model == "rhvae" and hasattr(aet.rhvae, "update_metric"):
        variables = aet.rhvae.update_metric(model, variables, xj)

    checks: list[dict[str, Any]] = []
    enc_t = tm.encoder(xt)
    mu_t, logvar_t = enc_t.embedding, enc_t.log_covariance
    enc_j = aet.base.encode(model, variables, xj)
    checks.append(_compare("posterior_mean", enc_j.mu, _np(mu_t)))
    checks.append(_compare("posterior_log_variance", 2.0 * enc_j.logsigma, _np(logvar_t)))

    mu_j = enc_j.mu
    loglik_j = jnp.mean(aet.base.loglikelihood(model, variables, xj, mu_j))
    kl_j = jnp.mean(aet.encoder_kl(model.encoder, enc_j))
    with torch.no_grad():
        recon = tm.decoder(mu_t)["reconstruction"]
        if s.model in ("vae", "betavae", "mmdvae"):
            # VAE.loss_function(recon_x, x, mu, log_var, z) -> (loss, recon_loss, kld): batch means
            _, recon_loss, kld = torch_side.VAE.loss_function(tm, recon, xt, mu_t, logvar_t, mu_t)
            loglik_t, kl_t = -recon_loss, kld
        else:
            loglik_t = tm._log_p_x_given_z(recon, xt).mean()
            kl_t = -0.5 * torch.sum(1 + logvar_t - mu_t.pow(2) - logvar_t.exp(), dim=-1).mean()
    checks.append(_compare("loglikelihood_at_posterior_mean", loglik_j, _np(loglik_t)))
    checks.append(_compare("kl_at_posterior", kl_j, _np(kl_t),
                           note="pythae's closed-form KL (VAE.loss_function) vs aet.encoder_kl"))

    if s.model in ("vae", "betavae", "mmdvae"):
        checks.append(_loss_same_noise(s, tm, model, variables, xj, xt, key, hp))
    elif s.model == "hvae":
        zt = mu_t.detach().clone().requires_grad_(True)
        g_t = tm._dU_dz(zt, xt)
        g_j = aet.hvae.grad_potential_energy(model, variables, xj, mu_j)
        checks.append(_compare("grad_potential_at_posterior_mean", g_j, _np(g_t), rtol=1e-3, atol=1e-3))
    else:
        checks.append(_metric_check(s, tm, model, variables, xj, xt, mu_j, mu_t))

    out: dict[str, Any] = {"batch": s.batch_size, "checks": checks, "ok": all(c["ok"] for c in checks)}
    if s.model == "hvae":
        out["full_loss_comparable"] = False
        out["pythae_differences"] = PYTHAE_HVAE_DIFFERENCES
    elif s.model == "rhvae":
        out["full_loss_comparable"] = False
        out["pythae_differences"] = PYTHAE_RHVAE_DIFFERENCES
    else:
        out["full_loss_comparable"] = True
    return out


def _loss_same_noise(s: Setting, tm: Any, model: Any, variables: Any, xj, xt, key, hp) -> dict[str, Any]:
    """The whole loss with one shared draw ε (and shared prior draws for InfoVAE)."""
    t = aet.base.elbo_terms(model, variables, xj, key, 1)  # the draw aet's VAE/MMD losses make with `key`
    mu, logsigma = t.enc_out.mu, t.enc_out.logsigma
    eps = np.asarray((t.z[0] - mu) / jnp.exp(logsigma))
    eps_t = _t(eps)

    def fixed_gauss(mu_, std_):
        return mu_ + eps_t * std_, eps_t

    with torch.no_grad():
        tm._sample_gauss = fixed_gauss  # instance attribute shadows the method for this check only
        try:
            if s.model == "mmdvae":
                enc = tm.encoder(xt)
                mu_t, lv_t = enc.embedding, enc.log_covariance
                z_t, _ = fixed_gauss(mu_t, torch.exp(0.5 * lv_t))
                zp = aet.mmdvae.prior_samples(key, s.batch_size, s.latent_dim, jnp.float32)
                recon = tm.decoder(z_t)["reconstruction"]
                loss_t = tm.loss_function(recon, xt, z_t, _t(zp), mu_t, lv_t)[0]
                loss_j = aet.mmdvae.loss(model, variables, xj, key, **hp)
            else:
                loss_t = tm({"data": xt}).loss
                loss_j = aet.vae.loss(model, variables, xj, key, **hp)
        finally:
            del tm._sample_gauss
    return _compare("loss_same_noise", loss_j, _np(loss_t),
                    note="aetk_jax's loss with `key`; pythae's loss with the same reparameterisation noise")


def _metric_check(s: Setting, tm: Any, model: Any, variables: Any, xj, xt, mu_j, mu_t) -> dict[str, Any]:
    """G⁻¹(μ(x)) with the batch itself as centroids, in both libraries."""
    with torch.no_grad():
        L = tm.metric(xt)["L"]
        tm.M.clear()
        tm.centroids.clear()
        tm.M.append(L @ L.transpose(1, 2))
        tm.centroids.append(mu_t)
        tm._update_metric()
        g_t = tm.G_inv(mu_t)
    g_j = aet.rhvae.G_inv(model, variables, mu_j)
    return _compare("inverse_metric_at_posterior_mean", g_j, _np(g_t), rtol=1e-3, atol=1e-4,
                    note="centroids: this batch's posterior means; pythae sums over centroids")
