"""Side-by-side benchmarks of aetk_jax against pythae (and, optionally, AutoEncoderToolkit.jl).

Entry point: ``python -m benchmarks.run --suite quick|full [--device cpu|gpu]``.
See ``benchmarks/README.md`` for what is measured, how, and the limits of each number.

The modules ``config``, ``data`` and ``report`` import neither JAX nor torch at
module level; ``jax_side`` needs aetk_jax, ``torch_side`` needs pythae and torch.
"""
