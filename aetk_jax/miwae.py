"""MIWAE: the multiply importance-weighted bound (Rainforth et al. 2018).

    MIWAE_{M,K}(x) = (1/M) Σ_m log (1/K) Σ_k w_{mk},   w_{mk} = p(x|z_{mk}) p(z_{mk}) / q(z_{mk}|x),

M = ``n_groups`` independent IWAE_K bounds (K = ``n_samples``) averaged. M = 1
is IWAE_K; K = 1 is the M-sample ELBO. Rainforth et al. show that a larger K
tightens the bound but lowers the signal-to-noise ratio of the encoder's
gradient, which the M groups restore. See ``aetk_jax.importance`` for the
departure of pythae's MIWAE from this formula.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, finish
from .importance import check_bound_hyper, grouped_bound, grouped_bound_loss_terms, log_weights


class MIWAE(AutoEncoderModel):
    """``MIWAE(encoder, decoder)``: trained on the mean of ``n_groups`` IWAE bounds."""


def elbo(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    n_groups: int = 3,
) -> jax.Array:
    """MIWAE_{M,K} per example, ``(batch,)``, from M·K codes per example.

    Args:
        n_samples: K ≥ 1 codes per group.
        n_groups: M ≥ 1 groups.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, n_groups)
    return grouped_bound(log_weights(model, variables, x, key, n_samples * n_groups).logw, n_groups)


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    n_groups: int = 3,
    gradient: str = "standard",
    aux: bool = False,
) -> Any:
    """−(1/B) Σ_b MIWAE_{M,K}(x_b); with ``gradient="dreg"`` each group's encoder gradient is DReG's.

    Returns:
        the scalar loss, or ``(loss, {"loss", "miwae", "elbo"})`` with ``aux=True``.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, n_groups, gradient=gradient)
    bound, logw = grouped_bound_loss_terms(model, variables, x, key, n_samples, n_groups, gradient)
    value = -jnp.mean(bound)
    return finish(value, {"miwae": -value, "elbo": jnp.mean(jax.lax.stop_gradient(logw))}, aux)
