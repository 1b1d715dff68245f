"""VAMP: the VAE with a VampPrior (Tomczak & Welling 2018).

    p(z) = (1/K) Σ_k q(z | u_k),    u_k ∈ 𝒳 trainable pseudo-inputs, K = ``n_components``,

the aggregate posterior approximated at K learned points of data space. The
loss is the VAE's with the KL term estimated from the posterior draws,

    loss = −(1/B) Σ_b (1/S) Σ_s [log p(x_b|z_bs) + β·(log p(z_bs) − log q(z_bs|x_b))],

(``aet.base.kl_term``), so ``aet.vamp.loss`` and ``aet.vamp.elbo`` are
``aet.vae.loss`` and ``aet.vae.elbo``: the prior comes with the model.
``aet.sample`` draws a pseudo-input uniformly and then z ~ q(z|u_k);
``aet.evaluate.marginal_loglikelihood`` weighs its draws with this prior. The
same prior fits any VAE-family model: ``prior=aet.priors.VampPrior(K, data_shape)``.

Departure from pythae: pythae's pseudo-inputs are the output of a linear layer
(from one-hot codes) clipped to [0, 1] by a hard tanh; here they are free
parameters initialised uniformly on [0, 1), so data outside [0, 1] can be
matched too. pythae also drops the constant of log q and log p(z); here both
are normalised densities, so the ELBO is a bound in nats.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax

from . import vae
from .base import AutoEncoderModel, Variables, data_shape
from .base import log_prior as _log_prior
from .priors import VampPrior
from .validation import check_int


class VAMP(AutoEncoderModel):
    """``VAMP(encoder, decoder, n_components=50)``: a VAE whose prior is a VampPrior.

    The pseudo-inputs have the shape of one example (``data_shape``, read from the
    decoder's ``output_shape`` when not given) and live at
    ``variables["params"]["prior"]["pseudo_inputs"]`` ``(n_components, *data_shape)``.
    """

    n_components: int = 50
    data_shape: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        check_int(self.n_components, "n_components", minimum=1)
        shape = data_shape(self) if self.data_shape is None else tuple(int(s) for s in self.data_shape)
        if shape is None:
            raise TypeError(
                f"VAMP needs the shape of one example for its pseudo-inputs: pass data_shape=... "
                f"(the decoder {type(self.decoder).__name__} declares no `output_shape`)"
            )
        if self.prior is None:
            object.__setattr__(self, "prior", VampPrior(int(self.n_components), shape))
        super().__post_init__()


def log_prior(model: AutoEncoderModel, variables: Variables, z: jax.Array) -> jax.Array:
    """log p(z) = logmeanexp_k log q(z | u_k) for codes ``(..., d)``; returns ``(...)`` (``(batch,)``)."""
    return _log_prior(model, variables, z)


def elbo(model: AutoEncoderModel, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    """Per-example ELBO under the VampPrior, ``(batch,)`` (``aet.vae.elbo``)."""
    return vae.elbo(model, variables, x, key, **hyper)


def loss(model: AutoEncoderModel, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> Any:
    """Negative ELBO under the VampPrior (``aet.vae.loss``: ``beta=1.0``, ``n_samples=1``, ``aux``)."""
    return vae.loss(model, variables, x, key, **hyper)
