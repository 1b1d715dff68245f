"""Regularised autoencoders, RAE-L2 and RAE-GP (Ghosh, Sajjadi, Vergari, Black & Schölkopf 2020).

Deterministic codes z_i = E(x_i) (``aet.Encoder``; a Gaussian encoder is used by its
mean) and reconstructions x̂_i = mean of p(x | z_i). For a batch of B examples,

    loss = (1/B) Σ_i ‖x_i − x̂_i‖²  +  embedding_weight · (1/B) Σ_i ½‖z_i‖²  +  reg_weight · R,

    RAE-L2:  R = Σ_θ ‖θ‖²  over every decoder parameter (weight decay in the loss),
    RAE-GP:  R = (1/B) Σ_i ‖J_D(z_i)‖²_F,   J_D(z) = ∂x̂/∂z  (shape data × d),

the Frobenius norm computed exactly by one ``jax.jvp`` per latent direction
(Σ_k ‖J e_k‖², vmapped over k), no finite differences and no sampling.

Generation is post hoc (the paper's "ex-post density estimation"):
``fit_code_density(model, variables, x, key=...)`` fits a Gaussian mixture to the
codes of ``x`` by EM (a ``lax.fori_loop``, in JAX) and returns the variables with a
non-trainable collection ``"code_density"`` {``weights`` (C,), ``means`` (C, d),
``covs`` (C, d, d)}; ``aet.sample`` then draws codes from that mixture.

Departures from pythae (``pythae.models.RAE_L2`` / ``RAE_GP``): pythae's L2 term is
the optimiser's weight decay on the decoder (not part of the loss value, and under
Adam not the gradient of ½·reg_weight·‖θ‖²); here it is a term of the loss; pythae's "gradient penalty" is ‖∇_x Σ_j x̂_j‖², a gradient with respect to
the *input* x through the encoder of the summed output, whereas Ghosh et al. and
this module penalise the decoder's Jacobian with respect to z. pythae fits its GMM
with scikit-learn after training; here EM runs in JAX (no scikit-learn at run time).
Defaults follow pythae for both models: embedding_weight = 1e-4, reg_weight = 1e-7.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, decode, encode, finish, split_condition
from .decoders import decoder_mean
from .encoders import encoder_mean
from .sampling import Samples, check_sample_condition, sample
from .validation import check_int, check_key, check_scalar

COVARIANCES = ("full", "diag")


class RAE_L2(AutoEncoderModel):  # noqa: N801 (the paper's name)
    """RAE with an L2 penalty on the decoder's parameters: ``RAE_L2(encoder, decoder)``."""


class RAE_GP(AutoEncoderModel):  # noqa: N801
    """RAE with a gradient penalty on the decoder's Jacobian in z: ``RAE_GP(encoder, decoder)``."""


def codes(model: AutoEncoderModel, variables: Variables, x: jax.Array) -> jax.Array:
    """The deterministic codes z = E(x) (a Gaussian encoder's mean), ``(B, d)``."""
    return encoder_mean(model.encoder, encode(model, variables, x))


def _reconstruct(model: AutoEncoderModel, variables: Variables, z: jax.Array, condition: Any = None) -> jax.Array:
    return decoder_mean(model.decoder, decode(model, variables, z, condition))


def jacobian_penalty(model: AutoEncoderModel, variables: Variables, z: jax.Array, condition: Any = None) -> jax.Array:
    """‖∂x̂/∂z‖²_F per code, ``(B,)``, exactly (one ``jax.jvp`` per latent dimension).

    Args:
        model: the model (its decoder).
        variables: its variables.
        z: codes ``(B, d)``.
        condition: the codes' condition ``c`` for a conditional model (the Jacobian is in z at fixed c).

    Returns:
        Σ_k ‖J_D(z_i) e_k‖² for each i.
    """
    def f(u):
        return _reconstruct(model, variables, u, condition).reshape(z.shape[0], -1)

    def along(e):
        return jnp.sum(jax.jvp(f, (z,), (jnp.broadcast_to(e, z.shape),))[1] ** 2, axis=-1)

    return jnp.sum(jax.vmap(along)(jnp.eye(z.shape[-1], dtype=z.dtype)), axis=0)


def decoder_l2(variables: Variables) -> jax.Array:
    """Σ ‖θ‖² over the decoder's parameters."""
    return sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(variables["params"]["decoder"]))


def _loss(model, variables, x, key, embedding_weight, reg_weight, aux, penalty):
    check_inputs(model, x)
    if key is not None:
        check_key(key)
    check_scalar(embedding_weight, "embedding_weight", nonnegative=True)
    check_scalar(reg_weight, "reg_weight", nonnegative=True)
    data, c = split_condition(model, x)
    z = codes(model, variables, x)
    x_hat = _reconstruct(model, variables, z, c)
    recon = jnp.mean(jnp.sum(((x_hat - data) ** 2).reshape(data.shape[0], -1), axis=-1))
    emb = jnp.mean(0.5 * jnp.sum(z**2, axis=-1))
    reg = penalty(z, c)
    value = recon + embedding_weight * emb + reg_weight * reg
    return finish(value, {"reconstruction": recon, "embedding": emb, "regularisation": reg}, aux)


def loss_l2(model: AutoEncoderModel, variables: Variables, x: jax.Array, key: Any = None, *,
            embedding_weight: float = 1e-4, reg_weight: float = 1e-7, aux: bool = False) -> Any:
    """The RAE-L2 loss (module docstring), a scalar; ``key`` is accepted and unused.

    Args:
        model: an ``RAE_L2`` or ``RAE_GP``.
        variables: its variables.
        x: a batch ``(B, *data_shape)``.
        key: unused (the loss is deterministic).
        embedding_weight: weight ≥ 0 of ½‖z‖².
        reg_weight: weight ≥ 0 of the decoder's Σ‖θ‖².
        aux: also return ``{"loss", "reconstruction", "embedding", "regularisation"}``.
    """
    return _loss(model, variables, x, key, embedding_weight, reg_weight, aux, lambda z, c: decoder_l2(variables))


def loss_gp(model: AutoEncoderModel, variables: Variables, x: jax.Array, key: Any = None, *,
            embedding_weight: float = 1e-4, reg_weight: float = 1e-7, aux: bool = False) -> Any:
    """The RAE-GP loss (module docstring), a scalar; arguments as ``loss_l2``, ``reg_weight``
    weighting the mean ‖J_D(z)‖²_F."""
    penalty = lambda z, c: jnp.mean(jacobian_penalty(model, variables, z, c))  # noqa: E731
    return _loss(model, variables, x, key, embedding_weight, reg_weight, aux, penalty)


def loss(model: AutoEncoderModel, variables: Variables, x: jax.Array, key: Any = None, **hyper: Any) -> Any:
    """``loss_gp`` for an ``RAE_GP``, ``loss_l2`` otherwise (same keywords)."""
    return (loss_gp if isinstance(model, RAE_GP) else loss_l2)(model, variables, x, key, **hyper)


# --------------------------------------------------------------------------- the Gaussian mixture


def _log_gaussians(z: jax.Array, means: jax.Array, covs: jax.Array) -> jax.Array:
    """log N(z_n; m_c, S_c), ``(n, C)``."""
    chol = jnp.linalg.cholesky(covs)  # (C, d, d)
    diff = z[None, :, :] - means[:, None, :]  # (C, n, d)
    sol = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, 1, 2), lower=True)  # (C, d, n)
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=-1)  # (C,)
    d = z.shape[-1]
    return (-0.5 * jnp.sum(sol**2, axis=1) - half_logdet[:, None] - 0.5 * d * math.log(2 * math.pi)).T


def gmm_em(z: jax.Array, init_means: jax.Array, n_iter: int = 100, covariance: str = "full",
           reg_covar: float = 1e-6) -> dict[str, jax.Array]:
    """EM for a Gaussian mixture on ``z`` ``(n, d)`` from the initial means ``(C, d)``.

    Starts from equal weights and every covariance equal to the data's (diagonal for
    ``"diag"``); each M step adds ``reg_covar`` · I to the covariances.

    Returns:
        ``{"weights" (C,), "means" (C, d), "covs" (C, d, d)}`` after ``n_iter`` EM steps.
    """
    n, d = z.shape
    c = init_means.shape[0]
    eye = jnp.eye(d, dtype=z.dtype)
    cov0 = jnp.cov(z.T, bias=True).reshape(d, d) + reg_covar * eye
    cov0 = jnp.diag(jnp.diag(cov0)) if covariance == "diag" else cov0
    state = (jnp.full((c,), 1.0 / c, z.dtype), init_means, jnp.broadcast_to(cov0, (c, d, d)))

    def step(_, state):
        w, m, s = state
        logr = jnp.log(w) + _log_gaussians(z, m, s)
        r = jnp.exp(logr - jax.scipy.special.logsumexp(logr, axis=1, keepdims=True))  # (n, C)
        nk = jnp.sum(r, axis=0) + 10 * jnp.finfo(z.dtype).eps
        m = (r.T @ z) / nk[:, None]
        diff = z[None] - m[:, None]  # (C, n, d)
        s = jnp.einsum("nc,cni,cnj->cij", r, diff, diff) / nk[:, None, None]
        s = (s * eye if covariance == "diag" else s) + reg_covar * eye
        return nk / n, m, s

    w, m, s = jax.lax.fori_loop(0, n_iter, step, state)
    return {"weights": w, "means": m, "covs": s}


def fit_code_density(model: AutoEncoderModel, variables: Variables, x: jax.Array, n_components: int = 10,
                     key: jax.Array | None = None, *, covariance: str = "full", n_iter: int = 100) -> Variables:
    """Fit a Gaussian mixture to the codes of ``x`` and store it for ``aet.sample``.

    Args:
        model: an ``RAE_L2`` or ``RAE_GP`` (any model with ``encoder``/``decoder``).
        variables: its (trained) variables.
        x: data ``(n, *data_shape)``, n ≥ ``n_components``.
        n_components: C ≥ 1 mixture components.
        key: PRNG key choosing the C codes that initialise the means (required).
        covariance: ``"full"`` or ``"diag"``.
        n_iter: EM steps ≥ 1.

    Returns:
        ``variables`` with ``"code_density"``: ``{"weights", "means", "covs"}``.
    """
    check_inputs(model, x, key)
    check_int(n_components, "n_components", minimum=1)
    check_int(n_iter, "n_iter", minimum=1)
    if covariance not in COVARIANCES:
        raise ValueError(f"`covariance` must be one of {COVARIANCES}, got {covariance!r}")
    n = split_condition(model, x)[0].shape[0]
    if n < n_components:
        raise ValueError(f"`n_components` ({n_components}) must be <= the number of examples in `x` ({n})")
    z = codes(model, variables, x)
    init = z[jax.random.permutation(key, z.shape[0])[:n_components]]
    density = jax.jit(gmm_em, static_argnames=("n_iter", "covariance"))(z, init, n_iter=n_iter, covariance=covariance)
    return {**variables, "code_density": density}


@sample.register(RAE_L2)
@sample.register(RAE_GP)
def _sample_rae(model: AutoEncoderModel, variables: Variables, key: jax.Array, n: int, *,
                condition: Any = None) -> Samples:
    """``n`` codes from the fitted mixture (``fit_code_density``), decoded to their means
    (under ``condition``, one per sample, for a conditional RAE: the mixture is of the codes of every class)."""
    check_key(key)
    check_int(n, "n", minimum=1)
    condition = check_sample_condition(model, condition, n)
    if "code_density" not in variables:
        raise ValueError(
            "this RAE has no code density yet: call aet.rae.fit_code_density(model, variables, x, key=key)"
        )
    gmm = variables["code_density"]
    k1, k2 = jax.random.split(key)
    comp = jax.random.categorical(k1, jnp.log(gmm["weights"]), shape=(n,))
    eps = jax.random.normal(k2, (n, gmm["means"].shape[-1]), gmm["means"].dtype)
    chol = jnp.linalg.cholesky(gmm["covs"])[comp]
    z = gmm["means"][comp] + jnp.einsum("nij,nj->ni", chol, eps)
    return Samples(z, _reconstruct(model, variables, z, condition))


__all__ = ["RAE_GP", "RAE_L2", "codes", "decoder_l2", "fit_code_density", "gmm_em", "jacobian_penalty", "loss",
           "loss_gp", "loss_l2"]
