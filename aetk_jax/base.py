"""The model base class and the shared ELBO pieces every VAE-family loss uses.

A model is a flax module holding an ``encoder`` and a ``decoder`` (plus any
extra networks). Its ``__call__(x)`` touches every sub-network so that
``model.init(key, x)`` returns all variables; losses reach the parts through
``encode`` and ``decode``. The functions here are the pieces of the ELBO,

    ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ p(z)),

written once and reused by the VAE, β-VAE, InfoVAE, InfoMaxVAE, HVAE and RHVAE
losses and by ``aet.evaluate``.

Conditional models (``n_conditions`` or ``condition_dim`` > 0, Sohn et al. 2015's
CVAE with an unconditional prior) take the pair ``x = (x, c)`` wherever a loss
takes data; :func:`check_inputs`, :func:`encode`, :func:`loglikelihood` and
:func:`elbo_terms` split it (:func:`split_condition`), so a loss written with
them is conditional without change:

    ELBO(x, c) = E_{q(z|x,c)}[log p(x|z, c)] − KL(q(z|x, c) ‖ p(z)).

The condition enters as e(c) (one-hot labels or the covariates) concatenated to
the flattened data before the encoder's body and to z before the decoder's body.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .decoders import decoder_loglikelihood
from .encoders import encoder_kl, encoder_logposterior, encoder_mean, encoder_sample, spherical_logprior
from .priors import VampPrior, is_standard_normal
from .validation import check_array, check_key, is_concrete

Variables = Any


class AutoEncoderModel(nn.Module):
    """Base of every model: an ``encoder``, a ``decoder``, an optional ``prior`` and an optional condition.

    ``__call__(x)`` encodes ``x`` ``(batch, *data_shape)``, takes the posterior
    mean and decodes it (and evaluates the prior there); it exists so that
    ``model.init(key, x)`` creates all parameters.

    A conditional model (``n_conditions`` or ``condition_dim`` > 0) models
    q(z|x, c) and p(x|z, c) with p(z) unconditional. Its losses, ``__call__`` and
    :func:`encode` take the pair ``(x, c)``; the encoder's body sees
    ``[flatten(x), e(c)]`` ``(batch, n_x + k)`` and the decoder's body
    ``[z, e(c)]`` ``(batch, d + k)``, with e(c) the one-hot code of labels
    (k = ``n_conditions``) or the covariates themselves (k = ``condition_dim``).
    No parameter is added: only the first layer of each body is k inputs wider.
    With both zero (the default) the model is exactly the unconditional one.

    Attributes:
        encoder: the encoder module (output: the parameters of q(z|x) or a code).
        decoder: the decoder module (output: the parameters of p(x|z) or a mean).
        prior: a prior module (``aetk_jax.priors``; keyword-only), ``None`` for N(0, I).
        n_conditions: the number of label values (labels 0..n−1, embedded one-hot); 0: none (keyword-only).
        condition_dim: the size of a continuous covariate vector; 0: none (keyword-only).
    """

    encoder: nn.Module
    decoder: nn.Module
    _: dataclasses.KW_ONLY
    prior: Optional[nn.Module] = None
    n_conditions: int = 0
    condition_dim: int = 0

    def __post_init__(self) -> None:
        check_conditioning(self.n_conditions, self.condition_dim, self.prior)
        # plain ints keep the module hashable and its configuration readable
        object.__setattr__(self, "n_conditions", int(self.n_conditions))
        object.__setattr__(self, "condition_dim", int(self.condition_dim))
        super().__post_init__()

    def embed_condition(self, c: jax.Array, dtype: Any) -> jax.Array:
        """e(c) ``(batch, k)``: one-hot labels or the covariates, in ``dtype``."""
        if self.n_conditions:
            return jax.nn.one_hot(c, self.n_conditions, dtype=dtype)
        return jnp.asarray(c, dtype)

    def _condition_or_none(self, c: Any) -> Any:
        if (c is not None) != is_conditional(self):
            raise ValueError(_condition_mismatch(self, c))
        return c

    def encode(self, x: jax.Array, c: Any = None) -> Any:
        if self._condition_or_none(c) is None:
            return self.encoder(x)
        flat = x.reshape(x.shape[0], -1)
        return self.encoder(jnp.concatenate([flat, self.embed_condition(c, flat.dtype)], axis=-1))

    def decode(self, z: jax.Array, c: Any = None) -> Any:
        if self._condition_or_none(c) is None:
            return self.decoder(z)
        e = self.embed_condition(c, z.dtype)
        return self.decoder(jnp.concatenate([z, jnp.broadcast_to(e, z.shape[:-1] + e.shape[-1:])], axis=-1))

    def log_prior(self, z: jax.Array) -> jax.Array:
        """log p(z) for codes ``(..., d)``, ``(...)``."""
        return spherical_logprior(z) if self.prior is None else self.prior(z, self.encoder)

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` draws from p(z), ``(n, d)``."""
        if self.prior is None:
            return jax.random.normal(key, (n, self.latent_dim))
        return self.prior.sample(key, n, self.latent_dim, self.encoder)

    def init_prior(self, z: jax.Array) -> None:
        """Create the prior's parameters (call from ``__call__``); nothing for N(0, I)."""
        if self.prior is not None:
            self.prior(z, self.encoder)

    def __call__(self, x: Any) -> Any:
        x, c = split_condition(self, x)
        z = encoder_mean(self.encoder, self.encode(x, c))
        self.init_prior(z)
        return self.decode(z, c)

    @property
    def latent_dim(self) -> int:
        return int(self.encoder.latent_dim)


def is_conditional(model: Any) -> bool:
    """True when ``model`` has ``n_conditions`` or ``condition_dim`` > 0 (its inputs are pairs ``(x, c)``)."""
    return bool(getattr(model, "n_conditions", 0) or getattr(model, "condition_dim", 0))


def _describe_condition(model: Any) -> str:
    if getattr(model, "n_conditions", 0):
        return f"n_conditions={model.n_conditions}: integer labels of shape (batch,)"
    return f"condition_dim={model.condition_dim}: covariates of shape (batch, {model.condition_dim})"


def _condition_mismatch(model: Any, c: Any) -> str:
    if c is None:
        return f"{type(model).__name__} is conditional ({_describe_condition(model)}), but no condition was given"
    return (f"{type(model).__name__} is not conditional (n_conditions = condition_dim = 0), but a condition was "
            "given; build it with n_conditions=... or condition_dim=...")


def check_conditioning(n_conditions: Any, condition_dim: Any, prior: Any = None) -> None:
    """``ValueError`` naming the argument for a negative or non-integer count, both set, or a VampPrior.

    Args:
        n_conditions: the number of labels (≥ 0).
        condition_dim: the covariate size (≥ 0).
        prior: the model's prior; a ``VampPrior`` cannot be conditional (its pseudo-inputs carry no condition).
    """
    for value, name in ((n_conditions, "n_conditions"), (condition_dim, "condition_dim")):
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
            raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}")
    if n_conditions and condition_dim:
        raise ValueError(
            f"set one of `n_conditions` (labels) and `condition_dim` (covariates), not both; got "
            f"n_conditions={n_conditions}, condition_dim={condition_dim}"
        )
    if (n_conditions or condition_dim) and isinstance(prior, VampPrior):
        raise ValueError(
            "`prior`: a VampPrior (and VAMP) cannot be conditional: its pseudo-inputs u_k carry no condition c; "
            "use the standard normal (prior=None) or aet.priors.MixtureOfGaussians with n_conditions/condition_dim"
        )


def split_condition(model: Any, x: Any, name: str = "x") -> tuple[Any, Any]:
    """``(data, c)`` of a loss's input: the pair ``(x, c)`` of a conditional model, ``(x, None)`` otherwise.

    ``ValueError`` (naming the argument ``name``) when a conditional model gets no pair.
    """
    if not is_conditional(model):
        return x, None
    if not (isinstance(x, (tuple, list)) and len(x) == 2):
        raise ValueError(
            f"`{name}` must be the pair (x, c) for the conditional {type(model).__name__} ({_describe_condition(model)}), "
            f"got {type(x).__name__}"
        )
    return x[0], x[1]


def batch_size(x: Any) -> int:
    """The number of examples in ``x`` ``(batch, ...)`` or in the data of a pair ``(x, c)``."""
    return int((x[0] if isinstance(x, (tuple, list)) else x).shape[0])


def check_condition(model: Any, c: Any, batch: int, name: str = "c") -> None:
    """Check a condition for ``batch`` examples: labels ``(batch,)`` in [0, n_conditions), or covariates
    ``(batch, condition_dim)``; range and finiteness only when ``c`` is concrete.

    Args:
        model: the conditional model.
        c: the condition.
        batch: the number of examples it must cover.
        name: the argument's name in messages.
    """
    if not hasattr(c, "shape") or not hasattr(c, "dtype"):
        raise TypeError(f"`{name}` must be an array, got {type(c).__name__}")
    n = int(getattr(model, "n_conditions", 0))
    if n:
        if not jnp.issubdtype(jnp.dtype(c.dtype), jnp.integer):
            raise TypeError(f"`{name}` must hold integer labels 0..{n - 1}, got dtype {c.dtype}")
        if tuple(c.shape) != (batch,):
            raise ValueError(f"`{name}` must be labels of shape ({batch},), got shape {tuple(c.shape)}")
        if is_concrete(c):
            arr = np.asarray(c)
            bad = (arr < 0) | (arr >= n)
            if bad.any():
                raise ValueError(
                    f"`{name}` holds {int(bad.sum())} label(s) outside [0, {n}) (n_conditions={n}), "
                    f"e.g. {int(arr[bad][0])}"
                )
        return
    k = int(model.condition_dim)
    if tuple(c.shape) != (batch, k):
        raise ValueError(f"`{name}` must be covariates of shape ({batch}, {k}), got shape {tuple(c.shape)}")
    check_array(c, name)


def data_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The per-example data shape the decoder produces, when it declares one."""
    shape = getattr(model.decoder, "output_shape", None)
    if shape is None:
        return None
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    n_categories = getattr(model.decoder, "n_categories", None)  # one-hot data: (*shape, k)
    return shape + (int(n_categories),) if n_categories is not None else shape


_NO_KEY = object()


def check_inputs(model: nn.Module, x: Any, key: Any = _NO_KEY, *, name: str = "x") -> None:
    """Validate a loss's data (and key, when one is passed: ``None`` is then a TypeError).

    For a conditional model ``x`` is the pair ``(x, c)`` (:func:`check_condition`).
    """
    if isinstance(x, (tuple, list)) and not is_conditional(model):
        raise ValueError(
            f"`{name}` is a {type(x).__name__}, but {type(model).__name__} is not conditional "
            "(n_conditions = condition_dim = 0): pass the data array alone"
        )
    data, c = split_condition(model, x, name)
    check_array(data, name, data_shape=data_shape(model))
    if c is not None:
        check_condition(model, c, int(data.shape[0]), name=f"{name}[1] (the condition)")
    if key is not _NO_KEY:
        check_key(key)


def encode(model: nn.Module, variables: Variables, x: Any) -> Any:
    """Encoder output (the parameters of q(z|x)) for ``x`` ``(batch, *data_shape)`` (or the pair ``(x, c)``)."""
    data, c = split_condition(model, x)
    if c is None:
        return model.apply(variables, data, method="encode")
    return model.apply(variables, data, c, method="encode")


def decode(model: nn.Module, variables: Variables, z: jax.Array, condition: Any = None) -> Any:
    """Decoder output (the parameters of p(x|z)) for codes ``z`` ``(..., batch, d)``.

    A conditional model needs ``condition`` (``(batch,)`` labels or ``(batch, k)``
    covariates; e.g. ``split_condition(model, x)[1]``).
    """
    if condition is None:
        return model.apply(variables, z, method="decode")
    return model.apply(variables, z, condition, method="decode")


def loglikelihood(model: nn.Module, variables: Variables, x: Any, z: jax.Array) -> jax.Array:
    """log p(x|z) (log p(x|z, c) for the pair ``x = (x, c)``) per example, ``(batch,)``."""
    data, c = split_condition(model, x)
    return decoder_loglikelihood(model.decoder, data, decode(model, variables, z, c))


def log_prior(model: nn.Module, variables: Variables, z: jax.Array) -> jax.Array:
    """log p(z) under the model's prior for codes ``(..., d)``, ``(...)`` (N(0, I) without one)."""
    if is_standard_normal(getattr(model, "prior", None)):
        return spherical_logprior(z)
    return model.apply(variables, z, method="log_prior")


def sample_prior(model: nn.Module, variables: Variables, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws ``(n, d)`` from the model's prior (N(0, I) without one), reparameterised."""
    if getattr(model, "prior", None) is None:
        return jax.random.normal(key, (n, model.latent_dim))
    return model.apply(variables, key, n, method="sample_prior")


def kl_term(model: nn.Module, variables: Variables, enc_out: Any, zs: jax.Array) -> jax.Array:
    """KL(q(z|x) ‖ p(z)) per example, ``(batch,)``.

    In closed form for the standard normal prior; otherwise the Monte-Carlo
    estimate (1/S) Σ_s [log q(z_s|x) − log p(z_s)] from the draws ``zs`` ``(S, batch, d)``.
    """
    if is_standard_normal(getattr(model, "prior", None)):
        return encoder_kl(model.encoder, enc_out)
    logq = encoder_logposterior(model.encoder, zs, enc_out)
    return jnp.mean(logq - log_prior(model, variables, zs), axis=0)


def sample_posterior(model: nn.Module, enc_out: Any, key: jax.Array, n_samples: int) -> jax.Array:
    """``n_samples`` reparameterised draws from q(z|x): ``(n_samples, batch, d)`` (vmapped).

    One draw uses ``key`` itself (no split: on CPU every split is a loop of five
    threefry rounds inside the training step); ``n_samples`` draws use ``split(key, n_samples)``.
    """
    if n_samples == 1:
        return encoder_sample(model.encoder, enc_out, key)[None]
    keys = jax.random.split(key, n_samples)
    return jax.vmap(lambda k: encoder_sample(model.encoder, enc_out, k))(keys)


def mc_loglikelihood(model: nn.Module, variables: Variables, x: jax.Array, zs: jax.Array) -> jax.Array:
    """log p(x|z_s) for each sample: ``zs`` ``(S, batch, d)`` → ``(S, batch)`` (vmapped)."""
    return jax.vmap(lambda z: loglikelihood(model, variables, x, z))(zs)


class ELBOTerms(NamedTuple):
    """Per-example pieces of the ELBO.

    ``loglik``: Monte-Carlo mean of log p(x|z) over the samples, ``(batch,)``;
    ``kl``: KL(q(z|x) ‖ p(z)), ``(batch,)`` (closed form for N(0, I)); ``z``: the samples
    ``(S, batch, d)``; ``enc_out``: the encoder's output.
    """

    loglik: jax.Array
    kl: jax.Array
    z: jax.Array
    enc_out: Any


def elbo_terms(
    model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int = 1
) -> ELBOTerms:
    """Encode, draw ``n_samples`` codes per example, and score them.

    loglik = (1/S) Σₛ log p(x|zₛ), zₛ = μ + σ ⊙ εₛ; kl = KL(q(z|x) ‖ p(z)) (``kl_term``).
    """
    enc_out = encode(model, variables, x)
    zs = sample_posterior(model, enc_out, key, n_samples)
    loglik = jnp.mean(mc_loglikelihood(model, variables, x, zs), axis=0)
    return ELBOTerms(loglik, kl_term(model, variables, enc_out, zs), zs, enc_out)


def finish(loss: jax.Array, metrics: dict[str, jax.Array], aux: bool) -> Any:
    """Return ``loss`` or ``(loss, metrics)`` with ``metrics['loss']`` filled in."""
    if aux:
        return loss, {"loss": loss, **metrics}
    return loss
