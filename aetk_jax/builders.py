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
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import flax.linen as nn

MODELS = (
    "ae", "vae", "betavae", "mmdvae", "infomaxvae", "hvae", "rhvae", "iwae", "miwae", "piwae", "ciwae", "vamp",
    "betatcvae", "wae", "rae_l2", "rae_gp",
    # @zoo2 (factorvae, disentangledbetavae, aae, vaegan)
    "factorvae", "disentangledbetavae", "aae", "vaegan",
    # @vq (vqvae, hrqvae)
    "vqvae", "hrqvae",
    # @flows (vae_linnf, vae_iaf, msssim_vae)
    "vae_linnf", "vae_iaf", "msssim_vae",
    # @manifold (svae, pvae)
    "svae", "pvae",
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
    "disentangledbetavae": ("disentangledbetavae", "DisentangledBetaVAE"),
    # @vq
    # @flows
    "vae_linnf": ("vae_linnf", "VAE_LinNF"),
    "vae_iaf": ("vae_iaf", "VAE_IAF"),
    "msssim_vae": ("msssim_vae", "MSSSIM_VAE"),
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
    "vqvae": ("vqvae", "VQVAE"),
    "hrqvae": ("hrqvae", "HRQVAE"),
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


def _decoder(kind: str, out: int, hidden: Sequence[int], body: Optional[nn.Module] = None) -> nn.Module:
    from . import decoders

    body = _body(hidden) if body is None else body
    if kind == "bernoulli":
        return decoders.BernoulliDecoder(body, out)
    if kind == "gaussian":
        return decoders.JointGaussianLogDecoder(body, out)
    if kind == "deterministic":
        return decoders.Decoder(body, out)
    raise ValueError(f"`decoder` must be one of {DECODERS}, got {kind!r}")


ARCHS = ("mlp", "conv")


def check_image_shape(image_shape: Any, n_features: Optional[int] = None) -> tuple[int, ...]:
    """``image_shape`` as a tuple ``(H, W)`` or ``(H, W, C)``; ``ValueError`` naming it otherwise.

    Args:
        image_shape: the shape to check.
        n_features: an example's size, which the shape must hold exactly (unchecked if ``None``).

    Returns:
        The shape as a tuple of ints.
    """
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise ValueError(f"`image_shape` must be (H, W) or (H, W, C), got {image_shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"`image_shape` must be (H, W) or (H, W, C) of positive sizes, got {shape}")
    if min(shape[:2]) < 2:
        raise ValueError(f"`image_shape` {shape}: a convolutional network needs images at least 2×2")
    if n_features is not None and math.prod(shape) != int(n_features):
        raise ValueError(f"`image_shape` {shape} holds {math.prod(shape)} values, an example has {n_features}")
    return shape


def conv_encoder(
    image_shape: Sequence[int], latent_dim: int, *, kind: str = "gaussian",
    channels: Sequence[int] = (32, 64), dense: int = 256,
) -> nn.Module:
    """A convolutional encoder for images of ``image_shape`` (flat or image-shaped input).

    Args:
        image_shape: ``(H, W)`` or ``(H, W, C)`` of one example.
        latent_dim: the code size.
        kind: ``"gaussian"`` (``JointGaussianLogEncoder``) or ``"deterministic"`` (``Encoder``).
        channels: channels of the stride-2 stages (``aet.layers.ConvEncoderBody``).
        dense: width of the dense layer after the convolutions.

    Returns:
        The encoder module.
    """
    from . import encoders
    from .layers import ConvEncoderBody

    shape = check_image_shape(image_shape)
    if int(latent_dim) < 1:
        raise ValueError(f"`latent_dim` must be >= 1, got {latent_dim}")
    body = ConvEncoderBody(shape, tuple(channels), int(dense))
    if kind == "gaussian":
        return encoders.JointGaussianLogEncoder(body, int(latent_dim))
    if kind == "deterministic":
        return encoders.Encoder(body, int(latent_dim))
    raise ValueError(f"`kind` must be 'gaussian' or 'deterministic', got {kind!r}")


def conv_decoder(
    image_shape: Sequence[int], *, kind: str = "bernoulli", channels: Sequence[int] = (64, 32),
    flat: bool = True,
) -> nn.Module:
    """A convolutional decoder producing exactly ``image_shape`` (flattened when ``flat``).

    Args:
        image_shape: ``(H, W)`` or ``(H, W, C)`` of one example.
        kind: ``"bernoulli"``, ``"gaussian"`` (μ and log σ per pixel) or ``"deterministic"``.
        channels: channels of the transposed-convolution stages (``aet.layers.ConvDecoderBody``).
        flat: outputs ``(batch, H·W·C)`` (the CLI's flat data) if true, else ``(batch, *image_shape)``.

    Returns:
        The decoder module.
    """
    from .layers import ConvDecoderBody

    shape = check_image_shape(image_shape)
    out = math.prod(shape) if flat else shape
    return _decoder(kind, out, (), body=ConvDecoderBody(shape, tuple(channels)))


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
        "factorvae": {"gamma": 10.0},
        # C = 5 nats, not the library's 50: a 2-D code of the digits does not carry 50 nats (measured,
        # 30 CLI epochs, seed 0: C = 50 forces a validation KL of 49.7 and an ELBO of −75.3; C = 5: KL 5.0,
        # ELBO −29.7; the VAE: KL 1.8, ELBO −25.5)
        "disentangledbetavae": {"beta": 10.0, "C": 5.0, "warmup_epochs": 20},
        "aae": {"adversarial_loss_scale": 0.5},
        "vaegan": {"adversarial_loss_scale": 0.5, "reconstruction_layer": -1},
        # @vq
        "vqvae": {},
        "hrqvae": {},
        # @flows
        "vae_linnf": {"beta": 1.0},
        "vae_iaf": {"beta": 1.0},
        "msssim_vae": {"beta": 0.03, "window_size": 3},  # β = 1 collapses on the digits (docs/models/flows.md)
        # @manifold
        "svae": {"beta": 1.0},
        "pvae": {"beta": 1.0},
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
    :data:`DETERMINISTIC_MODELS`; convolutional with ``arch="conv"``); ``decoder``: the
    likelihood decoder of the chosen ``decoder_kind``; ``n_in``: features per example;
    ``data_shape``: the per-example shape; ``hidden``: the encoder's hidden widths
    (decoder: reversed); ``curvature``: the Poincaré VAE's c (``None``: 1).
    """

    encoder: Any
    decoder: Any
    n_in: int
    data_shape: tuple[int, ...]
    latent_dim: int
    hidden: tuple[int, ...]
    decoder_kind: str
    curvature: Optional[float] = None  # pvae: the ball's curvature −c (None: the model's default 1)


# CLI name -> builder(ctx: BuildContext, hp: dict) -> (model, loss module); models with extra networks
def _custom_builds() -> dict[str, Callable[[BuildContext, dict[str, Any]], tuple[Any, Any]]]:
    return {
        # @zoo2
        "factorvae": _build_factorvae,
        "aae": _build_aae,
        "vaegan": _build_vaegan,
        # @vq
        # @flows
        # @manifold
        "svae": _build_svae,
        "pvae": _build_pvae,
    }


# @zoo2 builder functions
def code_discriminator(hidden: Sequence[int]) -> nn.Module:
    """The default discriminator on codes (FactorVAE, AAE): two LeakyReLU(0.2) layers of ``hidden[0]`` units.

    Args:
        hidden: the encoder's hidden widths (the first sets the discriminator's width).

    Returns:
        An ``aet.aae.Discriminator`` (codes ``(batch, d)`` → logits ``(batch,)``).
    """
    from .aae import Discriminator, leaky_relu
    from .layers import MLP

    width = int(hidden[0])
    return Discriminator(MLP((width, width), activation=leaky_relu, final_activation=leaky_relu))


def data_discriminator(hidden: Sequence[int]) -> nn.Module:
    """The default VAE-GAN discriminator: feature layers of the encoder's widths, a logit head.

    Args:
        hidden: the feature layers' widths.

    Returns:
        An ``aet.vaegan.FeatureDiscriminator``.
    """
    from .vaegan import FeatureDiscriminator

    return FeatureDiscriminator(tuple(int(h) for h in hidden))


def _build_factorvae(ctx: BuildContext, hp: dict[str, Any]) -> tuple[Any, Any]:
    from . import factorvae

    return factorvae.FactorVAE(ctx.encoder, ctx.decoder, code_discriminator(ctx.hidden)), factorvae


def _build_aae(ctx: BuildContext, hp: dict[str, Any]) -> tuple[Any, Any]:
    from . import aae

    return aae.AAE(ctx.encoder, ctx.decoder, code_discriminator(ctx.hidden)), aae


def _build_vaegan(ctx: BuildContext, hp: dict[str, Any]) -> tuple[Any, Any]:
    from . import vaegan

    return vaegan.VAEGAN(ctx.encoder, ctx.decoder, data_discriminator(ctx.hidden)), vaegan


# @vq builder functions
#: the CLI's VQ-VAE / HRQ-VAE restart dead codes after this many steps without an assignment
#: (docs/models/vq.md: without restarts the CLI's VQ-VAE used a single code after 3 epochs)
VQ_RESTART_AFTER = 20


def _check_model_options(name: str, restart_after: Any, curvature: Any) -> None:
    """``ValueError`` naming the option when it is given for a model that has no such option, or is invalid."""
    from .validation import check_int, check_scalar

    if restart_after is not None:
        if name not in ("vqvae", "hrqvae"):
            raise ValueError(f"`restart_after` (dead-code restarts) applies to vqvae and hrqvae, not {name!r}")
        check_int(restart_after, "restart_after", minimum=0)
    if curvature is not None:
        if name != "pvae":
            raise ValueError(f"`curvature` applies to pvae, not {name!r}")
        check_scalar(curvature, "curvature", positive=True)


# @flows builder functions
# @manifold builder functions
def _build_svae(ctx: BuildContext, hp: dict[str, Any]) -> tuple[Any, Any]:
    """S-VAE: a von Mises–Fisher encoder on S^{latent_dim − 1} on the default encoder's body (the MLP, or the
    convolutional body with ``arch="conv"``) and the likelihood decoder."""
    from . import svae

    return svae.SVAE(svae.VMFEncoder(ctx.encoder.body, ctx.latent_dim), ctx.decoder), svae


def _build_pvae(ctx: BuildContext, hp: dict[str, Any]) -> tuple[Any, Any]:
    """Poincaré VAE (wrapped normals; curvature ``ctx.curvature``, default 1): a Poincaré-ball encoder on the
    default encoder's body (MLP or convolutional) and the likelihood decoder."""
    from . import pvae

    c = {} if ctx.curvature is None else {"curvature": float(ctx.curvature)}
    return pvae.PoincareVAE(pvae.PoincareEncoder(ctx.encoder.body, ctx.latent_dim), ctx.decoder, **c), pvae




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
    arch: str = "mlp",
    image_shape: Optional[Sequence[int]] = None,
    restart_after: Optional[int] = None,
    curvature: Optional[float] = None,
    **hyper: Any,
) -> Recipe:
    """Build model ``name`` on flat data of ``prod(data_shape)`` features.

    Encoder: MLP(hidden) → Gaussian (μ, log σ) heads of ``latent_dim``; decoder:
    MLP(hidden) → Bernoulli logits or Gaussian (μ, log σ). The deterministic
    models (:data:`DETERMINISTIC_MODELS`) use an ``Encoder`` and a ``Decoder`` instead. ``hyper`` overrides
    :func:`default_hyper` (loss hyper-parameters); ``n_centroids``, ``T`` and
    ``metric_lam`` (λ of G⁻¹) configure the RHVAE's metric. ``arch="conv"``
    builds the encoder and decoder with :func:`conv_encoder` and
    :func:`conv_decoder` for images of ``image_shape`` (default: ``data_shape``
    when it is 2-D or 3-D); the RHVAE's metric network and other extra networks
    stay MLPs. ``restart_after`` (VQ-VAE, HRQ-VAE only): restart a code unused for
    this many steps, 0 for never (default :data:`VQ_RESTART_AFTER`); ``curvature``
    (Poincaré VAE only): c > 0 of the ball (default 1). Either given for another
    model is a ``ValueError``.
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
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS}, got {arch!r}")
    det = name in DETERMINISTIC_MODELS
    if arch == "conv":
        if image_shape is None and len(data_shape) not in (2, 3):
            raise ValueError(f"arch='conv' on flat data ({n_in} features) needs `image_shape`, e.g. (8, 8)")
        shape = check_image_shape(tuple(data_shape) if image_shape is None else image_shape, n_in)
        enc = conv_encoder(shape, latent_dim, kind="deterministic" if det else "gaussian", dense=hidden[0])
        dec = conv_decoder(shape, kind="deterministic" if det else decoder, flat=len(data_shape) == 1)
    elif det:
        enc, dec = encoders.Encoder(_body(hidden), latent_dim), decoders.Decoder(_body(hidden[::-1]), n_in)
    else:
        enc = encoders.JointGaussianLogEncoder(_body(hidden), latent_dim)
        dec = _decoder(decoder, n_in, hidden[::-1])
    _check_model_options(name, restart_after, curvature)
    if name in ("vqvae", "hrqvae"):
        recipe = _table_recipe(name, DETERMINISTIC_MODELS[name], enc, dec, hp)
        model = recipe.model.clone(restart_after=VQ_RESTART_AFTER if restart_after is None else int(restart_after))
        return recipe._replace(model=model, loss=functools.partial(recipe.loss.func, model, **hp))
    if det:
        return _table_recipe(name, DETERMINISTIC_MODELS[name], enc, dec, hp)
    custom = _custom_builds()
    if name in custom:
        ctx = BuildContext(enc, dec, n_in, tuple(int(s) for s in data_shape), latent_dim, tuple(hidden), decoder,
                           curvature)
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
