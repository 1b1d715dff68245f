"""aetk_jax: (variational) autoencoders and the geometry of their latent spaces, in JAX.

    import aetk_jax as aet

The package imports lazily: ``import aetk_jax`` loads neither JAX nor any
submodule. A submodule (``aet.train``, ``aet.rhvae``, …) or a public name
(``aet.VAE``, ``from aetk_jax import BernoulliDecoder``) is imported on first
use by the module-level ``__getattr__`` below (PEP 562), so ``aet --help`` and
``aet --version`` start in a fraction of a second. ``dir(aet)`` and
``from aetk_jax import *`` list every public name.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "AE": "ae",
    "BernoulliDecoder": "decoders",
    "CategoricalDecoder": "decoders",
    "Decoder": "decoders",
    "JointGaussianDecoder": "decoders",
    "JointGaussianLogDecoder": "decoders",
    "SimpleGaussianDecoder": "decoders",
    "SplitGaussianDecoder": "decoders",
    "SplitGaussianLogDecoder": "decoders",
    "check_support": "decoders",
    "decoder_loglikelihood": "decoders",
    "decoder_mean": "decoders",
    "decoder_support": "decoders",
    "BernoulliParams": "distributions",
    "CategoricalParams": "distributions",
    "GaussianLogParams": "distributions",
    "GaussianParams": "distributions",
    "Encoder": "encoders",
    "JointGaussianEncoder": "encoders",
    "JointGaussianLogEncoder": "encoders",
    "encoder_kl": "encoders",
    "encoder_logposterior": "encoders",
    "encoder_mean": "encoders",
    "encoder_sample": "encoders",
    "spherical_logprior": "encoders",
    "HVAE": "hvae",
    "BetaTCVAE": "betatcvae",
    "WAE": "wae",
    "RAE_L2": "rae",
    "RAE_GP": "rae",
    "CIWAE": "ciwae",
    "IWAE": "iwae",
    "MIWAE": "miwae",
    "PIWAE": "piwae",
    "InfoMaxVAE": "infomaxvae",
    "MLP": "layers",
    "Flatten": "layers",
    "Reshape": "layers",
    "MMDVAE": "mmdvae",
    "RHVAE": "rhvae",
    "sample": "sampling",
    "VAE": "vae",
    "VAMP": "vamp",
    # @zoo2
    "FactorVAE": "factorvae",
    "DisentangledBetaVAE": "disentangledbetavae",
    "AAE": "aae",
    "VAEGAN": "vaegan",
    # @vq
    "VQVAE": "vqvae",
    "HRQVAE": "hrqvae",
    # @flows
    "VAE_LinNF": "vae_linnf",
    "VAE_IAF": "vae_iaf",
    "MSSSIM_VAE": "msssim_vae",
    # @manifold
    "SVAE": "svae",
    "PoincareVAE": "pvae",
}

# the submodules reachable as attributes (``aet.train``); any other submodule also resolves on use
_SUBMODULES = (
    "ae", "base", "betatcvae", "builders", "checkpoint", "ciwae", "disentanglement", "rae", "wae", "data", "decoders", "dispatch", "distributions",
    "encoders", "evaluate", "geometry", "hvae", "importance", "infomaxvae", "iwae", "layers", "miwae",
    "mmdvae", "parallel", "piwae", "priors", "rhvae", "sampling", "train", "utils", "vae", "validation", "vamp",
    # @zoo2
    "factorvae", "disentangledbetavae", "aae", "vaegan",
    # @vq
    "vqvae", "hrqvae",
    # @flows
    "flows", "msssim_vae", "vae_iaf", "vae_linnf",
    # @manifold
    "bessel", "poincare", "svae", "pvae",
    # @hamiltonian
    "hamiltonian", "rhvae_metric", "rhvae_sampler",
    # @geometry
    # @ecosystem
    # @conditional
)

__all__ = sorted({*_EXPORTS, *_SUBMODULES})


def __getattr__(name: str) -> Any:
    """Import the submodule ``name``, or the submodule that defines the public name ``name``."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it as an attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    loaded = [n for n, v in globals().items() if getattr(v, "__name__", "").startswith(f"{__name__}.")]
    return sorted({*__all__, *loaded, "__version__"})
