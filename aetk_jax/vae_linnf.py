"""VAE with planar and radial flows (Rezende & Mohamed 2015): ``aet.VAE_LinNF``.

The encoder's Gaussian q₀(z₀|x) is pushed through K = ``len(flows)`` planar or radial
layers (``aetk_jax.flows``), z_K = f_K ∘ … ∘ f_1(z₀), and the loss is the negative

    ELBO(x) = E_{q₀}[log p(x|z_K) + log p(z_K) − log q₀(z₀|x) + Σ_k log |det ∂f_k/∂z_{k−1}|]

(one reparameterised draw per example by default; ``n_samples`` averages S draws):

    planar:  f(z) = z + û tanh(wᵀz + b),        log |det| = log |1 + ûᵀψ(z)|,  ψ = h'(wᵀz + b) w,
    radial:  f(z) = z + β h(α, r)(z − z₀),      log |det| = (d−1) log(1 + βh) + log(1 + βh + βh'r),

with û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a) (so wᵀû > −1), α = exp(log α),
β = −α + softplus(β̂) ≥ −α: every layer is invertible with a positive Jacobian determinant.
Shapes: codes ``(S, batch, d)``, log-determinants ``(S, batch)``.

The flows' parameters are free parameters of the model (``variables["params"]["flow_k"]``,
one set for all examples, as in pythae), not produced by the encoder for each x as in the
paper's experiments (amortised flows); the encoder and decoder have the VAE's layout.

Departures from pythae (``VAE_LinNF``): pythae applies no invertibility constraint to the
planar u (its planar log-determinant is log(|1 + ψᵀu| + 10⁻⁴), finite even where the map
folds over), its default is two planar layers (here four, per the API), its flow names are
``"Planar"``/``"Radial"`` (here lower-case), its ELBO drops the −(d/2) log 2π constants of
q₀ and p (they cancel) and it has no β. The radial layer is pythae's and the paper's.
"""
from __future__ import annotations

from typing import Sequence

import jax

from .flows import elbo, loss  # the flowed ELBO and loss, written once in aet.flows
from .flows import FLOWS, FlowVAE, PlanarFlow, RadialFlow, run_layers


class VAE_LinNF(FlowVAE):
    """``VAE_LinNF(encoder, decoder, flows=("planar",)*4)``: a VAE whose posterior is flowed.

    Attributes:
        flows: the layers' kinds in order, each ``"planar"`` or ``"radial"`` (may be empty:
            the plain VAE).
    """

    flows: Sequence[str] = ("planar",) * 4

    def __post_init__(self) -> None:
        if isinstance(self.flows, str):
            raise ValueError(f"`flows` must be a sequence of flow names from {FLOWS}, got the string {self.flows!r}")
        names = tuple(self.flows)
        for name in names:
            if name not in FLOWS:
                raise ValueError(f"`flows`: unknown flow {name!r}; choose from {FLOWS}")
        object.__setattr__(self, "flows", names)
        super().__post_init__()

    def setup(self) -> None:
        kinds = {"planar": PlanarFlow, "radial": RadialFlow}
        self.flow_layers = [kinds[name](name=f"flow_{k}") for k, name in enumerate(self.flows)]

    def flow(self, z0: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Push codes ``z0`` ``(..., batch, d)`` through the layers (``x`` is unused here).

        Returns:
            ``(z_K (..., batch, d), Σ_k log |det| (..., batch))``.
        """
        return run_layers(self.flow_layers, z0)


__all__ = ["VAE_LinNF", "elbo", "loss"]
