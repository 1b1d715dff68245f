"""Sampling from the RHVAE's learned metric (pythae's RHVAE sampler).

The target is the stored metric's inverse volume element on a box around the
centroids (see :func:`sample`), explored by independent blackjax HMC chains in one
jitted ``lax.scan``. The metric is a function of z alone, so a conditional RHVAE
draws its codes the same way for every condition and decodes them with p(x|z, c).
``aetk_jax.rhvae`` registers :func:`sample` as ``aet.sample`` for the RHVAE; this
module does not import it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import sampling as _sampling
from .base import Variables, decode
from .decoders import decoder_mean
from .rhvae_metric import inverse_metric, logdet_inverse, stored_metric
from .validation import check_int, check_key, check_scalar


def log_sampling_density(model: nn.Module, variables: Variables) -> Callable[[jax.Array], jax.Array]:
    """The log of pythae's unnormalised sampling density, the stored metric's inverse volume element.

    Args:
        model: the RHVAE.
        variables: its variables (the stored metric).

    Returns:
        ``z (d,) ↦ ½ log det G⁻¹(z) = −log √det G(z)``.
    """
    metric = stored_metric(model, variables)
    return lambda z: 0.5 * logdet_inverse(inverse_metric(metric, z), metric.lam)


SAMPLING_TARGETS = ("inverse_volume", "volume")


@functools.partial(jax.jit, static_argnames=("model", "n", "n_steps", "n_leapfrog", "target"))
def _hmc_chains(model, variables, key, n, n_steps, n_leapfrog, step_size, margin, target="inverse_volume",
                condition=None):
    import blackjax

    inverse = log_sampling_density(model, variables)  # log √det G⁻¹
    unbounded = inverse if target == "inverse_volume" else (lambda z: -inverse(z))
    centroids = variables["metric"]["centroids"]
    lo = jnp.min(centroids, axis=0) - margin * model.T
    hi = jnp.max(centroids, axis=0) + margin * model.T

    def logdensity(z: jax.Array) -> jax.Array:
        inside = jnp.all((z >= lo) & (z <= hi))
        return jnp.where(inside, unbounded(z), -jnp.inf)

    k_init, k_run = jax.random.split(key)
    z0 = centroids[jax.random.randint(k_init, (n,), 0, centroids.shape[0])]
    d = centroids.shape[-1]
    kernel = blackjax.hmc(
        logdensity, step_size=step_size, inverse_mass_matrix=jnp.ones((d,), z0.dtype),
        num_integration_steps=n_leapfrog,
    )
    states = jax.vmap(kernel.init)(z0)

    def one(states, k):
        states, info = jax.vmap(kernel.step)(jax.random.split(k, n), states)
        return states, jnp.mean(info.acceptance_rate)

    states, acc = jax.lax.scan(one, states, jax.random.split(k_run, n_steps))
    z = states.position
    return z, decoder_mean(model.decoder, decode(model, variables, z, condition)), acc


def sample(
    model: nn.Module,
    variables: Variables,
    key: jax.Array,
    n: int,
    *,
    n_steps: int = 100,
    n_leapfrog: int = 10,
    step_size: Optional[float] = None,
    margin: float = 1.0,
    target: str = "inverse_volume",
    condition: Any = None,
) -> _sampling.Samples:
    """Draw ``n`` codes from the stored metric's inverse volume element and decode them.

    Target (pythae's RHVAE sampler; Chadebec & Allassonnière's "Riemannian
    uniform" sampling restricted to a compact set):

        p(z) ∝ √det G⁻¹(z) = 1/√det G(z)  on the box S = [min cᵢ − margin·T, max cᵢ + margin·T],

    high on the data, where G is small. The box makes it a proper density: off
    the data √det G⁻¹ tends to the constant λ^{d/2}, which has no normaliser over
    the whole plane, and beyond about T from every centroid the metric carries
    no information. ``n`` independent HMC chains (blackjax; identity mass,
    ``n_leapfrog`` leapfrog steps of size ``step_size``, default T/10, Metropolis
    accept; a proposal leaving S is rejected), started at uniformly drawn stored
    centroids and run for ``n_steps`` transitions, all in one jitted ``lax.scan``.
    Needs the stored metric (``fit`` keeps it up to date; else :func:`update_metric`).
    Returns ``aet.sampling.Samples(z (n, d), x)`` with ``x`` the decoder mean, under
    p(x|z, c) for a conditional model (``condition`` is then required; the codes do
    not depend on it: the same key gives the same z for every condition).

    ``target="volume"`` samples the Riemannian volume measure instead, p(z) ∝ √det G(z)
    on the same box: it is largest off the data (where G → I/λ) and smallest on it,
    so it explores the space the metric marks as far from the data (e.g. to see what
    the decoder makes of it), not the data distribution.

    Args:
        model: the RHVAE.
        variables: its variables (the stored metric).
        key: PRNG key.
        n: the number of chains (codes).
        n_steps: HMC transitions per chain.
        n_leapfrog: leapfrog steps per transition.
        step_size: the leapfrog step (default T/10).
        margin: the box margin, in units of T.
        target: ``"inverse_volume"`` (default) or ``"volume"``.
        condition: for a conditional model, labels ``(n,)`` or covariates ``(n, condition_dim)``
            (one per sample); ``None`` otherwise.

    Returns:
        ``aet.sampling.Samples(z, x)``.
    """
    check_key(key)
    check_int(n, "n", minimum=1)
    check_int(n_steps, "n_steps", minimum=1)
    check_int(n_leapfrog, "n_leapfrog", minimum=1)
    step_size = 0.1 * float(model.T) if step_size is None else step_size
    check_scalar(step_size, "step_size", positive=True)
    check_scalar(margin, "margin", positive=True)
    if target not in SAMPLING_TARGETS:
        raise ValueError(f"`target` must be one of {SAMPLING_TARGETS}, got {target!r}")
    condition = _sampling.check_sample_condition(model, condition, n)
    z, x, _ = _hmc_chains(model, variables, key, n, n_steps, n_leapfrog, step_size, margin, target, condition)
    return _sampling.Samples(z, x)


__all__ = ["SAMPLING_TARGETS", "log_sampling_density", "sample"]
