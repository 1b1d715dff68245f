"""Generation: ``aet.sample(model, variables, key, n)`` (``condition=c`` for a conditional model)."""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import Variables, check_condition, decode, is_conditional, sample_prior
from .decoders import decoder_mean
from .validation import check_int, check_key


class Samples(NamedTuple):
    """``z``: latent draws ``(n, d)``; ``x``: the decoder's mean at them ``(n, *data_shape)``."""

    z: jax.Array
    x: jax.Array


def check_sample_condition(model: nn.Module, condition: Any, n: int) -> Any:
    """The condition of ``n`` samples as an array (``None`` for an unconditional model).

    ``ValueError`` when a conditional model gets none, an unconditional one gets
    one, or it is not ``(n,)`` labels in [0, n_conditions) / ``(n, condition_dim)`` covariates.

    Args:
        model: the model to sample.
        condition: labels ``(n,)``, covariates ``(n, condition_dim)`` or ``None``.
        n: the number of samples.
    """
    if not is_conditional(model):
        if condition is not None:
            raise ValueError(
                f"`condition` was given, but {type(model).__name__} is not conditional "
                "(n_conditions = condition_dim = 0)"
            )
        return None
    if condition is None:
        what = "labels of shape (n,)" if model.n_conditions else f"covariates of shape (n, {model.condition_dim})"
        raise ValueError(f"{type(model).__name__} is conditional: pass `condition` ({what})")
    condition = jnp.asarray(condition)
    check_condition(model, condition, n, name="condition")
    return condition


@functools.singledispatch
def sample(model: nn.Module, variables: Variables, key: jax.Array, n: int, *, condition: Any = None) -> Samples:
    """Draw ``n`` codes from the model's prior and decode them.

    The prior is the model's (``prior=``, N(0, I) by default); RHVAE registers a sampler of its learned
    metric's density. A conditional model decodes z ~ p(z) with p(x|z, c): ``condition`` is then
    required, labels ``(n,)`` or covariates ``(n, condition_dim)`` (one per sample), e.g.
    ``jnp.full(n, 3)`` for n samples of class 3. Returns ``Samples(z, x)`` with ``x`` the decoder mean.
    """
    check_key(key)
    check_int(n, "n", minimum=1)
    condition = check_sample_condition(model, condition, n)
    z = sample_prior(model, variables, key, n)
    return Samples(z, decoder_mean(model.decoder, decode(model, variables, z, condition)))
