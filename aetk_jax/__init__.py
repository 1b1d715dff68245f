"""aetk_jax: (variational) autoencoders and the geometry of their latent spaces, in JAX.

    import aetk_jax as aet
"""
from __future__ import annotations

from . import (
    ae,
    base,
    data,
    decoders,
    encoders,
    evaluate,
    geometry,
    hvae,
    infomaxvae,
    layers,
    mmdvae,
    parallel,
    rhvae,
    train,
    utils,
    vae,
)
from .ae import AE
from .decoders import (
    BernoulliDecoder,
    CategoricalDecoder,
    Decoder,
    JointGaussianDecoder,
    JointGaussianLogDecoder,
    SimpleGaussianDecoder,
    SplitGaussianDecoder,
    SplitGaussianLogDecoder,
    check_support,
    decoder_loglikelihood,
    decoder_mean,
    decoder_support,
)
from .distributions import BernoulliParams, CategoricalParams, GaussianLogParams, GaussianParams
from .encoders import (
    Encoder,
    JointGaussianEncoder,
    JointGaussianLogEncoder,
    encoder_kl,
    encoder_logposterior,
    encoder_mean,
    encoder_sample,
    spherical_logprior,
)
from .hvae import HVAE
from .infomaxvae import InfoMaxVAE
from .layers import MLP, Flatten, Reshape
from .mmdvae import MMDVAE
from .rhvae import RHVAE
from .sampling import sample
from .vae import VAE

__version__ = "0.1.0"
