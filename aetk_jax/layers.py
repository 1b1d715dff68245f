"""Small building blocks for encoder and decoder bodies."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


class MLP(nn.Module):
    """A stack of dense layers.

    ``activation`` follows every layer but the last; ``final_activation`` (none
    by default) follows the last. Input ``(batch, n_in)``, output
    ``(batch, features[-1])``.
    """

    features: Sequence[int]
    activation: Activation = nn.relu
    final_activation: Optional[Activation] = None

    def __post_init__(self) -> None:
        # a tuple keeps the module hashable (``jit(..., static_argnums=0)``)
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(self.features) == 0:
            raise ValueError("MLP: `features` must name at least one layer width")
        for i, width in enumerate(self.features):
            x = nn.Dense(int(width), name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
            elif self.final_activation is not None:
                x = self.final_activation(x)
        return x


class Flatten(nn.Module):
    """``(batch, *shape) -> (batch, prod(shape))``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class Reshape(nn.Module):
    """``(batch, n) -> (batch, *shape)``; ``shape`` excludes the batch axis."""

    shape: Sequence[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], *tuple(self.shape))


def conv_depth(image_shape: Sequence[int], max_layers: int) -> int:
    """How many stride-2 stages an image takes.

    Args:
        image_shape: ``(H, W)`` or ``(H, W, C)``.
        max_layers: the most stages wanted.

    Returns:
        The largest L ≤ ``max_layers`` with min(H, W) / 2ᴸ ≥ 2.
    """
    side = min(int(image_shape[0]), int(image_shape[1]))
    depth = 0
    while depth < max_layers and side / 2 ** (depth + 1) >= 2:
        depth += 1
    return depth


class ConvEncoderBody(nn.Module):
    """Stride-2 convolutions over an image, then one dense layer.

    Input ``(batch, prod(image_shape) + n_extra)`` (flat data, as the CLI feeds it)
    or ``(batch, *image_shape)``. The first ``prod(image_shape)`` features are the
    image in (H, W, channel) order; any further features (e.g. a condition
    vector) join the flattened feature maps before the dense layer. Each of the
    :func:`conv_depth` stages is a 3×3 convolution with stride 2 ('SAME'
    padding, so H → ⌈H/2⌉) and ``activation``; the output is ``(batch, dense)``
    after ``activation``.

    Attributes:
        image_shape: ``(H, W)`` or ``(H, W, C)``.
        channels: the channels of the stages, in order (at most this many stages).
        dense: the width of the final dense layer.
        activation: the nonlinearity after every layer.
    """

    image_shape: Sequence[int]
    channels: Sequence[int] = (32, 64)
    dense: int = 256
    activation: Activation = nn.relu

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = self.image_shape if len(self.image_shape) == 3 else self.image_shape + (1,)
        n_img = math.prod(shape)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] < n_img:
            raise ValueError(f"ConvEncoderBody: an example has {flat.shape[1]} values, `image_shape` "
                             f"{self.image_shape} needs {n_img}")
        h = flat[:, :n_img].reshape((x.shape[0],) + shape)
        for i, c in enumerate(self.channels[: conv_depth(shape, len(self.channels))]):
            h = self.activation(nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME", name=f"conv_{i}")(h))
        h = jnp.concatenate([h.reshape(h.shape[0], -1), flat[:, n_img:]], axis=-1)
        return self.activation(nn.Dense(self.dense, name="dense")(h))


class ConvDecoderBody(nn.Module):
    """A dense layer to a small feature map, then stride-2 transposed convolutions.

    Input ``(batch, d)``; output feature maps ``(batch, H, W, channels[-1])`` of
    exactly the image's height and width (a decoder's head then maps each pixel
    to its channels, see ``aet.decoders``). With L = :func:`conv_depth` stages
    the dense layer gives a ``(⌈H/2ᴸ⌉, ⌈W/2ᴸ⌉, channels[0])`` map, each 3×3
    transposed convolution with stride 2 doubles it, and the result is cropped
    to ``(H, W)`` (odd sizes such as 7×7 or 30×30 come out exactly).

    Attributes:
        image_shape: ``(H, W)`` or ``(H, W, C)``.
        channels: the channels of the stages, in order (at most this many stages).
        activation: the nonlinearity after every layer.
    """

    image_shape: Sequence[int]
    channels: Sequence[int] = (64, 32)
    activation: Activation = nn.relu

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        super().__post_init__()

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width = self.image_shape[:2]
        depth = conv_depth(self.image_shape, len(self.channels))
        chans = self.channels[:depth] if depth else self.channels[-1:]
        h0, w0 = -(-height // 2 ** depth), -(-width // 2 ** depth)
        h = self.activation(nn.Dense(h0 * w0 * chans[0], name="dense")(z))
        h = h.reshape(z.shape[0], h0, w0, chans[0])
        for i, c in enumerate(chans[:depth]):
            h = self.activation(nn.ConvTranspose(c, (3, 3), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(h))
        return h[:, :height, :width, :]


def NNX(module_cls: type, *args: object, **kwargs: object) -> nn.Module:  # noqa: N802 (the public name is a constructor)
    """A linen body wrapping a Flax NNX module class: ``aet.layers.NNX(MyNNXBody, 64, 32)``.

    The result is a linen module (``flax.nnx.bridge.ToLinen``), usable wherever a ``body`` is
    accepted (encoders, decoders, RHVAE's metric network). ``init`` builds
    ``module_cls(*args, rngs=nnx.Rngs(params=...), **kwargs)`` from init's ``"params"`` key and
    stores its ``nnx.Param`` s in the same ``variables["params"]`` pytree as the rest of the model
    (under the body's path, with the NNX attribute names), so the loss stays a pure function of
    ``variables``, and optimisers, ``fit``, checkpoints and ``load_variables`` see plain arrays.
    Every call rebuilds the module from ``variables`` (``nnx.update``) and calls it.

    Only parameters are supported: an NNX module holding other state (``nnx.BatchStat`` of a
    ``BatchNorm``, the random state of ``nnx.Dropout``, any other ``nnx.Variable``) is refused,
    since the models' losses neither thread mutable collections nor pass random streams to
    bodies (a Dropout would silently draw the same mask at every step). NNX modules need their
    input size at construction (``nnx.Linear(din, dout, ...)``), unlike linen's lazy shapes.

    Args:
        module_cls: an ``nnx.Module`` subclass (the class, not an instance). Its constructor
            takes ``rngs`` as a keyword (if it takes none, it is built without).
        *args: positional arguments of ``module_cls``.
        **kwargs: keyword arguments of ``module_cls`` (other than ``rngs``).

    Returns:
        The linen module.

    Raises:
        TypeError: when ``module_cls`` is not an ``nnx.Module`` class.
        ValueError: when ``rngs`` is given, or the module holds state other than ``nnx.Param``.
    """
    import inspect

    from flax import nnx
    from flax.core import FrozenDict

    if not (isinstance(module_cls, type) and issubclass(module_cls, nnx.Module)):
        got = f"an instance of {type(module_cls).__name__}" if not isinstance(module_cls, type) else module_cls.__name__
        raise TypeError(f"module_cls must be a flax.nnx.Module subclass (the class, not an instance); got {got}")
    if "rngs" in kwargs:
        raise ValueError("rngs: do not pass it; NNX builds the module with rngs drawn from init's 'params' key")
    try:
        params = inspect.signature(module_cls.__init__).parameters
        takes_rngs = "rngs" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # no introspectable signature
        takes_rngs = True
    # an abstract build (shapes only, no computation) to see what state the module holds
    abstract = nnx.eval_shape(lambda: module_cls(*args, **kwargs, **({"rngs": nnx.Rngs(0)} if takes_rngs else {})))
    others = [f"{'/'.join(map(str, path))} ({type(var).__name__})"
              for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Not(nnx.Param)))]
    if others:
        raise ValueError(f"module_cls: {module_cls.__name__} holds state other than nnx.Param, which aet.layers.NNX "
                         f"does not carry through a pure loss: {', '.join(others)}")
    return nnx.bridge.ToLinen(module_cls, args=tuple(args), kwargs=FrozenDict(kwargs), skip_rng=not takes_rngs)
