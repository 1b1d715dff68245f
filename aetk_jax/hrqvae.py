"""HRQ-VAE: hierarchical residual quantisation (Hosking, Tang & Lapata 2022).

The encoding z_e ``(B, *positions, D)`` is quantised by L codebooks e^1, …, e^L
(L = ``n_levels``, K = ``n_embeddings`` codes each), level l quantising what the
levels above it left over,

    r_0 = z_e,   k_l = argmin_k ‖r_{l−1} − e^l_k‖²,   q_l = e^l_{k_l},   r_l = r_{l−1} − q_l,

so a latent is a path (k_1, …, k_L) down a tree of ever finer corrections and
the decoder sees z_e + sg[Σ_l m_l q_l − z_e] (straight through; m the depth
dropout mask, below). The quantiser is ``aetk_jax.vqvae.residual_quantise`` (the
VQ-VAE is its one-level case) and the loss ``aetk_jax.vqvae.objective``:

    loss = (1/B) Σ_b [ ‖x_b − x̂_b‖²
                       + Σ_l ( β_q ‖sg[r_{l−1}] − q_l‖² + β_c ‖r_{l−1} − sg[q_l]‖² )
                       + w_n · mean_l (max(s·‖q_{l+1}‖/‖q_l‖, 1) − 1)² ],

with r_{l−1} = z_e − sg[Σ_{m<l} q_m], so each codebook learns from its own level
only and the commitment term of level l is ‖z_e − sg[Σ_{m≤l} q_m]‖² (the residual
left after l levels). The last term is the paper's norm loss (w_n =
``norm_loss_weight`` = 0.5, s = ``norm_loss_scale`` = 1.5): a deeper code may be at
most 1/s as long as the one above it.

Implemented from the paper: the norm loss; the initialisation (the codes of level
l uniform on the sphere of radius ``init_scale`` · ``init_decay_weight``^{l−1},
defaults 1 and 0.5 as in pythae); depth dropout (``depth_drop_rate`` = 0.1: during
the loss every level below the first is dropped with this probability, together
with all the levels under it). EMA updates and dead-code restarts of
``aet.VQVAE`` apply level by level (each level's inputs r_{l−1} are its
encodings). Property (tested): when every codebook contains the zero vector,
‖r_l‖ ≤ ‖r_{l−1}‖ at every level (the zero code is always a candidate), so the
residual error falls monotonically with depth; without it a level can increase it.

Gumbel-softmax codes (``quantiser="gumbel"``; Hosking et al. train the HRQ-VAE this way,
as does pythae). Each level's code is drawn instead of chosen: with the logits
a_k = −‖r_{l−1} − e^l_k‖² and Gumbel noise g,

    k_l = argmax_k (a_k + g_k)  (a draw from softmax(a)),   y = softmax((a + g)/τ_l),
    q_l = Σ_k w_k e^l_k,   w = onehot(k_l) + y − sg[y]   (value e^l_{k_l}, gradient of Σ_k y_k e^l_k),
    r_l = r_{l−1} − q_l   (no stop-gradient: the relaxation is differentiated end to end),

so the codebooks and, through the logits, the encoder receive the gradient of the soft
mixture; the decoder sees Σ_l m_l q_l (no straight-through path from z_e). As τ → 0, y tends
to onehot(k_l) (tested). The loss adds ``kl_weight`` · Σ_l KL(softmax(a) ‖ U_K) (summed over
levels and positions; 0.1) to the reconstruction and norm terms; the VQ terms default to 0 with
``"gumbel"`` (pythae's objective; pass ``quantization_loss_factor``/``commitment_loss_factor`` to
keep them). They hurt here: ‖sg[r] − q‖² pulls each *drawn* code, random while the logits are
flat, toward the encoding, so the codes crowd together, the logits stay flat and the draws stay
uninformative (on digits, 3 levels of 16 codes, 6 epochs: held-out reconstruction 0.99 of the
mean image's error with the VQ terms, 0.96 without; 15 epochs without them, the norm loss and
depth dropout: 0.73, which
``tests/test_vqvae.py::test_hrqvae_with_gumbel_codes_trains_on_digits`` checks). The
temperature is annealed with the epoch e that ``aet.train.fit`` gives the loss,

    τ_l(e) = max(τ₀ · exp(−e / (γ · 1.5^{l−1})), τ_min),

τ₀ = ``temperature`` = 1, γ = ``temperature_decay`` = 100/3 epochs, τ_min = ``min_temperature`` =
0.5 (pythae's schedule: deeper levels cool more slowly); called without an epoch the loss uses
τ_min. The Gumbel option needs a trainable codebook (``use_ema=False``); dead-code restarts
still apply. The code chosen by the loss is random, so held-out losses are too (as with depth
dropout); ``aet.vqvae.quantise`` (the prior, the EMA statistics, generation) uses the nearest code,
the mode of softmax(a).

Departures from pythae (``pythae.models.HRQVAE``): the default ``quantiser="nearest"`` chooses
nearest codes with straight-through gradients and the VQ-VAE's codebook and commitment terms;
with ``"gumbel"`` the VQ terms are off by default, as in pythae, and the KL term is
KL(q ‖ U_K) (pythae's code computes KL(U_K ‖ q): its ``KLDivLoss`` takes the uniform
distribution as the target); the first level is never dropped (pythae's mask can drop it,
feeding the decoder zero); depth dropout and the Gumbel draws also act when the loss is
evaluated on held-out data (the loss has no training flag; pass ``depth_drop_rate=0.0`` and the
default quantiser for the deterministic value). Generation uses the code prior of
``aet.vqvae.fit_code_prior``: a first-order Markov chain p(k_1) Π_l p(k_l | k_{l−1}) fitted to the
training codes.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from .base import Variables
from .validation import check_int, check_scalar
from .vqvae import VQVAE, objective


class HRQVAE(VQVAE):
    """``HRQVAE(encoder, decoder, n_embeddings=64, n_levels=4)`` (module docstring).

    Attributes:
        n_embeddings: K ≥ 1 codes per level.
        n_levels: L ≥ 1 levels of residual quantisation.
        init_scale: radius > 0 of the first level's initial codes.
        init_decay_weight: factor > 0 between the radii of successive levels.
    """

    n_embeddings: int = 64
    n_levels: int = 4
    init_scale: float = 1.0
    init_decay_weight: float = 0.5

    def __post_init__(self) -> None:
        check_int(self.n_levels, "n_levels", minimum=1)
        check_scalar(self.init_scale, "init_scale", positive=True)
        check_scalar(self.init_decay_weight, "init_decay_weight", positive=True)
        super().__post_init__()

    def codebook_init(self, key: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
        """Codes uniform on spheres of radii init_scale · init_decay_weight^l, l = 0..L−1.

        Args:
            key: PRNG key.
            shape: (L, K, D).

        Returns:
            float32 ``shape``.
        """
        return sphere_init(key, shape, self.init_scale, self.init_decay_weight)


def sphere_init(key: jax.Array, shape: tuple[int, int, int], scale: float, decay: float) -> jax.Array:
    """Codebooks ``shape`` = (L, K, D) with the codes of level l uniform on the sphere of radius scale · decayˡ.

    Args:
        key: PRNG key.
        shape: (L, K, D).
        scale: the first level's radius.
        decay: the ratio of successive radii.

    Returns:
        float32 ``(L, K, D)``.
    """
    g = jax.random.normal(key, shape, jnp.float32)
    radii = scale * decay ** jnp.arange(shape[0], dtype=jnp.float32)
    return g / jnp.linalg.norm(g, axis=-1, keepdims=True) * radii[:, None, None]


def gumbel_temperatures(epoch: Any, n_levels: int, temperature: float = 1.0, temperature_decay: float = 100.0 / 3,
                        min_temperature: float = 0.5) -> jax.Array:
    """τ_l(e) = max(τ₀ exp(−e / (γ · 1.5^{l−1})), τ_min) for the levels l = 1..L (module docstring).

    Args:
        epoch: the epoch index e ≥ 0 (an int or a traced integer), or ``None`` for τ_min at every level.
        n_levels: L ≥ 1.
        temperature: τ₀ > 0.
        temperature_decay: γ > 0, in epochs.
        min_temperature: τ_min > 0.

    Returns:
        float32 ``(L,)``.
    """
    check_int(n_levels, "n_levels", minimum=1)
    check_scalar(temperature, "temperature", positive=True)
    check_scalar(temperature_decay, "temperature_decay", positive=True)
    check_scalar(min_temperature, "min_temperature", positive=True)
    if epoch is None:
        return jnp.full((n_levels,), min_temperature, jnp.float32)
    check_scalar(epoch, "epoch", nonnegative=True)
    scale = temperature_decay * 1.5 ** jnp.arange(n_levels, dtype=jnp.float32)
    taus = temperature * jnp.exp(-jnp.asarray(epoch, jnp.float32) / scale)
    return jnp.maximum(taus, min_temperature).astype(jnp.float32)


def loss(model: HRQVAE, variables: Variables, x: Any, key: Any = None, *,
         commitment_loss_factor: Optional[float] = None, quantization_loss_factor: Optional[float] = None,
         norm_loss_weight: float = 0.5, norm_loss_scale: float = 1.5, depth_drop_rate: float = 0.1,
         quantiser: str = "nearest", temperature: float = 1.0, temperature_decay: float = 100.0 / 3,
         min_temperature: float = 0.5, kl_weight: float = 0.1, epoch: Any = None, aux: bool = False) -> Any:
    """The HRQ-VAE loss (module docstring), a scalar.

    Args:
        model: an ``HRQVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key of the depth dropout and the Gumbel noise (required unless ``depth_drop_rate == 0``
            with the nearest-code quantiser).
        commitment_loss_factor: β_c ≥ 0 (default 0.25 with ``"nearest"``, 0 with ``"gumbel"``).
        quantization_loss_factor: β_q ≥ 0 (default 1 with ``"nearest"``, 0 with ``"gumbel"``; dropped with
            EMA codebooks).
        norm_loss_weight: w_n ≥ 0.
        norm_loss_scale: s > 0.
        depth_drop_rate: probability in [0, 1) of dropping a level (and those below it).
        quantiser: ``"nearest"`` (nearest codes, straight through) or ``"gumbel"`` (Gumbel-softmax draws).
        temperature: τ₀ > 0 of the Gumbel-softmax schedule (``"gumbel"`` only, as are the next three).
        temperature_decay: γ > 0 (epochs) of the schedule.
        min_temperature: τ_min > 0, the floor of the schedule.
        kl_weight: weight ≥ 0 of Σ_l KL(softmax(a_l) ‖ U_K).
        epoch: the epoch index (``aet.train.fit`` passes it); ``None``: τ_min.
        aux: also return the metrics of ``aet.vqvae.loss`` and ``"norm"`` (and ``"kl"``, ``"temperature"``
            (level 1's) with ``"gumbel"``).
    """
    gumbel = quantiser == "gumbel"
    if commitment_loss_factor is None:
        commitment_loss_factor = 0.0 if gumbel else 0.25
    if quantization_loss_factor is None:
        quantization_loss_factor = 0.0 if gumbel else 1.0
    taus = gumbel_temperatures(epoch if gumbel else None, int(model.n_levels), temperature, temperature_decay,
                               min_temperature)
    out = objective(model, variables, x, key, commitment_loss_factor=commitment_loss_factor,
                    quantization_loss_factor=quantization_loss_factor, norm_loss_weight=norm_loss_weight,
                    norm_loss_scale=norm_loss_scale, depth_drop_rate=depth_drop_rate, quantiser=quantiser,
                    temperatures=taus, kl_weight=kl_weight if gumbel else 0.0, aux=aux)
    if aux and gumbel:
        return out[0], {**out[1], "temperature": taus[0]}
    return out


__all__ = ["HRQVAE", "gumbel_temperatures", "loss", "sphere_init"]
