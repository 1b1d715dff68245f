"""Small building blocks for encoder and decoder bodies."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

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
