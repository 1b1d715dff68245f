"""Training: a jitted step, a whole epoch as one ``lax.scan``, and ``fit``.

``make_step(loss_fn, optimizer)`` returns ``step(state, batch, key) -> (state,
metrics)``: loss, gradients, optax update and metrics in one XLA computation.
``fit`` runs each epoch as a single compiled scan over shuffled batches and
keeps metrics on the device until the epoch ends, then syncs once (every
argument of the epoch keeps one pytree structure, so it compiles once). A
non-finite loss or gradient freezes the state at the last good step (inside the
scan, no host round-trip), and ``fit`` raises ``NonFiniteError`` at the end of
that epoch with the step and the terms that went non-finite. Data outside
the decoder's support are refused before training; Ctrl-C stops at the end of
the epoch with ``TrainingInterrupted``.

This module is the public face of the training layer, ``aetk_jax/training/``:

* ``training.devices`` — meshes and shardings (data parallel);
* ``training.step`` — ``TrainState``, ``make_step`` (one step for every model;
  multi-optimizer models as :class:`Phase` s of it), the optax-style policies;
* ``training.epoch`` — ``make_epoch`` (the compiled scan) and ``make_evaluator``;
* ``training.hooks`` — ``make_trainer``: **which models change training** (RHVAE's
  end-of-epoch metric update, InfoMax-VAE's two phases);
* ``training.fit`` — ``fit`` and its helpers, checkpoints, Ctrl-C, ``load_variables``.
* ``training.loggers`` — the ``TensorBoard`` and ``CSVLogger`` callbacks.

Model modules never import the training layer; ``training.hooks`` imports them.
"""
from __future__ import annotations

from .training.epoch import EpochResult, make_epoch, make_evaluator, shuffle
from .training.fit import NonFiniteError, TrainingInterrupted, fit, load_variables, save_history
from .training.hooks import infomax_optimizers, infomax_phases, make_trainer
from .training.loggers import CSVLogger, TensorBoard
from .training.step import (
    LossFn,
    LRScaleState,
    Metrics,
    Phase,
    Trainer,
    TrainState,
    Variables,
    accept_finite,
    all_finite,
    guarded,
    identity_end,
    init_state,
    lr_scale,
    make_step,
    scale_by_lr_factor,
    scale_lr,
    with_aux,
)

__all__ = [
    "TrainState",
    "Trainer",
    "Phase",
    "NonFiniteError",
    "TrainingInterrupted",
    "init_state",
    "make_step",
    "accept_finite",
    "shuffle",
    "make_trainer",
    "make_epoch",
    "make_evaluator",
    "fit",
    "with_aux",
    "save_history",
    "load_variables",
    "scale_by_lr_factor",
    "TensorBoard",
    "CSVLogger",
]
