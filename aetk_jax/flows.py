"""Flow posteriors: planar, radial and inverse-autoregressive layers, and the flowed ELBO.

A flow posterior pushes draws of the encoder's Gaussian q₀(z₀|x) through K
invertible maps, z_K = f_K ∘ … ∘ f_1(z₀), so that by the change of variables

    log q_K(z_K|x) = log q₀(z₀|x) − Σ_k log |det ∂f_k/∂z_{k−1}|,

and the ELBO (Rezende & Mohamed 2015, eq. 15) is

    ELBO(x) = E_{q₀}[log p(x|z_K) + log p(z_K) − log q₀(z₀|x) + Σ_k log |det ∂f_k/∂z_{k−1}|].

The layers (each maps codes ``(..., d)`` to ``(z_new (..., d), log_det (...))``):

* :class:`PlanarFlow` (Rezende & Mohamed 2015, §4.1): f(z) = z + û h(wᵀz + b), h = tanh,
  log |det| = log |1 + ûᵀψ(z)|, ψ(z) = h'(wᵀz + b) w. Invertibility needs wᵀû ≥ −1,
  enforced by û = u + (m(wᵀu) − wᵀu) w / ‖w‖², m(a) = −1 + softplus(a) (their appendix A),
  so that wᵀû = m(wᵀu) > −1 and 1 + ûᵀψ ≥ 1 − h' > 0 (h' ∈ (0, 1]).
* :class:`RadialFlow` (§4.1): f(z) = z + β h(α, r)(z − z₀), r = ‖z − z₀‖, h = 1/(α + r),
  log |det| = (d − 1) log(1 + βh) + log(1 + βh + βh'r); α = exp(log α) > 0 and
  β = −α + softplus(β̂) ≥ −α keep both factors positive.
* :class:`MADE` (Germain et al. 2015) and :class:`IAFStep` (Kingma et al. 2016):
  (m, s) = MADE(z) with m_i, s_i depending on z_{<i} only (masked dense layers), then
  z ← σ(s) ⊙ z + (1 − σ(s)) ⊙ m with a lower-triangular Jacobian of diagonal σ(s), so
  log |det| = Σ_i log σ(s_i).

The flows' parameters are free parameters of the model (one set shared by every
example, as in pythae), not amortised by the encoder as in Rezende & Mohamed's
experiments; the IAF can take a context h(x) (see :class:`MADE`).

:class:`FlowVAE` is the base of ``aet.VAE_LinNF`` and ``aet.VAE_IAF``: its ``flow(z0, x)``
method returns ``(z_K, Σ log det)``. Everything else is written once here: the draws
(:func:`flowed_draws`), the ELBO terms, ``elbo``/``loss``, and the importance weights
log w = log p(x|z_K) + log p(z_K) − log q_K(z_K|x) that ``aet.evaluate`` uses for these
models (the flowed posterior is the proposal of ``marginal_loglikelihood``). The prior
is the model's (N(0, I) by default), so ``aet.sample`` is the default sampler.

Conditional flows (``n_conditions`` or ``condition_dim`` > 0; the pair ``x = (x, c)``): the base
posterior is q₀(z₀|x, c) (the encoder sees [flatten(x), e(c)]) and the decoder p(x|z_K, c); the
flow layers are the same for every condition, and the IAF's context network sees the data x
alone, so log q_K(z_K|x, c) = log q₀(z₀|x, c) − Σ_k log |det ∂f_k/∂z_{k−1}|.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import evaluate
from .base import (
    AutoEncoderModel, Variables, check_inputs, encode, finish, log_prior, mc_loglikelihood, sample_posterior,
    split_condition,
)
from .encoders import encoder_logposterior, encoder_mean
from .validation import check_int, check_scalar

FLOWS = ("planar", "radial")
# softplus⁻¹(1) = log(e − 1): the radial β̂ at which β = 0 for α = 1 (the identity map)
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)


class PlanarFlow(nn.Module):
    """f(z) = z + û tanh(wᵀz + b) with the invertibility constraint wᵀû ≥ −1 (see the module).

    Parameters ``w``, ``u`` ``(d,)`` (``w ~ N(0, 1)``, ``u ~ N(0, 0.01²)``) and ``b`` ``()`` (0).
    """

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Map codes ``(..., d)``; returns ``(f(z) (..., d), log |det ∂f/∂z| (...))``."""
        d = z.shape[-1]
        w = self.param("w", nn.initializers.normal(1.0), (d,))
        u = self.param("u", nn.initializers.normal(0.01), (d,))
        b = self.param("b", nn.initializers.zeros, ())
        u_hat = constrained_planar_u(w, u)
        a = z @ w + b  # (...)
        t = jnp.tanh(a)
        z_new = z + u_hat * t[..., None]
        # ûᵀψ(z) = h'(a) · ûᵀw with h' = 1 − tanh²
        log_det = jnp.log(jnp.abs(1.0 + (1.0 - t**2) * jnp.dot(u_hat, w)))
        return z_new, log_det


def constrained_planar_u(w: jax.Array, u: jax.Array) -> jax.Array:
    """û = u + (m(wᵀu) − wᵀu) w / ‖w‖², m(a) = −1 + softplus(a), so that wᵀû = m(wᵀu) > −1.

    Args:
        w: the planar flow's normal ``(d,)``.
        u: its unconstrained direction ``(d,)``.

    Returns:
        û ``(d,)``.
    """
    wu = jnp.dot(w, u)
    w_sq = jnp.maximum(jnp.dot(w, w), jnp.finfo(w.dtype).tiny)
    return u + (-1.0 + jax.nn.softplus(wu) - wu) * w / w_sq


class RadialFlow(nn.Module):
    """f(z) = z + β h(α, r)(z − z₀), h = 1/(α + r), with β ≥ −α (see the module).

    Parameters ``z0`` ``(d,)`` (N(0, 1)), ``log_alpha`` ``()`` (0, α = 1) and ``beta_hat``
    ``()`` (softplus⁻¹(1), so that β = 0 and the flow starts at the identity).
    """

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Map codes ``(..., d)``; returns ``(f(z) (..., d), log |det ∂f/∂z| (...))``."""
        d = z.shape[-1]
        z0 = self.param("z0", nn.initializers.normal(1.0), (d,))
        log_alpha = self.param("log_alpha", nn.initializers.zeros, ())
        beta_hat = self.param("beta_hat", nn.initializers.constant(_SOFTPLUS_INV_1), ())
        alpha = jnp.exp(log_alpha)
        beta = -alpha + jax.nn.softplus(beta_hat)
        diff = z - z0
        r = jnp.sqrt(jnp.sum(diff**2, axis=-1))
        h = 1.0 / (alpha + r)
        z_new = z + (beta * h)[..., None] * diff
        # 1 + βh + βh'r = 1 + βα h² (h' = −h²)
        log_det = (d - 1) * jnp.log1p(beta * h) + jnp.log1p(beta * alpha * h**2)
        return z_new, log_det


def made_degrees(d: int, hidden: Sequence[int]) -> list[np.ndarray]:
    """MADE degrees: the inputs 1..d, then each hidden layer's units (k mod max(d − 1, 1)) + 1.

    Args:
        d: the number of autoregressive inputs (and outputs).
        hidden: the hidden layers' widths.

    Returns:
        One integer array per layer: ``[(d,), (hidden[0],), …]``.
    """
    out = [np.arange(1, d + 1)]
    for width in hidden:
        out.append(np.arange(int(width)) % max(d - 1, 1) + 1)
    return out


def made_masks(d: int, hidden: Sequence[int]) -> list[np.ndarray]:
    """The masks ``(n_in, n_out)`` of the MADE's layers (Germain et al. 2015, eqs. 12–13).

    A hidden unit of degree k sees the units of degree ≤ k below it; output i sees the
    last hidden layer's units of degree < i, so output i depends on z_{<i} only.

    Args:
        d: the number of autoregressive inputs (and outputs).
        hidden: the hidden layers' widths.

    Returns:
        ``len(hidden) + 1`` float masks, the last ``(hidden[-1], d)``.
    """
    deg = made_degrees(d, hidden) + [np.arange(1, d + 1)]
    return [degree_mask(deg[i], deg[i + 1], strict=i == len(hidden)) for i in range(len(hidden) + 1)]


def degree_mask(in_degrees: Sequence[int], out_degrees: Sequence[int], strict: bool) -> np.ndarray:
    """The 0/1 mask ``(n_in, n_out)``: 1 where out-degree ≥ in-degree (> when ``strict``).

    Args:
        in_degrees: the degrees of the layer's inputs.
        out_degrees: the degrees of its outputs.
        strict: use > (the output layer) instead of ≥ (hidden layers).

    Returns:
        A float32 array ``(len(in_degrees), len(out_degrees))``.
    """
    i, o = np.asarray(in_degrees)[:, None], np.asarray(out_degrees)[None, :]
    return ((o > i) if strict else (o >= i)).astype(np.float32)


class MaskedDense(nn.Module):
    """A dense layer ``x @ (kernel ⊙ mask) + bias`` with the mask of :func:`degree_mask`.

    Attributes:
        in_degrees: the degrees of the inputs (their number is the input width).
        out_degrees: the degrees of the outputs (their number is the output width).
        strict: the output layer's rule (out-degree > in-degree).
        bias_init: the bias initialiser.
    """

    in_degrees: tuple[int, ...]
    out_degrees: tuple[int, ...]
    strict: bool = False
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` ``(..., n_in)`` → ``(..., n_out)``."""
        shape = (len(self.in_degrees), len(self.out_degrees))
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", self.bias_init, shape[1:])
        mask = jnp.asarray(degree_mask(self.in_degrees, self.out_degrees, self.strict), kernel.dtype)
        return x @ (kernel * mask) + bias


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: z ``(..., d)`` → (m, s), each ``(..., d)``.

    ReLU hidden layers of widths ``hidden`` with autoregressive masks (:func:`made_masks`),
    two masked output heads. With a context ``h`` ``(..., c)`` (broadcasting against z's
    leading axes), an unmasked dense map of h is added to the first hidden layer and to
    both heads (so that even m₁, s₁, which see no z, depend on x); this keeps the
    Jacobian ∂(m, s)/∂z strictly lower-triangular.

    Attributes:
        hidden: the hidden layers' widths (at least one).
        s_bias: the initial bias of the s head (Kingma et al. 2016 initialise s near +1 or
            +2 so that σ(s) starts close to 1 and each step close to the identity).
    """

    hidden: Sequence[int] = (128, 128, 128)
    s_bias: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        super().__post_init__()

    @nn.compact
    def __call__(self, z: jax.Array, h: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        """Return ``(m, s)`` for codes ``z`` ``(..., d)`` and an optional context ``h``."""
        deg = [tuple(int(k) for k in v) for v in made_degrees(z.shape[-1], self.hidden)]
        a = z
        for i in range(len(self.hidden)):
            a = MaskedDense(deg[i], deg[i + 1], name=f"masked_{i}")(a)
            if i == 0 and h is not None:
                a = a + nn.Dense(self.hidden[0], use_bias=False, name="context")(h)
            a = nn.relu(a)
        out = deg[0]  # output i has the degree of input i
        m = MaskedDense(deg[-1], out, strict=True, name="m")(a)
        s_init = nn.initializers.constant(self.s_bias)
        s = MaskedDense(deg[-1], out, strict=True, bias_init=s_init, name="s")(a)
        if h is not None:
            m = m + nn.Dense(len(out), use_bias=False, name="context_m")(h)
            s = s + nn.Dense(len(out), use_bias=False, name="context_s")(h)
        return m, s


class IAFStep(nn.Module):
    """One IAF step: (m, s) = MADE(z, h); z ← σ(s) ⊙ z + (1 − σ(s)) ⊙ m; log |det| = Σ log σ(s).

    Attributes:
        hidden: the MADE's hidden widths.
    """

    hidden: Sequence[int] = (128, 128, 128)

    @nn.compact
    def __call__(self, z: jax.Array, h: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        """Map codes ``(..., d)``; returns ``(z_new (..., d), log |det| (...))``."""
        m, s = MADE(self.hidden, name="made")(z, h)
        gate = jax.nn.sigmoid(s)
        return gate * z + (1.0 - gate) * m, jnp.sum(jax.nn.log_sigmoid(s), axis=-1)


class FlowVAE(AutoEncoderModel):
    """Base of the flow-posterior VAEs: subclasses define ``flow(z0, x) -> (z_K, Σ log det)``.

    ``__call__(x)`` encodes, flows the posterior mean and decodes it (so that
    ``model.init(key, x)`` creates the flows' parameters too).
    """

    def flow(self, z0: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Push codes ``z0`` ``(..., batch, d)`` of the examples ``x`` (the data, without a condition) through the flow."""
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        x, c = split_condition(self, x)
        z, _ = self.flow(encoder_mean(self.encoder, self.encode(x, c)), x)
        self.init_prior(z)
        return self.decode(z, c)


def run_layers(layers: Sequence[Any], z: jax.Array, *args: Any) -> tuple[jax.Array, jax.Array]:
    """Compose flow layers: z ← layer(z, *args) in order; returns ``(z_K, Σ_k log det_k)``.

    Args:
        layers: callables ``(z, *args) -> (z, log_det)``.
        z: codes ``(..., d)``.
        *args: extra arguments passed to every layer (a context).

    Returns:
        ``(z_K (..., d), Σ log det (...))``.
    """
    total = jnp.zeros(z.shape[:-1], z.dtype)
    for layer in layers:
        z, log_det = layer(z, *args)
        total = total + log_det
    return z, total


class FlowDraws(NamedTuple):
    """Draws of a flowed posterior.

    ``z0``: the base draws ``(S, batch, d)``; ``z``: z_K ``(S, batch, d)``; ``logdet``:
    Σ log |det| ``(S, batch)``; ``logq``: log q_K(z_K|x) = log q₀(z₀|x) − Σ log |det|
    ``(S, batch)``; ``enc_out``: the encoder's output.
    """

    z0: jax.Array
    z: jax.Array
    logdet: jax.Array
    logq: jax.Array
    enc_out: Any


def flowed_draws(
    model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, *, enc_out: Any = None
) -> FlowDraws:
    """Draw z₀ ~ q₀(z|x) (reparameterised) and push the draws through the model's flow.

    Args:
        model: a :class:`FlowVAE`.
        variables: its variables.
        x: data ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key for the draws.
        n_samples: S ≥ 1 draws per example.
        enc_out: the encoder's output for ``x``, when already computed.

    Returns:
        :class:`FlowDraws`.
    """
    enc_out = encode(model, variables, x) if enc_out is None else enc_out
    z0 = sample_posterior(model, enc_out, key, n_samples)
    z, logdet = model.apply(variables, z0, split_condition(model, x)[0], method="flow")
    logq = encoder_logposterior(model.encoder, z0, enc_out) - logdet
    return FlowDraws(z0, z, logdet, logq, enc_out)


def _parts(model: FlowVAE, variables: Variables, x: Any, draws: FlowDraws) -> tuple[jax.Array, jax.Array]:
    """log p(x|z_K) (log p(x|z_K, c) for a pair) and log p(z_K) of the draws, each ``(S, batch)``."""
    return mc_loglikelihood(model, variables, x, draws.z), log_prior(model, variables, draws.z)


def log_weights(
    model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, enc_out: Any = None
) -> jax.Array:
    """log w_s = log p(x|z_K,s) + log p(z_K,s) − log q_K(z_K,s|x) of S flowed draws, ``(S, batch)``.

    Args:
        model: a :class:`FlowVAE`.
        variables: its variables.
        x: data ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key for the draws.
        n_samples: S ≥ 1.
        enc_out: the encoder's output for ``x``, when already computed.

    Returns:
        The log importance weights ``(S, batch)``.
    """
    draws = flowed_draws(model, variables, x, key, n_samples, enc_out=enc_out)
    loglik, logp = _parts(model, variables, x, draws)
    return loglik + logp - draws.logq


class FlowELBOTerms(NamedTuple):
    """Per-example pieces of the flowed ELBO, Monte-Carlo means over the S draws, ``(batch,)``.

    ``loglik``: log p(x|z_K); ``kl``: log q₀(z₀|x) − Σ log |det| − log p(z_K), an unbiased
    estimate of KL(q_K ‖ p); ``logdet``: Σ log |det|; ``draws``: the :class:`FlowDraws`.
    """

    loglik: jax.Array
    kl: jax.Array
    logdet: jax.Array
    draws: FlowDraws


def flow_elbo_terms(
    model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int = 1
) -> FlowELBOTerms:
    """Draw S = ``n_samples`` flowed codes per example and score them (ELBO = loglik − kl).

    Args:
        model: a :class:`FlowVAE`.
        variables: its variables.
        x: data ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key.
        n_samples: S ≥ 1.

    Returns:
        :class:`FlowELBOTerms`.
    """
    draws = flowed_draws(model, variables, x, key, n_samples)
    loglik, logp = _parts(model, variables, x, draws)
    mean = lambda a: jnp.mean(a, axis=0)  # noqa: E731
    return FlowELBOTerms(mean(loglik), mean(draws.logq - logp), mean(draws.logdet), draws)


def elbo(model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, *, n_samples: int = 1) -> jax.Array:
    """Per-example flowed ELBO estimate, ``(batch,)`` (see the module).

    Args:
        model: a :class:`FlowVAE`.
        variables: its variables.
        x: data ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key.
        n_samples: S ≥ 1 draws averaged per example.

    Returns:
        (1/S) Σ_s [log p(x|z_K,s) + log p(z_K,s) − log q₀(z₀,s|x) + Σ_k log |det|_s].
    """
    check_inputs(model, x, key)
    check_int(n_samples, "n_samples", minimum=1)
    t = flow_elbo_terms(model, variables, x, key, n_samples)
    return t.loglik - t.kl


def loss(
    model: FlowVAE,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    beta: float = 1.0,
    n_samples: int = 1,
    aux: bool = False,
) -> Any:
    """Negative flowed ELBO (its KL estimate weighted by β) averaged over the batch; a scalar.

    Args:
        model: a :class:`FlowVAE`.
        variables: its variables.
        x: data ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key.
        beta: the weight β ≥ 0 of the KL estimate (1 for the ELBO; pythae has none).
        n_samples: S ≥ 1 draws per example.
        aux: also return ``{"loss", "loglikelihood", "kl", "logdet", "elbo"}`` (batch means;
            ``elbo`` is the unweighted one).

    Returns:
        The loss, or ``(loss, metrics)`` with ``aux=True``.
    """
    check_inputs(model, x, key)
    check_scalar(beta, "beta", nonnegative=True)
    check_int(n_samples, "n_samples", minimum=1)
    t = flow_elbo_terms(model, variables, x, key, n_samples)
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    metrics = {"loglikelihood": loglik, "kl": kl, "logdet": jnp.mean(t.logdet), "elbo": loglik - kl}
    return finish(-loglik + beta * kl, metrics, aux)


@evaluate.elbo.register(FlowVAE)
def _flow_evaluate_elbo(model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    return elbo(model, variables, x, key, **hyper)


@evaluate.proposal_log_weights.register(FlowVAE)
def _flow_proposal_log_weights(
    model: FlowVAE, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, enc_out: Any
) -> jax.Array:
    return log_weights(model, variables, x, key, n_samples, enc_out)


__all__ = [
    "FLOWS",
    "FlowDraws",
    "FlowELBOTerms",
    "FlowVAE",
    "IAFStep",
    "MADE",
    "MaskedDense",
    "PlanarFlow",
    "RadialFlow",
    "constrained_planar_u",
    "degree_mask",
    "elbo",
    "flow_elbo_terms",
    "flowed_draws",
    "log_weights",
    "loss",
    "made_degrees",
    "made_masks",
    "run_layers",
]
