"""VAE with an inverse autoregressive flow (Kingma et al. 2016): ``aet.VAE_IAF``.

The encoder's Gaussian draw z₀ ~ q₀(z|x) goes through T = ``n_made_blocks`` IAF steps

    (m_t, s_t) = MADE_t(z_{t−1}[, h(x)]),    z_t = σ(s_t) ⊙ z_{t−1} + (1 − σ(s_t)) ⊙ m_t,
    log |det ∂z_t/∂z_{t−1}| = Σ_i log σ(s_t,i),

where m_t,i and s_t,i depend on z_{t−1,<i} only (masked dense layers, Germain et al. 2015),
so the Jacobian is lower-triangular with diagonal σ(s_t). The ordering of the latent
dimensions is reversed between steps (z ← z[..., ::-1], |det| = 1), so that every
dimension is conditioned on every other across two steps. The loss is the negative
flowed ELBO of ``aetk_jax.flows`` (log q_T(z_T|x) = log q₀(z₀|x) − Σ_t Σ_i log σ(s_t,i)).
Shapes: codes ``(S, batch, d)``, log-determinants ``(S, batch)``.

Context. Kingma et al. also feed a context h(x) from the encoder into every MADE. Here
``context_network`` (a flax module mapping x to features, default ``None``: no context,
as in pythae) provides it: h = context_network(x) enters each MADE's first hidden layer and
its two output heads through unmasked dense maps (``aet.flows.MADE``), which keeps the
Jacobian in z triangular.

Departures from pythae (``VAE_IAF``): pythae's step is z ← (z − μ(z)) ⊙ exp(−α(z)) (the
affine MADE without the sigmoid gate, log |det| = −Σ α), initialised at random; here the
gated form above, numerically stable and started close to the identity (the s heads' bias
is +1, σ ≈ 0.73). Its MADE widths (3 hidden layers of 128 units) are the default here too
(``made_hidden``); it has no context network and no β.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from .flows import elbo, loss  # the flowed ELBO and loss, written once in aet.flows
from .flows import FlowVAE, IAFStep, run_layers
from .validation import check_int


class VAE_IAF(FlowVAE):
    """``VAE_IAF(encoder, decoder, n_made_blocks=2)``: a VAE whose posterior is an IAF.

    Attributes:
        n_made_blocks: the number T ≥ 1 of IAF steps (one MADE each).
        made_hidden: the hidden widths of every MADE (at least one layer).
        context_network: an optional flax module x → h ``(batch, c)`` (Kingma et al.'s
            context); ``None`` for none.
    """

    n_made_blocks: int = 2
    made_hidden: Sequence[int] = (128, 128, 128)
    context_network: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        check_int(self.n_made_blocks, "n_made_blocks", minimum=1)
        hidden = tuple(self.made_hidden)
        if not hidden:
            raise ValueError("`made_hidden` must name at least one hidden layer width")
        for width in hidden:
            check_int(width, "made_hidden", minimum=1)
        object.__setattr__(self, "made_hidden", hidden)
        super().__post_init__()

    def setup(self) -> None:
        self.steps = [IAFStep(self.made_hidden, name=f"iaf_{t}") for t in range(self.n_made_blocks)]

    def flow(self, z0: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Push codes ``z0`` ``(..., batch, d)`` through the IAF steps, reversing between steps.

        Returns:
            ``(z_T (..., batch, d), Σ_t log |det| (..., batch))``.
        """
        h = None if self.context_network is None else self.context_network(x)
        layers = []
        for t, step in enumerate(self.steps):
            if t > 0:
                layers.append(_reverse)
            layers.append(step)
        return run_layers(layers, z0, h)


def _reverse(z: jax.Array, h: Any) -> tuple[jax.Array, jax.Array]:
    """Reverse the latent ordering (a permutation: log |det| = 0)."""
    return z[..., ::-1], jax.numpy.zeros(z.shape[:-1], z.dtype)


__all__ = ["VAE_IAF", "elbo", "loss"]
