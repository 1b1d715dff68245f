"""The RHVAE metric's closed-form derivatives and the kinetic cache carried between leapfrog steps.

References: G⁻¹(z) = Σᵢ Mᵢ exp(−‖z − cᵢ‖²/T²) + λI written out in float64 NumPy
(with the distance as Σ(z − c)², not the library's expanded square), its
Jacobian by ``jax.jacfwd`` of that direct formula, the linearised fast path
of the integrator (no closed form), and the step without a carried cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetk_jax import rhvae
from aetk_jax.hamiltonian import flow, integrators, metrics


def _metric(rng, n=7, d=3, T=0.9, lam=0.05):
    L = np.tril(rng.normal(size=(n, d, d)))
    return rhvae.Metric(jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(L @ np.swapaxes(L, -1, -2)), T, lam)


def _direct_ginv(metric, z):
    """Σᵢ Mᵢ exp(−Σₖ(z_k − c_ik)²/T²) + λI in jnp (float64 under x64), the paper's formula as written."""
    w = jnp.exp(-jnp.sum((z[..., None, :] - metric.centroids) ** 2, -1) / metric.T**2)
    return jnp.einsum("...n,nij->...ij", w, metric.M) + metric.lam * jnp.eye(z.shape[-1])


def _numpy_ginv(metric, z):
    c, M = np.asarray(metric.centroids), np.asarray(metric.M)
    out = np.empty(z.shape + (z.shape[-1],))
    for b, zb in enumerate(np.asarray(z)):
        w = np.exp(-np.sum((zb - c) ** 2, axis=1) / metric.T**2)
        out[b] = np.tensordot(w, M, axes=1) + metric.lam * np.eye(z.shape[-1])
    return out


def test_inverse_metric_and_its_closed_form_jacobian_match_the_direct_formula():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        metric = _metric(rng)
        # far points, near points and a point exactly on a centroid (where the expansion cancels)
        z = jnp.concatenate([jnp.asarray(rng.normal(size=(5, 3))), 3.0 * jnp.ones((1, 3)), metric.centroids[:2]])
        np.testing.assert_allclose(np.asarray(rhvae.inverse_metric(metric, z)), _numpy_ginv(metric, z),
                                   rtol=1e-12, atol=1e-14)
        ginv, jac = rhvae.inverse_metric_jacobian(metric, z)
        np.testing.assert_allclose(np.asarray(ginv), _numpy_ginv(metric, z), rtol=1e-12, atol=1e-14)
        ref = jax.vmap(jax.jacfwd(lambda zi: _direct_ginv(metric, zi)))(z)  # (B, d, d, d), k last
        assert float(jnp.max(jnp.abs(ref))) > 0.1
        np.testing.assert_allclose(np.asarray(jac), np.asarray(ref), rtol=1e-10, atol=1e-12)
        # its derivatives (the full gradient flows through the cache) are those of the direct formula
        f = lambda cen, zz: jnp.sum(rhvae.inverse_metric_jacobian(metric._replace(centroids=cen), zz)[1] ** 2)  # noqa: E731
        g = lambda cen, zz: jnp.sum(jax.vmap(jax.jacfwd(  # noqa: E731
            lambda zi: _direct_ginv(metric._replace(centroids=cen), zi)))(zz) ** 2)
        for a, b in zip(jax.grad(f, (0, 1))(metric.centroids, z[:6]), jax.grad(g, (0, 1))(metric.centroids, z[:6])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)


def test_kinetic_cache_closed_form_equals_the_linearisation():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        metric = _metric(rng)
        z = jnp.asarray(rng.normal(size=(4, 3)))
        closed = rhvae.momentum_metric(metric)
        linearised = metrics.gaussian_riemannian(lambda zz: rhvae.inverse_metric(metric, zz), metric.lam)
        assert closed.inverse_mass_jacobian is not None and linearised.inverse_mass_jacobian is None
        for a, b in zip(integrators.kinetic_cache(closed, z), integrators.kinetic_cache(linearised, z)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-13)
        assert integrators.kinetic_cache(metrics.kinetic_metric(closed.kinetic_energy), z) is None


def _chain(step, state, eps, k):
    def body(s, _):
        new, info = step(s, eps)
        return new, (new.position, new.momentum, info.half_momentum, info.max_norm())
    return jax.lax.scan(body, state, None, length=k)


@pytest.mark.parametrize("closed_form", [True, False])
def test_carried_cache_gives_the_same_chain_as_recomputing_it(closed_form):
    """K steps carrying (G⁻¹, ∂G⁻¹/∂z) from step to step equal K steps that recompute them."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        metric = _metric(rng, T=1.3)
        mm = rhvae.momentum_metric(metric) if closed_form else metrics.gaussian_riemannian(
            lambda zz: rhvae.inverse_metric(metric, zz), metric.lam)
        grad_v = integrators.sum_grad(lambda z: 0.5 * jnp.sum(z**2, -1) + jnp.sum(jnp.cos(z), -1))
        step = integrators.implicit_leapfrog(grad_v, mm, integrators.fixed_point_iteration(6))
        z, rho = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 3)))
        plain = integrators.IntegratorState(z, rho, grad_v(z))
        cached = plain._replace(kinetic_cache=integrators.kinetic_cache(mm, z))
        end_p, path_p = jax.jit(lambda s: _chain(step, s, 0.2, 4))(plain)
        end_c, path_c = jax.jit(lambda s: _chain(step, s, 0.2, 4))(cached)
        assert end_p.kinetic_cache is None
        assert float(jnp.max(jnp.abs(end_c.position - z))) > 0.1  # it moved
        for a, b in zip(path_p, path_c):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13)
        # the carried pair is the pair at the end point
        for a, b in zip(end_c.kinetic_cache, integrators.kinetic_cache(mm, end_c.position)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("flow_gradient", ["full", "detached"])
def test_tempered_flow_with_the_cache_has_the_same_value_and_gradient(flow_gradient):
    """The RHVAE's flow (carry_kinetic_cache=True) against the same flow recomputing the cache,
    value and gradient in the metric's parameters, for the paper's and pythae's gradients."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        metric = _metric(rng, n=5, d=2, T=1.1, lam=0.1)
        target = jnp.asarray(rng.normal(size=(4, 2)))

        def value(M, carry):
            met = metric._replace(M=M)
            mm = rhvae.momentum_metric(met)
            pot = lambda z: 0.5 * jnp.sum((z - target) ** 2, -1) * jnp.sum(M[0] ** 2)  # noqa: E731
            grad_v = integrators.sum_grad(pot)
            step = integrators.implicit_leapfrog(grad_v, mm, integrators.fixed_point_iteration(4))
            z0, rho0 = target + 0.5, jnp.ones_like(target)
            state = integrators.IntegratorState(z0, rho0, grad_v(z0), integrators.kinetic_cache(mm, z0) if carry else None)
            betas = jnp.asarray([0.3, 0.5, 0.8, 1.0])
            end, _ = flow._run(step, state, 0.15, betas, flow_gradient)
            return jnp.sum(mm.log_density(end.position, end.momentum) - pot(end.position))

        for carry in (False, True):
            assert np.isfinite(float(value(metric.M, carry)))
        v0, g0 = jax.value_and_grad(value)(metric.M, False)
        v1, g1 = jax.value_and_grad(value)(metric.M, True)
        np.testing.assert_allclose(float(v1), float(v0), rtol=1e-12)
        assert float(jnp.max(jnp.abs(g0))) > 1e-3
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-10, atol=1e-12)
