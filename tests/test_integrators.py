"""aetk_jax.hamiltonian: integrators, solvers, metrics and the one tempered-flow ELBO.

References: exact time reversal and symplecticity (JᵀΩJ = Ω) of the leapfrog, the
O(ε²) energy error measured at two step sizes, the explicit leapfrog as the
implicit one's constant-metric limit, plain autodiff of the kinetic energy for
the linearised fast path, and the HVAE as the RHVAE with G = I.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet
from aetk_jax import hamiltonian as hmc
from aetk_jax import hvae, rhvae
from aetk_jax.hamiltonian import integrators, metrics

_B = np.random.default_rng(7).normal(size=(3, 3))
A = _B @ _B.T / 3 + np.eye(3)
C = np.array([0.7, -0.4, 1.1])


def potential(z):
    """A coupled nonlinear potential, per example: ½zᵀAz + Σ c·cos z + Σ z⁴/40."""
    return 0.5 * jnp.einsum("...i,ij,...j->...", z, A, z) + jnp.sum(C * jnp.cos(z) + 0.025 * z**4, -1)


grad_u = integrators.sum_grad(potential)


def ginv_fn(z):
    """A position-dependent inverse metric (1 + ‖z‖²/2)·S + sin(z₀)·E, symmetric positive-definite."""
    S = jnp.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 1.2]], z.dtype)
    E = jnp.array([[0.0, 0.2, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.1]], z.dtype)
    s = (1.0 + 0.5 * jnp.sum(z**2, -1))[..., None, None]
    return s * S + jnp.sin(z[..., :1])[..., None] * E


def _run(step, z, rho, eps, n):
    state = integrators.IntegratorState(z, rho, grad_u(z))
    return jax.lax.fori_loop(0, n, lambda _, s: step(s, eps)[0], state)


def test_leapfrog_is_time_reversible_and_symplectic():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        z, rho = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
        step = integrators.leapfrog(grad_u)
        fwd = jax.jit(lambda z, r: _run(step, z, r, 0.1, 25))
        end = fwd(z, rho)
        assert float(jnp.max(jnp.abs(end.position - z))) > 0.1  # it moves
        back = fwd(end.position, -end.momentum)
        np.testing.assert_allclose(np.asarray(back.position), np.asarray(z), atol=1e-12)
        np.testing.assert_allclose(np.asarray(-back.momentum), np.asarray(rho), atol=1e-12)
        # the Jacobian J of the 25-step map of one point is symplectic: JᵀΩJ = Ω
        flat = lambda s: jnp.concatenate([(r := fwd(s[None, :3], s[None, 3:])).position[0], r.momentum[0]])  # noqa
        J = np.asarray(jax.jacfwd(flat)(jnp.concatenate([z[0], rho[0]])))
        omega = np.block([[np.zeros((3, 3)), np.eye(3)], [-np.eye(3), np.zeros((3, 3))]])
        np.testing.assert_allclose(J.T @ omega @ J, omega, atol=1e-10)


def test_leapfrog_energy_error_is_second_order():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        z, rho = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=(8, 3)))
        H = lambda s: potential(s.position) + 0.5 * jnp.sum(s.momentum**2, -1)  # noqa: E731
        step = integrators.leapfrog(grad_u)
        errs = []
        for eps in (0.1, 0.05):  # the same time, T = 1
            end = jax.jit(lambda z, r, e=eps: _run(step, z, r, e, int(round(1.0 / e))))(z, rho)
            errs.append(np.abs(np.asarray(H(end) - potential(z) - 0.5 * jnp.sum(rho**2, -1))))
        ratio = errs[0] / errs[1]
        assert np.all(errs[0] > 1e-5)  # a finite error at finite ε
        np.testing.assert_allclose(ratio, 4.0, rtol=0.1)  # halving ε quarters it


@pytest.mark.parametrize("diag", [None, np.array([0.5, 2.0, 1.5])])
def test_implicit_leapfrog_on_a_constant_metric_equals_the_explicit_one(diag):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        z, rho = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
        metric = metrics.gaussian_euclidean(diag)
        explicit = _run(integrators.leapfrog(grad_u, None if diag is None else metric), z, rho, 0.2, 3)
        solver = integrators.fixed_point_iteration(3, tol=1e-12)
        for m in (metric, metrics.kinetic_metric(metric.kinetic_energy)):  # linearised G⁻¹ and plain autodiff
            implicit = _run(integrators.implicit_leapfrog(grad_u, m, solver), z, rho, 0.2, 3)
            np.testing.assert_allclose(np.asarray(implicit.position), np.asarray(explicit.position), atol=1e-13)
            np.testing.assert_allclose(np.asarray(implicit.momentum), np.asarray(explicit.momentum), atol=1e-13)
        # one step by hand: ρ̃ = ρ − ε/2 ∇U(z), z̄ = z + ε m ρ̃
        m = np.ones(3) if diag is None else diag
        s1, _ = integrators.leapfrog(grad_u, metric)(integrators.IntegratorState(z, rho, grad_u(z)), 0.2)
        rt = np.asarray(rho) - 0.1 * np.asarray(grad_u(z))
        np.testing.assert_allclose(np.asarray(s1.position), np.asarray(z) + 0.2 * m * rt, atol=1e-14)


def _implicit(solver, kinetic=None):
    metric = metrics.gaussian_riemannian(ginv_fn) if kinetic is None else kinetic
    return jax.jit(lambda s, e: integrators.implicit_leapfrog(grad_u, metric, solver)(s, e))


def test_linearised_kinetic_gradient_equals_autodiff_on_a_varying_metric():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        z, rho = jnp.asarray(0.5 * rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 3)))
        state = integrators.IntegratorState(z, rho, grad_u(z))
        solver = integrators.fixed_point_iteration(4)
        fast, info = _implicit(solver)(state, 0.1)
        kin = metrics.gaussian_riemannian(ginv_fn).kinetic_energy
        slow, info2 = _implicit(solver, metrics.kinetic_metric(kin))(state, 0.1)
        assert float(jnp.max(jnp.abs(fast.position - z))) > 1e-2
        for a, b in [(fast.position, slow.position), (fast.momentum, slow.momentum),
                     (info.half_momentum, info2.half_momentum), (info.position.norm, info2.position.norm)]:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_solver_info_and_a_swapped_in_solver():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        z, rho = jnp.asarray(0.5 * rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(6, 3)))
        state = integrators.IntegratorState(z, rho, grad_u(z))
        eps = 0.3
        capped, info = _implicit(integrators.fixed_point_iteration(1, tol=1e-8))(state, eps)
        assert int(info.position.iters) == 1 and info.position.success.shape == (6,)
        assert not bool(jnp.any(info.position.success)) and float(jnp.min(info.position.norm)) > 1e-8
        np.testing.assert_array_equal(np.asarray(info.momentum.success), np.asarray(info.momentum.norm) <= 1e-8)
        exact, info = _implicit(integrators.fixed_point_iteration(60, tol=1e-8))(state, eps)
        assert bool(jnp.all(info.position.success & info.momentum.success)) and int(info.momentum.iters) == 60
        # the swapped-in solver stops at its own tolerance and gives the same point
        until, info = _implicit(integrators.fixed_point_until(100, tol=1e-11))(state, eps)
        iters = (int(info.momentum.iters), int(info.position.iters))
        assert all(3 <= i < 60 for i in iters), iters
        assert bool(jnp.all(info.position.success)) and float(jnp.max(info.max_norm())) <= 1e-11
        np.testing.assert_allclose(np.asarray(until.position), np.asarray(exact.position), atol=1e-10)
        assert float(jnp.max(jnp.abs(capped.position - exact.position))) > 1e-6
        _, info = _implicit(integrators.fixed_point_until(2, tol=1e-14))(state, eps)
        assert int(info.position.iters) == 2 and not bool(jnp.all(info.position.success))


def test_tempering_moved_and_reexported():
    assert hvae.quadratic_tempering is hmc.tempering.quadratic_tempering is rhvae.quadratic_tempering
    with jax.enable_x64(True):
        betas = hmc.tempering.temper_schedule(hmc.tempering.quadratic_tempering, 0.3, 4)
        np.testing.assert_allclose(float(hmc.tempering.tempering_logdet(betas, 2)), np.log(0.3), rtol=1e-12)


def test_hvae_and_rhvae_with_the_identity_metric_give_the_same_elbo():
    """One ELBO function: the RHVAE with G⁻¹ = I (M = 0, λ = 1, stored metric) is the HVAE."""
    with jax.enable_x64(True):
        enc = aet.JointGaussianLogEncoder(aet.MLP([6], final_activation=nn.tanh), 2)
        dec = aet.SimpleGaussianDecoder(aet.MLP([6], final_activation=nn.tanh), 5)
        rh = aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.MLP([4]), 2), 3, 0.7, 1.0)
        hv = aet.HVAE(enc, dec)
        x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 5)))
        v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                                   else a, rh.init(jax.random.key(0), x))
        v = {**v, "metric": {**v["metric"], "M": jnp.zeros_like(v["metric"]["M"])}}
        vh = {"params": {k: v["params"][k] for k in ("encoder", "decoder")}}
        key = jax.random.key(9)
        kw = dict(K=3, eps=0.2, beta0=0.4)
        t_h = jax.jit(lambda v, x, k: hvae.hamiltonian_terms(hv, v, x, k, **kw))(vh, x, key)
        both = lambda v, x, k: (rhvae.phase_space(rh, v, x, k, metric_source="stored", **kw),  # noqa: E731
                                rhvae.elbo(rh, v, x, k, metric_source="stored", **kw))
        t_r, e_r = jax.jit(both)(v, x, key)
        e_h = t_h.elbo
        assert type(t_h) is type(t_r) is hmc.FlowTerms
        assert float(jnp.max(jnp.abs(t_h.zK - t_h.z0))) > 1e-2  # the flow moves
        np.testing.assert_allclose(np.asarray(t_r.zK), np.asarray(t_h.zK), atol=1e-13)
        np.testing.assert_allclose(np.asarray(e_r), np.asarray(e_h), rtol=1e-12)
