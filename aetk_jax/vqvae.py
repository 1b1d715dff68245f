"""VQ-VAE: the vector-quantised autoencoder (van den Oord, Vinyals & Kavukcuoglu 2017).

A deterministic encoder gives z_e(x) of shape ``(B, *positions, D)`` (``(B, D)``
for ``aet.Encoder``; D = the encoder's ``latent_dim``). Each position is replaced
by its nearest code of a codebook e ∈ ℝ^{K×D} (K = ``n_embeddings``),

    k*(z) = argmin_k ‖z − e_k‖²,    z_q = e_{k*(z_e)},

and the decoder sees the straight-through value z_e + sg[z_q − z_e] (its value is
z_q, its gradient with respect to z_e the identity). For a batch of B examples
the loss is

    loss = (1/B) Σ_b [ ‖x_b − x̂_b‖²
                       + quantization_loss_factor · ‖sg[z_e(x_b)] − z_q‖²
                       + commitment_loss_factor  · ‖z_e(x_b) − sg[z_q]‖² ],

x̂ the decoder's mean at z_q and every squared norm summed over the data, position
and code axes (defaults 1.0 and 0.25). The codebook receives gradient only from
the quantisation term; the encoder from the reconstruction (straight through)
and the commitment term.

**EMA codebook** (``use_ema=True``, the paper's appendix; Sonnet's rule). The
codebook is then not a parameter: it lives with its statistics in the
non-trainable collection ``"vq_ema"`` and is updated after every training step
from the batch's assignments (n_k codes assigned to k, s_k the sum of the
encodings assigned to k), with γ = ``decay`` and ε = 1e-5:

    N_k ← γ N_k + (1 − γ) n_k,    S_k ← γ S_k + (1 − γ) s_k,
    Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j   (Laplace smoothing),
    e_k = S_k / Ñ_k,

and the quantisation term is dropped from the loss. The statistics start at
N_k = 1, S_k = e_k (each initial code counts as one observation of itself).

**Dead-code restarts** (``restart_after = T > 0``; off by default). The collection
``"vq_usage"`` counts, per code, the consecutive training steps in which no
encoding of the batch was assigned to it. A code reaching T is re-initialised to
an encoding of the current batch chosen uniformly at random (with replacement,
from the step's key, so the run stays deterministic), its counter reset to 0
(and, with EMA, N_k = 1, S_k = e_k). Without EMA the restart overwrites the
codebook row in ``params`` (its optimizer moments are kept).

The updates are applied by ``aet.train.fit`` (``aetk_jax.training.hooks``) through
:func:`codebook_update`, with the encoder and codebook *before* the step's
gradient update (the assignments the step's loss used, as in pythae).

**Generation.** :func:`fit_code_prior` fits a categorical prior over the codes of
a data set (per position; for the multi-level HRQ-VAE a first-order Markov chain
over the levels, see ``aetk_jax.hrqvae``) into the collection ``"code_prior"``;
``aet.sample`` then draws codes from it and decodes them.

**Conditional models** (``n_conditions`` or ``condition_dim`` > 0; the pair ``x = (x, c)``
wherever a function takes data). The encoder sees [flatten(x), e(c)], so z_e = z_e(x, c);
the codebook is shared by every condition; the decoder sees [z_q, e(c)]. The code prior of a
label-conditional model is one prior per label, p(k | y), fitted to the codes of that label's
examples; ``aet.sample(..., condition=y)`` draws sample i's codes from p(k | y_i) and decodes them
under y_i. A covariate-conditional model has a single prior over the codes of all the examples
(the codes are drawn unconditionally and decoded under the given covariates).

Metrics (``aux=True``): ``reconstruction``, ``quantization``, ``commitment`` (the
per-example means of the three terms), ``codes_used`` (number of distinct codes in
the batch), ``codebook_usage`` (that number / K) and ``perplexity``
exp(−Σ_k p_k log p_k) of the batch's code frequencies p (mean over levels).

Departures from pythae (``pythae.models.VQVAE``): pythae sums its two VQ terms
over the whole batch and adds that sum to the *batch mean* of the
reconstruction error, so its VQ terms weigh B times more than written in the
paper (64× at batch size 64); here every term is a per-example sum averaged over
the batch. pythae's EMA quantiser starts with zero cluster sizes and
independently drawn sums, so on the first update every code not assigned in the
batch is set to S/Ñ with Ñ ≈ ε: entries up to 0.99·(1/K)/1e-5 ≈ 193 for K = 512
(such codes are never chosen again); here they stay at their initial values.
pythae also stores the smoothed Ñ as the new N (a change of order ε per step);
here N is the plain moving average (Sonnet). pythae has no dead-code restarts.
The reconstruction term is pythae's (squared error of the decoder's mean, for
any decoder, summed over the data axes); no likelihood is evaluated.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, decode, finish, split_condition
from .decoders import decoder_mean
from .encoders import encoder_mean
from .sampling import Samples, check_sample_condition, sample
from .validation import check_int, check_key, check_scalar

#: the non-trainable collection of the EMA codebook and its statistics
EMA = "vq_ema"
#: the collection of the per-code counters of steps without an assignment
USAGE = "vq_usage"
#: the collection :func:`fit_code_prior` writes
PRIOR = "code_prior"
#: ε of the Laplace smoothing of the EMA cluster sizes
EMA_EPS = 1e-5
_QUANTISER = "quantiser"
#: how the loss picks codes: the nearest code (straight through) or a straight-through Gumbel-softmax draw
QUANTISERS = ("nearest", "gumbel")


def _uniform_init(key: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """pythae's VQ-VAE codebook: every entry uniform on (−1/K, 1/K)."""
    k = shape[1]
    return jax.random.uniform(key, shape, jnp.float32, -1.0 / k, 1.0 / k)


class Codebook(nn.Module):
    """The codebooks ``(n_levels, n_embeddings, embedding_dim)``, in ``params`` or ``"vq_ema"``.

    Attributes:
        n_levels: number of codebooks (1 for the VQ-VAE).
        n_embeddings: codes per codebook, K.
        embedding_dim: size of a code, D.
        use_ema: keep the codebook in the non-trainable ``"vq_ema"`` collection
            with its statistics ``cluster_size`` ``(L, K)`` and ``embed_sum`` ``(L, K, D)``.
        track_usage: create the ``"vq_usage"`` counters ``unused`` ``(L, K)`` (restarts).
        init_fn: ``init_fn(key, (L, K, D)) -> codebooks``.
    """

    n_levels: int
    n_embeddings: int
    embedding_dim: int
    use_ema: bool
    track_usage: bool
    init_fn: Any = _uniform_init

    @nn.compact
    def __call__(self) -> jax.Array:
        shape = (self.n_levels, self.n_embeddings, self.embedding_dim)
        if self.use_ema:
            cb = self.variable(EMA, "codebook", lambda: self.init_fn(self.make_rng("params"), shape))
            self.variable(EMA, "cluster_size", lambda: jnp.ones(shape[:2], jnp.float32))
            self.variable(EMA, "embed_sum", lambda: cb.value)
            value = cb.value
        else:
            value = self.param("codebook", self.init_fn, shape)
        if self.track_usage:
            self.variable(USAGE, "unused", lambda: jnp.zeros(shape[:2], jnp.int32))
        return value


class VQVAE(AutoEncoderModel):
    """``VQVAE(encoder, decoder, n_embeddings=512)``: the VQ-VAE (module docstring).

    Attributes:
        n_embeddings: K ≥ 1 codes; each has the encoder's ``latent_dim``.
        use_ema: update the codebook by exponential moving averages instead of gradients.
        decay: γ ∈ [0, 1) of the EMA update.
        restart_after: T ≥ 0: re-initialise a code unused for T consecutive steps (0: never).
    """

    n_embeddings: int = 512
    use_ema: bool = False
    decay: float = 0.99
    restart_after: int = 0

    n_levels = 1  # the HRQ-VAE's hierarchy depth; one codebook here

    def __post_init__(self) -> None:
        check_int(self.n_embeddings, "n_embeddings", minimum=1)
        check_int(self.n_levels, "n_levels", minimum=1)
        check_int(self.restart_after, "restart_after", minimum=0)
        check_scalar(self.decay, "decay", low=0.0, high=1.0, high_inclusive=False)
        if not isinstance(self.use_ema, bool):
            raise TypeError(f"`use_ema` must be a bool, got {self.use_ema!r}")
        super().__post_init__()

    def codebook_init(self, key: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
        """The initial codebooks (pythae's uniform (−1/K, 1/K)).

        Args:
            key: PRNG key.
            shape: (L, K, D).

        Returns:
            float32 ``shape``.
        """
        return _uniform_init(key, shape)

    def setup(self) -> None:
        self.quantiser = Codebook(int(self.n_levels), int(self.n_embeddings), int(self.encoder.latent_dim),
                                  bool(self.use_ema), int(self.restart_after) > 0, self.codebook_init)

    def encode_continuous(self, x: jax.Array, c: Any = None) -> jax.Array:
        """z_e(x) (z_e(x, c) for a conditional model) ``(B, *positions, D)``; a Gaussian encoder by its mean.

        Args:
            x: a batch ``(B, *data_shape)``.
            c: the condition of a conditional model (labels ``(B,)`` or covariates ``(B, k)``), else ``None``.
        """
        return encoder_mean(self.encoder, AutoEncoderModel.encode(self, x, c))

    def codebooks(self) -> jax.Array:
        """The codebooks ``(n_levels, K, D)``."""
        return self.quantiser()

    def encode(self, x: jax.Array, c: Any = None) -> jax.Array:
        """The quantised code the decoder sees (straight-through), ``(B, *positions, D)``.

        Args:
            x: a batch ``(B, *data_shape)``.
            c: the condition of a conditional model, else ``None``.
        """
        return residual_quantise(self.encode_continuous(x, c), self.quantiser()).z_q

    def __call__(self, x: Any) -> Any:
        x, c = split_condition(self, x)
        return self.decode(self.encode(x, c), c)


# --------------------------------------------------------------------------- quantisation


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """‖z_n − e_k‖² = ‖z_n‖² + ‖e_k‖² − 2 z_n·e_k.

    Args:
        z: vectors ``(..., D)``.
        codebook: codes ``(K, D)``.

    Returns:
        ``(..., K)``.
    """
    cross = jnp.einsum("...d,kd->...k", z, codebook, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(z**2, axis=-1, keepdims=True) + jnp.sum(codebook**2, axis=-1) - 2.0 * cross


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """argmin_k ‖z − e_k‖² for each vector of ``z``.

    Args:
        z: vectors ``(..., D)``.
        codebook: codes ``(K, D)``.

    Returns:
        int32 indices ``(...)``.
    """
    return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
    """z + sg[q − z]: the value of ``q`` with the identity as its gradient with respect to ``z``.

    Args:
        z: the encodings.
        q: their quantised values (same shape).

    Returns:
        The straight-through array.
    """
    return z + jax.lax.stop_gradient(q - z)


class Quantised(NamedTuple):
    """A (residual) quantisation of ``z`` ``(*lead, D)`` by L codebooks.

    Attributes:
        z_q: the straight-through decoder input, value Σ_l keep_l · q_l, ``(*lead, D)``.
        codes: the chosen indices, int32 ``(*lead, L)``.
        levels: the chosen code vectors q_l (differentiable in the codebooks), ``(L, *lead, D)``.
        inputs: each level's input r_{l−1} = z − sg[Σ_{m<l} q_m] (differentiable in z), ``(L, *lead, D)``.
    """

    z_q: jax.Array
    codes: jax.Array
    levels: jax.Array
    inputs: jax.Array


def residual_quantise(z: jax.Array, codebooks: jax.Array, keep: Optional[jax.Array] = None) -> Quantised:
    """Quantise ``z`` ``(*lead, D)`` level by level: level l quantises the residual of levels < l.

    r_0 = z, k_l = argmin_k ‖r_{l−1} − e^l_k‖², q_l = e^l_{k_l}, r_l = r_{l−1} − q_l (a ``lax.scan``
    over the levels). With one codebook this is the VQ-VAE's nearest-code quantisation.

    Args:
        z: encodings ``(*lead, D)``.
        codebooks: ``(L, K, D)``.
        keep: optional 0/1 mask ``(L, *lead)`` of the levels that enter ``z_q`` (depth dropout).

    Returns:
        A :class:`Quantised`.
    """
    def level(partial, codebook):
        r = z - partial
        idx = nearest_code(jax.lax.stop_gradient(r), codebook)
        q = jnp.take(codebook, idx, axis=0)
        return partial + jax.lax.stop_gradient(q), (idx, q, r)

    _, (codes, levels, inputs) = jax.lax.scan(level, jnp.zeros_like(z), codebooks)
    weights = jnp.ones(levels.shape[:-1], levels.dtype) if keep is None else keep.astype(levels.dtype)
    value = jnp.sum(weights[..., None] * levels, axis=0)
    return Quantised(straight_through(z, value), jnp.moveaxis(codes, 0, -1), levels, inputs)


def codebook(model: VQVAE, variables: Variables) -> jax.Array:
    """The model's codebooks (from ``params`` or, with EMA, ``"vq_ema"``).

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.
        variables: its variables.

    Returns:
        ``(n_levels, K, D)``.
    """
    if model.use_ema:
        return variables[EMA][_QUANTISER]["codebook"]
    return variables["params"][_QUANTISER]["codebook"]


def continuous_codes(model: VQVAE, variables: Variables, x: Any) -> jax.Array:
    """z_e(x) before quantisation (z_e(x, c) for the pair ``x = (x, c)`` of a conditional model).

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)``, or the pair ``(x, c)``.

    Returns:
        ``(B, *positions, D)``.
    """
    data, c = split_condition(model, x)
    return model.apply(variables, data, c, method="encode_continuous")


def quantise(model: VQVAE, variables: Variables, x: Any, keep: Optional[jax.Array] = None) -> Quantised:
    """Encode ``x`` and quantise it with the model's codebooks (:func:`residual_quantise`).

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)``, or the pair ``(x, c)`` of a conditional model.
        keep: optional depth-dropout mask ``(L, B, *positions)``.

    Returns:
        A :class:`Quantised`.
    """
    return residual_quantise(continuous_codes(model, variables, x), codebook(model, variables), keep)


# --------------------------------------------------------------------------- the loss


def _per_example(a: jax.Array) -> jax.Array:
    """Σ over every axis but the batch axis 1 of a per-level array ``(L, B, ...)``: ``(B,)``."""
    return jnp.sum(jnp.moveaxis(a, 1, 0).reshape(a.shape[1], -1), axis=-1)


def code_statistics(codes: jax.Array, n_embeddings: int) -> dict[str, jax.Array]:
    """Codebook usage of a batch of codes ``(..., L)``.

    Args:
        codes: int indices, the last axis the levels.
        n_embeddings: K.

    Returns:
        ``{"codes_used", "codebook_usage", "perplexity"}``: the number of distinct codes, that number / K,
        and exp(−Σ_k p_k log p_k) of the code frequencies p, each averaged over the levels.
    """
    counts = jnp.sum(jax.nn.one_hot(codes.reshape(-1, codes.shape[-1]), n_embeddings), axis=0)  # (L, K)
    p = counts / jnp.sum(counts, axis=-1, keepdims=True)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    used = jnp.sum(counts > 0, axis=-1).astype(jnp.float32)
    return {"codes_used": jnp.mean(used), "codebook_usage": jnp.mean(used) / n_embeddings,
            "perplexity": jnp.mean(jnp.exp(entropy))}


def norm_penalty(levels: jax.Array, scale: float) -> jax.Array:
    """Hosking's norm loss per example: mean over l and positions of (max(s·‖q_{l+1}‖/‖q_l‖, 1) − 1)².

    Args:
        levels: the chosen codes ``(L, B, *positions, D)``.
        scale: s.

    Returns:
        ``(B,)`` (zeros for one level).
    """
    norms = jnp.sqrt(jnp.sum(levels**2, axis=-1) + 1e-12)  # (L, B, *pos)
    ratio = norms[1:] / norms[:-1] * scale
    pen = (jnp.maximum(ratio, 1.0) - 1.0) ** 2
    if pen.shape[0] == 0:
        return jnp.zeros(levels.shape[1], levels.dtype)
    return jnp.mean(jnp.moveaxis(pen, 1, 0).reshape(levels.shape[1], -1), axis=-1)


def depth_mask(key: jax.Array, n_levels: int, lead: tuple[int, ...], rate: float) -> jax.Array:
    """Depth dropout: level 1 always kept, each deeper level dropped with probability ``rate``,
    and every level below a dropped one dropped too (a cumulative product).

    Args:
        key: PRNG key.
        n_levels: L.
        lead: the shape of the encodings without their last axis, ``(B, *positions)``.
        rate: the drop probability.

    Returns:
        float32 0/1 mask ``(L, *lead)``.
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, (n_levels - 1, *lead)).astype(jnp.float32)
    return jnp.cumprod(jnp.concatenate([jnp.ones((1, *lead), jnp.float32), keep]), axis=0)


def gumbel_quantise(z: jax.Array, codebooks: jax.Array, key: jax.Array, temperatures: Any,
                    keep: Optional[jax.Array] = None) -> tuple[Quantised, jax.Array]:
    """Residual quantisation with codes drawn by the straight-through Gumbel-softmax (``aetk_jax.hrqvae``).

    Level l: logits a_k = −‖r_{l−1} − e^l_k‖², Gumbel noise g_k, soft weights y = softmax((a + g)/τ_l),
    the code k_l = argmax_k (a_k + g_k) (a draw from softmax(a)), and
    q_l = Σ_k w_k e^l_k with w = onehot(k_l) + y − sg[y]: its value is e^l_{k_l}, its gradient that of the
    soft mixture Σ_k y_k e^l_k (in the codebook and, through a, in z); r_l = r_{l−1} − q_l.

    Args:
        z: encodings ``(*lead, D)``.
        codebooks: ``(L, K, D)``.
        key: PRNG key of the Gumbel noise.
        temperatures: τ_l > 0, a scalar or ``(L,)``.
        keep: optional 0/1 mask ``(L, *lead)`` of the levels that enter ``z_q`` (depth dropout).

    Returns:
        ``(Quantised, logits (L, *lead, K))``; ``z_q`` is Σ_l keep_l q_l (no straight-through path from z).
    """
    n_levels, k = codebooks.shape[0], codebooks.shape[1]
    taus = jnp.broadcast_to(jnp.asarray(temperatures, z.dtype), (n_levels,))

    def level(partial, inp):
        codebook, key_l, tau = inp
        r = z - partial
        logits = -squared_distances(r, codebook)
        noisy = logits + jax.random.gumbel(key_l, logits.shape, logits.dtype)
        soft = jax.nn.softmax(noisy / tau, axis=-1)
        idx = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
        weights = jax.nn.one_hot(idx, k, dtype=soft.dtype) + soft - jax.lax.stop_gradient(soft)
        q = jnp.einsum("...k,kd->...d", weights, codebook, precision=jax.lax.Precision.HIGHEST)
        return partial + q, (idx, q, r, logits)

    keys = jax.random.split(key, n_levels)
    _, (codes, levels, inputs, logits) = jax.lax.scan(level, jnp.zeros_like(z), (codebooks, keys, taus))
    weights = jnp.ones(levels.shape[:-1], levels.dtype) if keep is None else keep.astype(levels.dtype)
    value = jnp.sum(weights[..., None] * levels, axis=0)
    return Quantised(value, jnp.moveaxis(codes, 0, -1), levels, inputs), logits


def kl_to_uniform_codes(logits: jax.Array) -> jax.Array:
    """KL(softmax(a) ‖ U_K) = log K + Σ_k p_k log p_k per example, summed over levels and positions.

    Args:
        logits: the code logits ``(L, B, *positions, K)``.

    Returns:
        ``(B,)``.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    kl = jnp.sum(jnp.exp(logp) * logp, axis=-1) + jnp.log(float(logits.shape[-1]))
    return _per_example(kl)


def _check_objective(model: VQVAE, factors: dict[str, Any], norm_loss_scale: Any, depth_drop_rate: Any,
                     quantiser: str, temperatures: Any) -> None:
    for name, v in factors.items():
        check_scalar(v, name, nonnegative=True)
    check_scalar(norm_loss_scale, "norm_loss_scale", positive=True)
    check_scalar(depth_drop_rate, "depth_drop_rate", low=0.0, high=1.0, high_inclusive=False)
    if quantiser not in QUANTISERS:
        raise ValueError(f"`quantiser` must be one of {QUANTISERS}, got {quantiser!r}")
    if quantiser == "gumbel":
        if model.use_ema:
            raise ValueError("`quantiser`: 'gumbel' trains the codebook by gradient; build the model with use_ema=False")
        check_scalar(temperatures, "temperature", positive=True, allow_vector=True)


def objective(model: VQVAE, variables: Variables, x: Any, key: Any = None, *,
              commitment_loss_factor: float = 0.25, quantization_loss_factor: float = 1.0,
              norm_loss_weight: float = 0.0, norm_loss_scale: float = 1.5, depth_drop_rate: float = 0.0,
              quantiser: str = "nearest", temperatures: Any = 1.0, kl_weight: float = 0.0,
              aux: bool = False) -> Any:
    """The VQ-VAE / HRQ-VAE loss (this module's and ``aetk_jax.hrqvae``'s docstrings).

    Args:
        model: a ``VQVAE`` or ``HRQVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: used by depth dropout (``depth_drop_rate > 0``) and the Gumbel noise, then required.
        commitment_loss_factor: weight ≥ 0 of ‖z_e − sg[z_q]‖².
        quantization_loss_factor: weight ≥ 0 of ‖sg[z_e] − z_q‖² (unused with EMA).
        norm_loss_weight: weight ≥ 0 of :func:`norm_penalty` (multi-level models).
        norm_loss_scale: its scale s > 0.
        depth_drop_rate: probability in [0, 1) of dropping each level below the first.
        quantiser: ``"nearest"`` (nearest code, straight through) or ``"gumbel"`` (:func:`gumbel_quantise`).
        temperatures: the Gumbel-softmax temperatures τ_l > 0 (scalar or ``(L,)``; ``"gumbel"`` only).
        kl_weight: weight ≥ 0 of :func:`kl_to_uniform_codes` (``"gumbel"`` only).
        aux: also return the metrics (module docstring; ``"kl"`` with ``"gumbel"``).
    """
    check_inputs(model, x)
    _check_objective(model, {"commitment_loss_factor": commitment_loss_factor,
                             "quantization_loss_factor": quantization_loss_factor,
                             "norm_loss_weight": norm_loss_weight, "kl_weight": kl_weight},
                     norm_loss_scale, depth_drop_rate, quantiser, temperatures)
    data, c = split_condition(model, x)
    z = continuous_codes(model, variables, x)
    keep, gumbel = None, quantiser == "gumbel"
    if gumbel or not (isinstance(depth_drop_rate, numbers.Real) and depth_drop_rate == 0):
        check_key(key)
        k_drop, k_gumbel = jax.random.split(key)
        keep = depth_mask(k_drop, int(model.n_levels), z.shape[:-1], depth_drop_rate)
    if gumbel:
        q, logits = gumbel_quantise(z, codebook(model, variables), k_gumbel, temperatures, keep)
    else:
        q = residual_quantise(z, codebook(model, variables), keep)
    x_hat = decoder_mean(model.decoder, decode(model, variables, q.z_q, c))
    recon = jnp.sum(((x_hat - data) ** 2).reshape(data.shape[0], -1), axis=-1)
    quant = _per_example((jax.lax.stop_gradient(q.inputs) - q.levels) ** 2)
    commit = _per_example((q.inputs - jax.lax.stop_gradient(q.levels)) ** 2)
    qf = 0.0 if model.use_ema else quantization_loss_factor
    total = recon + qf * quant + commitment_loss_factor * commit
    metrics = {"reconstruction": jnp.mean(recon), "quantization": jnp.mean(quant), "commitment": jnp.mean(commit)}
    if int(model.n_levels) > 1:
        norm = norm_penalty(q.levels, norm_loss_scale)
        total = total + norm_loss_weight * norm
        metrics["norm"] = jnp.mean(norm)
    if gumbel:
        kl = kl_to_uniform_codes(logits)
        total = total + kl_weight * kl
        metrics["kl"] = jnp.mean(kl)
    metrics.update(code_statistics(jax.lax.stop_gradient(q.codes), int(model.n_embeddings)))
    return finish(jnp.mean(total), metrics, aux)


def loss(model: VQVAE, variables: Variables, x: jax.Array, key: Any = None, *,
         commitment_loss_factor: float = 0.25, quantization_loss_factor: float = 1.0, aux: bool = False) -> Any:
    """The VQ-VAE loss (module docstring), a scalar; ``key`` is accepted and unused.

    Args:
        model: a ``VQVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: unused (the loss is deterministic).
        commitment_loss_factor: weight ≥ 0 of the commitment term ‖z_e − sg[z_q]‖².
        quantization_loss_factor: weight ≥ 0 of the codebook term ‖sg[z_e] − z_q‖² (dropped with EMA).
        aux: also return ``{"loss", "reconstruction", "quantization", "commitment", "codes_used",
            "codebook_usage", "perplexity"}``.
    """
    return objective(model, variables, x, key, commitment_loss_factor=commitment_loss_factor,
                     quantization_loss_factor=quantization_loss_factor, aux=aux)


# --------------------------------------------------------------------------- EMA and restarts


class EMAStats(NamedTuple):
    """The EMA codebook's state. Attributes: ``codebook`` ``(L, K, D)``, ``cluster_size`` N ``(L, K)``,
    ``embed_sum`` S ``(L, K, D)``."""

    codebook: jax.Array
    cluster_size: jax.Array
    embed_sum: jax.Array


def ema_update(stats: EMAStats, counts: jax.Array, sums: jax.Array, decay: Any, eps: float = EMA_EPS) -> EMAStats:
    """One EMA step of the codebooks (module docstring).

    Args:
        stats: the current :class:`EMAStats`.
        counts: n_k, the batch's assignments per code ``(L, K)``.
        sums: s_k, the sums of the encodings assigned to each code ``(L, K, D)``.
        decay: γ.
        eps: ε of the Laplace smoothing.

    Returns:
        The updated :class:`EMAStats` (``cluster_size`` the plain moving average, not smoothed).
    """
    n = decay * stats.cluster_size + (1.0 - decay) * counts
    s = decay * stats.embed_sum + (1.0 - decay) * sums
    total = jnp.sum(n, axis=-1, keepdims=True)
    smoothed = (n + eps) / (total + n.shape[-1] * eps) * total
    return EMAStats(s / smoothed[..., None], n, s)


def restart_dead_codes(codebooks: jax.Array, unused: jax.Array, counts: jax.Array, inputs: jax.Array,
                       restart_after: int, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The dead-code restart rule (module docstring).

    Args:
        codebooks: ``(L, K, D)``.
        unused: consecutive steps without an assignment, int ``(L, K)``.
        counts: this step's assignments per code ``(L, K)``.
        inputs: this step's encodings per level ``(L, N, D)`` (the level's inputs).
        restart_after: T ≥ 1.
        key: picks the replacement encodings.

    Returns:
        ``(codebooks, unused, dead)``: dead codes (unused for T steps after this one, ``dead`` ``(L, K)``)
        replaced by encodings drawn uniformly from ``inputs[l]``, and their counters reset to 0.
    """
    unused = jnp.where(counts > 0, 0, unused + 1)
    dead = unused >= restart_after
    pick = jax.random.randint(key, unused.shape, 0, inputs.shape[1])
    candidates = jnp.take_along_axis(inputs, pick[..., None], axis=1)  # (L, K, D)
    return jnp.where(dead[..., None], candidates, codebooks), jnp.where(dead, 0, unused), dead


def has_codebook_updates(model: VQVAE) -> bool:
    """Whether training must update the codebook outside the gradient step.

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.

    Returns:
        True with ``use_ema`` or ``restart_after > 0``.
    """
    return bool(model.use_ema) or int(model.restart_after) > 0


def _replace_codebook(params: Any, new: jax.Array) -> Any:
    return {**params, _QUANTISER: {**params[_QUANTISER], "codebook": new}}


def codebook_update(model: VQVAE, variables: Variables, params: Any, x: jax.Array,
                    key: jax.Array) -> tuple[Any, dict[str, Any]]:
    """The per-step EMA update and dead-code restarts (module docstring) for a batch ``x``.

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.
        variables: the variables the step's loss used (before its gradient update): the
            assignments and encodings are computed with them.
        params: the parameters after the gradient update (returned, with restarted codebook rows
            when the codebook is a parameter).
        x: the step's batch.
        key: picks the restarts' replacement encodings.

    Returns:
        ``(params, collections)``: the new parameters and every non-``params`` collection.
    """
    q = quantise(model, variables, x)
    n_levels, k = int(model.n_levels), int(model.n_embeddings)
    inputs = jax.lax.stop_gradient(q.inputs).reshape(n_levels, -1, q.inputs.shape[-1])  # (L, N, D)
    onehot = jax.nn.one_hot(jnp.moveaxis(q.codes, -1, 0).reshape(n_levels, -1), k, dtype=inputs.dtype)  # (L, N, K)
    counts = jnp.sum(onehot, axis=1)
    collections = {name: value for name, value in variables.items() if name != "params"}
    if model.use_ema:
        old = EMAStats(**collections[EMA][_QUANTISER])
        sums = jnp.einsum("lnk,lnd->lkd", onehot, inputs, precision=jax.lax.Precision.HIGHEST)
        new = ema_update(old, counts, sums, model.decay)
        collections[EMA] = {_QUANTISER: new._asdict()}
    if int(model.restart_after) > 0:
        cb = collections[EMA][_QUANTISER]["codebook"] if model.use_ema else params[_QUANTISER]["codebook"]
        unused = collections[USAGE][_QUANTISER]["unused"]
        cb, unused, dead = restart_dead_codes(cb, unused, counts, inputs, int(model.restart_after), key)
        collections[USAGE] = {_QUANTISER: {"unused": unused}}
        if model.use_ema:
            stats = collections[EMA][_QUANTISER]
            sizes = jnp.where(dead, 1.0, stats["cluster_size"])
            sums = jnp.where(dead[..., None], cb, stats["embed_sum"])
            collections[EMA] = {_QUANTISER: {"codebook": cb, "cluster_size": sizes, "embed_sum": sums}}
        else:
            params = _replace_codebook(params, cb)
    # keep every leaf's dtype (float64 data with float32 codebooks must not change the scan's carry)
    old = {name: value for name, value in variables.items() if name != "params"}
    collections = jax.tree_util.tree_map(lambda new, ref: new.astype(ref.dtype), collections, old)
    return jax.tree_util.tree_map(lambda new, ref: new.astype(ref.dtype), params, variables["params"]), collections


# --------------------------------------------------------------------------- the code prior


def code_counts(codes: jax.Array, n_embeddings: int, weights: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Counts of the first-level codes and of the level transitions.

    Args:
        codes: int ``(N, *positions, L)``.
        n_embeddings: K.
        weights: optional per-example weights ``(N,)`` (e.g. 0/1 for the examples of one label).

    Returns:
        ``(first (*positions, K), transitions (*positions, L−1, K, K))``: transitions[..., l, a, b]
        counts the examples with code a at level l+1 and b at level l+2 (1-based levels).
    """
    onehot = jax.nn.one_hot(codes, n_embeddings)  # (N, *pos, L, K)
    if weights is not None:
        onehot = onehot * weights.reshape(-1, *([1] * (onehot.ndim - 1)))
    first = jnp.sum(onehot[..., 0, :], axis=0)
    # the weight enters once per transition: the second factor is the unweighted one-hot
    trans = jnp.einsum("n...la,n...lb->...lab", onehot[..., :-1, :], jax.nn.one_hot(codes[..., 1:], n_embeddings))
    return first, trans


def _normalise(counts: jax.Array) -> jax.Array:
    """Rows of counts as probabilities (a row without counts: uniform)."""
    total = jnp.sum(counts, axis=-1, keepdims=True)
    return jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), 1.0 / counts.shape[-1])


def fit_code_prior(model: VQVAE, variables: Variables, x: Any, *, smoothing: float = 0.0,
                   batch_size: Optional[int] = None) -> Variables:
    """Fit the categorical code prior to the codes of ``x`` and store it for ``aet.sample``.

    p(k_1, …, k_L) = p(k_1) Π_{l≥2} p(k_l | k_{l−1}) independently per position, each factor the
    (``smoothing``-added) code frequencies of ``x``: for one level (VQ-VAE) the categorical
    distribution of the codes, for the HRQ-VAE a first-order Markov chain down the hierarchy.
    A label-conditional model (``n_conditions`` = n) gets one such prior per label, p(k | y), fitted
    to the codes of that label's examples (a label without examples: uniform); a covariate-conditional
    one a single prior over the codes of every example.

    Args:
        model: a ``VQVAE`` / ``HRQVAE``.
        variables: its (trained) variables.
        x: data ``(n, *data_shape)``, or the pair ``(x, c)`` of a conditional model.
        smoothing: pseudo-count ≥ 0 added to every count.
        batch_size: encode ``x`` in batches of this size (all at once when ``None``).

    Returns:
        ``variables`` with ``"code_prior"``: ``{"first" (*positions, K), "transitions" (*positions, L−1, K, K)}``
        (probabilities), each with a leading label axis ``(n_conditions, ...)`` for a label-conditional model.
    """
    check_inputs(model, x)
    check_scalar(smoothing, "smoothing", nonnegative=True)
    k = int(model.n_embeddings)
    data, c = split_condition(model, x)
    step = data.shape[0] if batch_size is None else batch_size
    check_int(step, "batch_size", minimum=1)
    per_label = int(getattr(model, "n_conditions", 0))
    first, trans = 0.0, 0.0
    for start in range(0, data.shape[0], step):  # host loop over data chunks, not training steps
        chunk = slice(start, start + step)
        codes = quantise(model, variables, data[chunk] if c is None else (data[chunk], c[chunk])).codes
        if per_label:  # counts per label: (n_conditions, ...)
            onehot = jax.nn.one_hot(c[chunk], per_label, dtype=jnp.float32)
            f, t = jax.vmap(lambda w: code_counts(codes, k, w))(onehot.T)
        else:
            f, t = code_counts(codes, k)
        first, trans = first + f, trans + t
    return {**variables, PRIOR: {"first": _normalise(first + smoothing), "transitions": _normalise(trans + smoothing)}}


def sample_codes(prior: dict[str, jax.Array], key: jax.Array, n: int) -> jax.Array:
    """``n`` code tuples from a fitted prior (a ``lax.scan`` over the levels).

    Args:
        prior: ``variables["code_prior"]`` of :func:`fit_code_prior`.
        key: PRNG key.
        n: number of draws.

    Returns:
        int32 ``(n, *positions, L)``.
    """
    first, trans = prior["first"], prior["transitions"]
    k0, k1 = jax.random.split(key)
    c0 = jax.random.categorical(k0, jnp.log(first), shape=(n, *first.shape[:-1])).astype(jnp.int32)

    def level(c, inp):
        t, kl = inp  # t: (*pos, K, K)
        rows = jnp.take_along_axis(t[None], c[..., None, None], axis=-2)[..., 0, :]  # (n, *pos, K)
        nxt = jax.random.categorical(kl, jnp.log(rows)).astype(jnp.int32)
        return nxt, nxt

    n_more = trans.shape[-3]
    _, rest = jax.lax.scan(level, c0, (jnp.moveaxis(trans, -3, 0), jax.random.split(k1, n_more)))
    return jnp.concatenate([c0[..., None], jnp.moveaxis(rest, 0, -1)], axis=-1)


def codes_to_latent(codebooks: jax.Array, codes: jax.Array) -> jax.Array:
    """Σ_l e^l_{k_l}, the latent of a code tuple.

    Args:
        codebooks: ``(L, K, D)``.
        codes: int ``(..., L)``.

    Returns:
        ``(..., D)``.
    """
    per_level = jax.vmap(lambda cb, c: jnp.take(cb, c, axis=0), in_axes=(0, -1))(codebooks, codes)
    return jnp.sum(per_level, axis=0)


@sample.register(VQVAE)
def _sample_vq(model: VQVAE, variables: Variables, key: jax.Array, n: int, *, condition: Any = None) -> Samples:
    """``n`` code tuples from the fitted prior (:func:`fit_code_prior`), decoded to their means.

    A label-conditional model draws sample i's codes from the prior of its label ``condition[i]`` and
    decodes them under that label; a covariate-conditional one decodes the codes under ``condition``.
    """
    check_key(key)
    check_int(n, "n", minimum=1)
    condition = check_sample_condition(model, condition, n)
    if PRIOR not in variables:
        raise ValueError(f"this {type(model).__name__} has no code prior yet: call "
                         "aet.vqvae.fit_code_prior(model, variables, x)")
    prior = variables[PRIOR]
    if int(getattr(model, "n_conditions", 0)):
        per_sample = jax.tree_util.tree_map(lambda a: a[condition], prior)
        codes = jax.vmap(lambda p, k: sample_codes(p, k, 1)[0])(per_sample, jax.random.split(key, n))
    else:
        codes = sample_codes(prior, key, n)
    z = codes_to_latent(codebook(model, variables), codes)
    return Samples(z, decoder_mean(model.decoder, decode(model, variables, z, condition)))


def log_code_prior(prior: dict[str, jax.Array], codes: jax.Array) -> jax.Array:
    """log p(k) of code tuples under a fitted prior, summed over positions.

    Args:
        prior: ``variables["code_prior"]`` of :func:`fit_code_prior`.
        codes: int ``(N, *positions, L)``.

    Returns:
        ``(N,)``.
    """
    first, trans = prior["first"], prior["transitions"]
    lp = jnp.log(jnp.take_along_axis(first[None], codes[..., :1], axis=-1)[..., 0])  # (N, *pos)
    if codes.shape[-1] > 1:
        a, b = codes[..., :-1], codes[..., 1:]  # (N, *pos, L-1)
        rows = jnp.take_along_axis(trans[None], a[..., None, None], axis=-2)[..., 0, :]  # (N, *pos, L-1, K)
        lp = lp + jnp.sum(jnp.log(jnp.take_along_axis(rows, b[..., None], axis=-1)[..., 0]), axis=-1)
    return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


__all__ = ["EMA", "PRIOR", "QUANTISERS", "USAGE", "Codebook", "EMAStats", "Quantised", "VQVAE", "code_counts",
           "code_statistics", "codebook", "codebook_update", "codes_to_latent", "continuous_codes", "depth_mask",
           "ema_update", "fit_code_prior", "gumbel_quantise", "has_codebook_updates", "kl_to_uniform_codes",
           "log_code_prior", "loss", "nearest_code", "norm_penalty", "objective", "quantise", "residual_quantise",
           "restart_dead_codes", "sample_codes", "squared_distances", "straight_through"]
