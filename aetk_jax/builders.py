"""Ready-made MLP models for the command line and the examples.

``build(name, data_shape, ...)`` returns a :class:`Recipe`: the model, its loss
with the hyper-parameters bound (``loss(variables, x, key)``), and the
hyper-parameters themselves, so the CLI, the docs and the benchmarks build the
same networks. Importing this module is cheap (the CLI reads :data:`MODELS` and
:data:`DECODERS` for ``aet --help``); flax and the models are imported when a
model is built.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import flax.linen as nn

MODELS = (
    "ae", "vae", "betavae", "mmdvae", "infomaxvae", "hvae", "rhvae", "iwae", "miwae", "piwae", "ciwae", "vamp",
    "betatcvae", "wae", "rae_l2", "rae_gp",
    # @zoo2 (factorvae, disentangledbetavae, aae, vaegan)
    # @vq (vqvae, hrqvae)
    # @flows (vae_linnf, vae_iaf, msssim_vae)
    # @manifold (svae, pvae)
)
# models built from (encoder, decoder) alone: CLI name -> (module, class)
PLAIN_MODELS = {
    "vae": ("vae", "VAE"),
    "betavae": ("vae", "VAE"),
    "mmdvae": ("mmdvae", "MMDVAE"),
    "hvae": ("hvae", "HVAE"),
    "iwae": ("iwae", "IWAE"),
    "miwae": ("miwae", "MIWAE"),
    "piwae": ("piwae", "PIWAE"),
    "ciwae": ("ciwae", "CIWAE"),
    "vamp": ("vamp", "VAMP"),
    "betatcvae": ("betatcvae", "BetaTCVAE"),
    # @zoo2
    # @vq
    # @flows
    # @manifold
}
# deterministic autoencoders (an ``Encoder`` and a ``Decoder``): CLI name -> (module, class)
DETERMINISTIC_MODELS = {
    "ae": ("ae", "AE"),
    "wae": ("wae", "WAE"),
    "rae_l2": ("rae", "RAE_L2"),
    "rae_gp": ("rae", "RAE_GP"),
    # @zoo2
    # @vq
    # @flows
    # @manifold
}
DECODERS = ("bernoulli", "gaussian")


class Recipe(NamedTuple):
    name: str
    model: nn.Module
    loss: Callable[..., Any]
    hyper: dict[str, Any]


def _body(hidden: Sequence[int]) -> nn.Module:
    import flax.linen as nn

    from .layers import MLP

    return MLP(tuple(hidden), final_activation=nn.relu)


def _decoder(kind: str, out: int, hidden: Sequence[int]) -> nn.Module:
    from . import decoders

    if kind == "bernoulli":
        return decoders.BernoulliDecoder(_body(hidden), out)
    if kind == "gaussian":
        return decoders.JointGaussianLogDecoder(_body(hidden), out)
    raise ValueError(f"`decoder` must be one of {DECODERS}, got {kind!r}")


def default_hyper(name: str) -> dict[str, Any]:
    """The hyper-parameters the CLI uses for ``name`` (the library's defaults unless noted).

    RHVAE: ``flow_gradient="detached"`` (pythae's gradient), not the loss's default
    ``"full"``: with the full gradient, Adam enlarges the metric's G⁻¹ (the
    effective leapfrog step) until the fixed-point iterations stop converging,
    within an epoch or two on the digits (see the RHVAE docs page).

    β-VAE: ``beta=2``. With β = 4 the CLI's 30 epochs on the digits end in
    complete posterior collapse (validation KL 0.0019 nats in all for latent
    2, 0.0056 for latent 8; every sample the same blob); β = 2 keeps the
    code in use (KL 0.74 nats, 0.37 per dimension, latent 2; measured with
    seed 0).
    """
    return {
        "ae": {},
        "vae": {"beta": 1.0},
        "betavae": {"beta": 2.0},
        "mmdvae": {"lam": 10.0, "alpha": 0.0},
        "infomaxvae": {"alpha": 1.0, "beta": 1.0},
        "hvae": {"K": 3, "eps": 1e-2, "beta0": 0.3},
        "rhvae": {"K": 3, "eps": 3e-3, "beta0": 0.3, "n_fixed_point": 5, "flow_gradient": "detached"},
        "iwae": {"n_samples": 5},
        "miwae": {"n_samples": 5, "n_groups": 3},
        "piwae": {"n_samples": 5, "n_groups": 3},
        "ciwae": {"n_samples": 5, "beta": 0.5},
        "vamp": {"beta": 1.0},
        "betatcvae": {"alpha": 1.0, "beta": 4.0, "gamma": 1.0, "estimator": "weighted"},
        "wae": {"lam": 10.0, "kernel": "imq"},
        "rae_l2": {"embedding_weight": 1.0, "reg_weight": 1e-2},
        "rae_gp": {"embedding_weight": 1.0, "reg_weight": 1.0},
        # @zoo2
        # @vq
        # @flows
        # @manifold
    }[name]


def _table_recipe(name: str, entry: tuple[str, str], enc: nn.Module, dec: nn.Module, hp: dict[str, Any]) -> Recipe:
    """The recipe of a model built from ``(encoder, decoder)`` alone: ``entry`` is (module, class)."""
    import importlib

    module = importlib.import_module(f"{__package__}.{entry[0]}")
    model = getattr(module, entry[1])(enc, dec)
    return Recipe(name, model, functools.partial(module.loss, model, **hp), hp)


class BuildContext(NamedTuple):
    """What a model-specific builder gets: the default encoder and decoder and the sizes.

    ``encoder``: the Gaussian MLP encoder (or the deterministic ``Encoder`` for
    :data:`DETERMINISTIC_MODELS`); ``decoder``: the likelihood decoder of the
    chosen ``decoder_kind``; ``n_in``: features per example; ``data_shape``: the
    per-example shape; ``hidden``: the encoder's hidden widths (decoder: reversed).
    """

    encoder: Any
    decoder: Any
    n_in: int
    data_shape: tuple[int, ...]
    latent_dim: int
    hidden: tuple[int, ...]
    decoder_kind: str


# CLI name -> builder(ctx: BuildContext, hp: dict) -> (model, loss module); models with extra networks
def _custom_builds() -> dict[str, Callable[[BuildContext, dict[str, Any]], tuple[Any, Any]]]:
    return {
        # @zoo2
        # @vq
        # @flows
        # @manifold
    }


# @zoo2 builder functions
# @vq builder functions
# @flows builder functions
# @manifold builder functions


def build(
    name: str,
    data_shape: Sequence[int],
    *,
    latent_dim: int = 2,
    decoder: str = "bernoulli",
    hidden: Sequence[int] = (128, 128),
    n_centroids: int = 64,
    T: float = 0.8,
    metric_lam: float = 1e-2,
    **hyper: Any,
) -> Recipe:
    """Build model ``name`` on flat data of ``prod(data_shape)`` features.

    Encoder: MLP(hidden) → Gaussian (μ, log σ) heads of ``latent_dim``; decoder:
    MLP(hidden) → Bernoulli logits or Gaussian (μ, log σ). The deterministic
    models (:data:`DETERMINISTIC_MODELS`) use an ``Encoder`` and a ``Decoder`` instead. ``hyper`` overrides
    :func:`default_hyper` (loss hyper-parameters); ``n_centroids``, ``T`` and
    ``metric_lam`` (λ of G⁻¹) configure the RHVAE's metric.
    """
    from . import decoders, encoders, infomaxvae, rhvae

    if name not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}, got {name!r}")
    if latent_dim < 1:
        raise ValueError(f"`latent_dim` must be >= 1, got {latent_dim}")
    if decoder not in DECODERS:
        raise ValueError(f"`decoder` must be one of {DECODERS}, got {decoder!r}")
    n_in = int(math.prod(data_shape))
    hp = {**default_hyper(name), **hyper}
    if name in DETERMINISTIC_MODELS:
        enc, dec = encoders.Encoder(_body(hidden), latent_dim), decoders.Decoder(_body(hidden[::-1]), n_in)
        return _table_recipe(name, DETERMINISTIC_MODELS[name], enc, dec, hp)
    enc = encoders.JointGaussianLogEncoder(_body(hidden), latent_dim)
    dec = _decoder(decoder, n_in, hidden[::-1])
    custom = _custom_builds()
    if name in custom:
        ctx = BuildContext(enc, dec, n_in, tuple(int(s) for s in data_shape), latent_dim, tuple(hidden), decoder)
        model, module = custom[name](ctx, hp)
        return Recipe(name, model, functools.partial(module.loss, model, **hp), hp)
    if name in PLAIN_MODELS:
        return _table_recipe(name, PLAIN_MODELS[name], enc, dec, hp)
    if name == "infomaxvae":
        critic = infomaxvae.MutualInfoNetwork(_body((hidden[0], hidden[0])))
        model = infomaxvae.InfoMaxVAE(enc, dec, critic)
        return Recipe(name, model, functools.partial(infomaxvae.loss, model, **hp), hp)
    metric = rhvae.MetricNetwork(_body(hidden), latent_dim)
    model = rhvae.RHVAE(enc, dec, metric, n_centroids, T, metric_lam)
    return Recipe(name, model, functools.partial(rhvae.loss, model, **hp), hp)
