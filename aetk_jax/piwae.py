"""PIWAE: partially importance-weighted training (Rainforth et al. 2018).

The encoder (φ) ascends the MIWAE_{M,K} bound and the decoder (θ) the IWAE_{M·K}
bound, both computed from the same M·K codes per example:

    ∇_φ ← ∇_φ (1/M) Σ_m log (1/K) Σ_k w_{mk},     ∇_θ ← ∇_θ log (1/(MK)) Σ_{m,k} w_{mk}.

``loss`` is one pure function whose *value* is −IWAE_{M·K} and whose gradient
is, on the encoder's parameters, −∇_φ MIWAE and, on the decoder's, −∇_θ IWAE
(each objective sees the other part's parameters as constants). Any optax
optimizer then steps both parts in one compiled step; ``optimizer(enc, dec)``
gives each part its own optimizer (``optax.multi_transform``), as pythae's two
optimizers do. With the same per-parameter optimizer for both (e.g. Adam) the
two are identical.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from .base import AutoEncoderModel, Variables, check_inputs, finish
from .importance import check_bound_hyper, grouped_bound, log_weights


class PIWAE(AutoEncoderModel):
    """``PIWAE(encoder, decoder)``: encoder on MIWAE, decoder on IWAE."""


def stop_part(variables: Variables, name: str) -> Variables:
    """``variables`` with ``variables["params"][name]`` treated as a constant."""
    params = dict(variables["params"])
    params[name] = jax.lax.stop_gradient(params[name])
    return {**variables, "params": params}


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    n_groups: int = 3,
    aux: bool = False,
) -> Any:
    """Value −(1/B) Σ_b IWAE_{MK}(x_b); gradient −∇_φ MIWAE_{M,K} on the encoder, −∇_θ IWAE_{MK} on the decoder.

    Args:
        n_samples: K ≥ 1 codes per group.
        n_groups: M ≥ 1 groups.
        aux: also return ``{"loss", "iwae", "miwae", "elbo"}``.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, n_groups)
    s = n_samples * n_groups
    # the same key gives the same codes in both passes
    logw_enc = log_weights(model, stop_part(variables, "decoder"), x, key, s).logw
    logw_dec = log_weights(model, stop_part(variables, "encoder"), x, key, s).logw
    miwae = grouped_bound(logw_enc, n_groups)
    iwae = grouped_bound(logw_dec)
    surrogate = jnp.mean(miwae) + jnp.mean(iwae)
    value = -jax.lax.stop_gradient(jnp.mean(iwae)) - (surrogate - jax.lax.stop_gradient(surrogate))
    metrics = {
        "iwae": jax.lax.stop_gradient(jnp.mean(iwae)),
        "miwae": jax.lax.stop_gradient(jnp.mean(miwae)),
        "elbo": jnp.mean(jax.lax.stop_gradient(logw_dec)),
    }
    return finish(value, metrics, aux)


def optimizer(
    encoder_optimizer: optax.GradientTransformation, decoder_optimizer: optax.GradientTransformation
) -> optax.GradientTransformation:
    """One optax transformation stepping the encoder with one optimizer and the decoder with another.

    Args:
        encoder_optimizer: applied to ``params["encoder"]``.
        decoder_optimizer: applied to ``params["decoder"]``.

    Returns:
        ``optax.multi_transform`` over the top-level parameter groups.
    """
    return optax.multi_transform(
        {"encoder": encoder_optimizer, "decoder": decoder_optimizer},
        lambda params: {k: k for k in params},
    )
