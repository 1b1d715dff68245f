"""The ``aet`` command line: ``aet train`` and ``aet evaluate``.

    aet train --model vae --out runs/vae
    aet evaluate runs/vae
    aet --version

``train`` writes ``config.json``, ``history.json``, ``results.json``, a
``checkpoints/`` folder and PNG plots under ``--out``. ``aet train --resume
DIR`` continues the run in DIR (its ``config.json``; ``--epochs`` may raise the
total) from its newest intact checkpoint; ``aet train --resume --out DIR`` is
the same. Resuming a folder with no ``config.json`` or no intact
checkpoint is refused (it never starts a new run silently).

Exit status and messages (stderr, one line each, never a traceback):

* 0: success; warnings (e.g. posterior collapse: mean KL per latent
  dimension below ``COLLAPSE_KL`` nats on the validation data) follow as
  ``aet train: warning: ...``.
* 2: an error in the user's input (bad options, unreadable or malformed data,
  data outside the decoder's support such as standardised data for the
  Bernoulli decoder, a corrupt run folder, a non-finite loss).
* 130: Ctrl-C. The first Ctrl-C lets the current epoch finish and write its
  checkpoint; a second one abandons it. ``history.json`` and a
  ``results.json`` with ``"finished": false`` are written, and the message
  says how to continue (``aet train --resume DIR``).
* 1 (``evaluate`` only): the run did not finish (no ``results.json``, or
  ``"finished": false`` after Ctrl-C or a non-finite loss) or its history or
  the evaluated numbers are non-finite. The numbers of its newest checkpoint
  are still printed on stdout, with a one-line warning saying why they should
  not be trusted as the run's result.

Importing this module loads no JAX: ``aet --help`` and ``aet --version`` are
fast, and each command imports what it needs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Optional, Sequence

DEFAULT_EPOCHS = {
    "ae": 30, "vae": 30, "betavae": 30, "mmdvae": 30, "infomaxvae": 30, "hvae": 20, "rhvae": 10,
    "iwae": 30, "miwae": 20, "piwae": 20, "ciwae": 30, "vamp": 30,
    "betatcvae": 30, "wae": 30, "rae_l2": 30, "rae_gp": 30,
    # @zoo2
    "factorvae": 30, "disentangledbetavae": 30, "aae": 30, "vaegan": 30,
    # @vq
    "vqvae": 30, "hrqvae": 30,
    # @flows
    "vae_linnf": 30, "vae_iaf": 30, "msssim_vae": 30,
    # @manifold
    "svae": 30, "pvae": 30,
}
# defaults of the options that define a run (recorded in config.json; fixed when resuming)
RUN_DEFAULTS: dict[str, Any] = {
    "model": "vae",
    "data": "digits",
    "decoder": "bernoulli",
    "latent_dim": 2,
    "batch_size": 64,
    "lr": 1e-3,
    "hidden": [128, 128],
    "seed": 0,
    "arch": "mlp",
    "image_shape": None,
    "condition_on_labels": False,
    "code_restarts": True,  # @vq: vqvae/hrqvae restart dead codes (builders.VQ_RESTART_AFTER); --no-code-restarts
    "curvature": None,  # @manifold: pvae's c (None: 1.0); --curvature
    "metric_update_every": 1,  # rhvae: fit's metric_update_every; --metric-update-every
}
COLLAPSE_KL = 0.01  # nats per latent dimension: below it the posterior has collapsed onto the prior
# the models whose "kl" metric is KL(q(z|x) || p(z)) (RHVAE's "kl" is a different gap)
KL_MODELS = (
    "vae", "betavae", "mmdvae", "infomaxvae", "vamp", "betatcvae",
    # @zoo2
    "factorvae", "disentangledbetavae",
    # @flows
    "vae_linnf", "vae_iaf", "msssim_vae",
    # @manifold
    "svae", "pvae",
)
# models with no likelihood p(x|z): scored by their held-out loss
NO_LIKELIHOOD = (
    "ae", "wae", "rae_l2", "rae_gp",
    # @zoo2
    # @vq
    "vqvae", "hrqvae",
    "msssim_vae",  # @flows (no @flows anchor in this table)
)


class UserError(Exception):
    """A problem with the command line or the data, reported in one line."""


class Interrupted(Exception):
    """Ctrl-C: reported in one line (with how to resume) and exit status 130."""


class UnfinishedRunWarning(UserWarning):
    """``aet evaluate`` on a run that did not finish: the command exits with status 1."""


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .builders import DECODERS, MODELS

    p = argparse.ArgumentParser(prog="aet", description="Train and evaluate autoencoders with aetk_jax.")
    p.add_argument("--version", action="version", version=f"aet (aetk_jax) {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model and write checkpoints, history and plots")
    # None = not given: the default (RUN_DEFAULTS) or, when resuming, the run's config.json
    t.add_argument("--model", choices=MODELS, default=None, help="default vae")
    t.add_argument("--data", default=None, help="digits (default), a .npz/.npy/.csv file, an MNIST or Fashion-MNIST IDX file, or CIFAR-10 batches (a data_batch_* file or their folder)")
    t.add_argument("--decoder", choices=DECODERS, default=None, help="default bernoulli")
    t.add_argument("--latent-dim", type=int, default=None, help="default 2")
    t.add_argument("--epochs", type=int, default=None, help="total epochs (default: a few seconds' worth for the model)")
    t.add_argument("--batch-size", type=int, default=None, help="default 64")
    t.add_argument("--lr", type=float, default=None, help="default 1e-3")
    t.add_argument("--hidden", type=int, nargs="+", default=None, help="default 128 128")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    t.add_argument("--arch", choices=("mlp", "conv"), default=None,
                   help="mlp (default) or conv: convolutional encoder/decoder built from the data's image shape")
    t.add_argument("--condition-on-labels", action="store_true", default=None,
                   help="a conditional model (encoder q(z|x, y), decoder p(x|z, y)) on the data's labels y")
    t.add_argument("--image-shape", type=int, nargs="+", default=None, metavar="N",
                   help="H W [C] of one example for --arch conv (default: the data file's own)")
    t.add_argument("--no-code-restarts", dest="code_restarts", action="store_false", default=None,
                   help="vqvae/hrqvae: never restart dead codes (by default a code unused for 20 steps is "
                        "re-initialised to an encoding of the batch)")
    t.add_argument("--curvature", type=float, default=None, metavar="C",
                   help="pvae: the Poincaré ball's curvature is -C (C > 0, default 1)")
    t.add_argument("--metric-update-every", type=int, default=None, metavar="K",
                   help="rhvae: update the stored metric after every K-th epoch and the last (default 1)")
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="DIR",
        help="continue the run in DIR (or in --out) from its newest intact checkpoint, up to --epochs in total",
    )
    t.add_argument("--on-nonfinite", choices=("stop", "skip"), default="stop",
                   help="on a non-finite loss: stop (default) or skip the step and halve the learning rate")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write every train/val metric of every epoch as TensorBoard scalars in DIR "
                        '(needs pip install "aetk_jax[tensorboard]")')
    e = sub.add_parser("evaluate", help="print held-out ELBO and log-likelihood of a trained run")
    e.add_argument("dir")
    e.add_argument("--n-importance", type=int, default=256)
    e.add_argument("--seed", type=int, default=0)
    return p


def _recipe(cfg: dict[str, Any], train_ds: Any):
    from .builders import build

    # β-TC-VAE's estimators need the training set's size
    extra = {"dataset_size": len(train_ds)} if cfg["model"] == "betatcvae" else {}
    arch = cfg.get("arch", "mlp")
    if arch == "conv":
        extra.update(arch="conv", image_shape=_conv_image_shape(cfg, train_ds))
    extra.update(_model_options(cfg))
    recipe = build(
        cfg["model"], train_ds.x.shape[1:], latent_dim=cfg["latent_dim"], decoder=cfg["decoder"],
        hidden=tuple(cfg["hidden"]), **extra,
    )
    return _conditioned(recipe, cfg, train_ds) if cfg.get("condition_on_labels") else recipe


def _model_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``build``'s model options from the run's ``code_restarts`` (VQ models) and ``curvature`` (pvae)."""
    out: dict[str, Any] = {}
    if cfg["model"] in ("vqvae", "hrqvae") and not cfg.get("code_restarts", True):
        out["restart_after"] = 0
    if cfg["model"] == "pvae" and cfg.get("curvature") is not None:
        out["curvature"] = float(cfg["curvature"])
    return out


def _check_model_options(cfg: dict[str, Any]) -> None:
    """``UserError`` for --no-code-restarts / --curvature / --metric-update-every given for a model
    without the option, c ≤ 0 or K < 1."""
    every = cfg["metric_update_every"]
    if every != 1 and cfg["model"] != "rhvae":
        raise UserError(f"--metric-update-every applies to --model rhvae, not {cfg['model']}")
    if not isinstance(every, int) or every < 1:
        raise UserError(f"--metric-update-every must be >= 1, got {every}")
    if not cfg["code_restarts"] and cfg["model"] not in ("vqvae", "hrqvae"):
        raise UserError(f"--no-code-restarts applies to --model vqvae or hrqvae, not {cfg['model']}")
    if cfg["curvature"] is not None:
        if cfg["model"] != "pvae":
            raise UserError(f"--curvature applies to --model pvae, not {cfg['model']}")
        if not cfg["curvature"] > 0:  # also NaN
            raise UserError(f"--curvature must be > 0, got {cfg['curvature']}")


def _conditioned(recipe, cfg: dict[str, Any], train_ds: Any):
    """``recipe`` with its model conditioned on the labels (``n_conditions`` = max label + 1)."""
    import functools

    from .builders import Recipe

    if train_ds.y is None:
        raise UserError(f"--condition-on-labels: the data {cfg['data']} have no labels")
    n = int(train_ds.y.max()) + 1
    try:
        model = recipe.model.clone(n_conditions=n)
    except ValueError as err:
        raise UserError(f"--condition-on-labels with --model {cfg['model']}: {err}") from None
    loss = recipe.loss
    return Recipe(recipe.name, model, functools.partial(loss.func, model, *loss.args[1:], **loss.keywords), recipe.hyper)


def _inputs(recipe, ds: Any, n: Optional[int] = None) -> Any:
    """What the recipe's loss takes for the (first ``n``) examples of ``ds``: ``x``, or ``(x, y)`` if conditional."""
    from .base import is_conditional

    x = ds.x if n is None else ds.x[:n]
    if not is_conditional(recipe.model):
        return x
    return x, (ds.y if n is None else ds.y[:n])


def _conv_image_shape(cfg: dict[str, Any], train_ds: Any) -> tuple[int, ...]:
    """The image shape a ``--arch conv`` run uses: ``--image-shape``, else the data file's
    (digits 8×8, IDX rows×cols, an npz ``shape`` entry, CIFAR-10 32×32×3); ``UserError`` otherwise."""
    import math

    from .builders import check_image_shape

    given, known = cfg.get("image_shape"), train_ds.image_shape
    shape = given if given is not None else known
    if shape is None:
        raise UserError(f"--arch conv: the data {cfg['data']} have no known image shape; give --image-shape H W [C]")
    try:
        return check_image_shape(shape, math.prod(train_ds.x.shape[1:]))
    except ValueError as err:
        raise UserError(f"--image-shape: {err}" if given is not None else f"--arch conv: {err}") from None


def _load_data(cfg: dict[str, Any]):
    from . import data

    return data.load_named(cfg["data"], seed=cfg["seed"])


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _evaluate(recipe, variables, x_val, key, n_importance: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from . import evaluate

    k1, k2 = jax.random.split(key)
    x_val = jax.tree_util.tree_map(jnp.asarray, x_val)  # (x, y) for a conditional model
    out: dict[str, float] = {}
    if recipe.name in NO_LIKELIHOOD:  # autoencoders without a likelihood: their held-out loss
        out["val_mse" if recipe.name == "ae" else "val_loss"] = float(recipe.loss(variables, x_val, k1))
        return out
    elbo_kw = {k: v for k, v in recipe.hyper.items() if k in ("K", "eps", "beta0", "n_fixed_point")}
    out["val_elbo"] = float(jnp.mean(evaluate.elbo(recipe.model, variables, x_val, k1, **elbo_kw)))
    ll = evaluate.marginal_loglikelihood(recipe.model, variables, x_val, k2, n_importance)
    out["val_loglikelihood"] = float(jnp.mean(ll))
    return out


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: not a run configuration (expected a JSON object)")
    missing = [k for k in ("model", "data", "decoder", "latent_dim", "hidden", "seed") if k not in cfg]
    if missing:
        raise UserError(f"{path}: not a run configuration (missing {', '.join(missing)})")
    return cfg


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def resolve_config(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The output folder and the run configuration from the command line.

    Options not given take :data:`RUN_DEFAULTS`. When resuming (``--resume
    DIR``, ``--resume --out DIR`` or a bare ``--resume`` for ``runs/MODEL``)
    ``DIR/config.json`` supplies them instead, and an option given with another
    value than the run's is a ``UserError`` naming it; ``--epochs`` may change
    (the new total). Resuming a folder without ``config.json`` is a
    ``UserError`` (it never starts a new run silently).
    """
    given = {k: getattr(args, k) for k in RUN_DEFAULTS if getattr(args, k, None) is not None}
    resume_dir = args.resume if isinstance(args.resume, str) else None
    if resume_dir is not None and args.out is not None and os.path.abspath(args.out) != os.path.abspath(resume_dir):
        raise UserError(f"--resume {resume_dir} and --out {args.out} name different folders")
    cfg = {**RUN_DEFAULTS, **given}
    out = resume_dir or args.out or os.path.join("runs", cfg["model"])
    stored_epochs = None
    if args.resume:
        path = os.path.join(out, "config.json")
        if os.path.exists(path):
            stored = _read_config(path)
            diffs = [
                f"--{k.replace('_', '-')} {given[k]!r} (the run has {stored[k]!r})"
                for k in given
                if k in stored and not _same(given[k], stored[k])
            ]
            if diffs:
                raise UserError(f"cannot resume {out}: " + "; ".join(diffs))
            cfg.update({k: stored[k] for k in RUN_DEFAULTS if k in stored})
            if "code_restarts" not in stored and cfg["model"] in ("vqvae", "hrqvae"):
                cfg["code_restarts"] = False  # a run made before the option: its VQ model had no restarts
            stored_epochs = stored.get("epochs")
        else:  # `--resume DIR`, `--resume --out DIR` and a bare `--resume` alike
            raise UserError(f"--resume {out}: not a training run (no config.json); to start one, leave out --resume")
    if args.epochs is not None:
        epochs = args.epochs
    elif stored_epochs is not None:
        epochs = stored_epochs
    else:
        epochs = DEFAULT_EPOCHS[cfg["model"]]
    if not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    if cfg["latent_dim"] < 1:
        raise UserError(f"--latent-dim must be >= 1, got {cfg['latent_dim']}")
    if cfg["batch_size"] < 1:
        raise UserError(f"--batch-size must be >= 1, got {cfg['batch_size']}")
    if not cfg["lr"] > 0:
        raise UserError(f"--lr must be > 0, got {cfg['lr']}")
    if not cfg["hidden"] or min(cfg["hidden"]) < 1:
        raise UserError(f"--hidden sizes must be >= 1, got {cfg['hidden']}")
    cfg = {
        "model": cfg["model"],
        "data": cfg["data"],
        "decoder": cfg["decoder"],
        "latent_dim": cfg["latent_dim"],
        "epochs": epochs,
        "batch_size": cfg["batch_size"],
        "lr": cfg["lr"],
        "hidden": list(cfg["hidden"]),
        "seed": cfg["seed"],
        "arch": cfg["arch"],
        "image_shape": None if cfg["image_shape"] is None else list(cfg["image_shape"]),
        "condition_on_labels": bool(cfg["condition_on_labels"]),
        "code_restarts": bool(cfg["code_restarts"]),
        "curvature": None if cfg["curvature"] is None else float(cfg["curvature"]),
        "metric_update_every": cfg["metric_update_every"],
    }
    _check_model_options(cfg)
    return out, cfg


def _check_support(recipe, cfg: dict[str, Any], *datasets) -> None:
    """``ValueError`` (one line) when the data lie outside the support of the recipe's decoder."""
    from .decoders import check_support

    decoder = getattr(recipe.model, "decoder", None)
    if decoder is None:
        return
    for ds in datasets:
        check_support(decoder, ds.x, name=f"--data {cfg['data']}")  # a one-line ValueError: status 2


def _collapse_warning(recipe, cfg: dict[str, Any], history: dict[str, Any]) -> None:
    """Warn (one line) when the mean KL per latent dimension on the validation data is below ``COLLAPSE_KL``."""
    kl = history.get("val", {}).get("kl") or history.get("train", {}).get("kl")
    if recipe.name not in KL_MODELS or not kl:
        return
    per_dim = kl[-1] / cfg["latent_dim"]
    if per_dim < COLLAPSE_KL:
        beta = recipe.hyper.get("beta")
        hint = f"lower beta (now {beta:g}), " if beta is not None and beta > 1 else ""
        warnings.warn(
            f"posterior collapse: the mean KL per latent dimension on the validation data is {per_dim:.3g} nats "
            f"(below {COLLAPSE_KL:g}), so the decoder ignores the latent code and every sample looks alike; "
            f"{hint}train longer or change --lr",
            RuntimeWarning,
            stacklevel=2,
        )


def _fit_run(tr, recipe, cfg, args, out, train_ds, val_ds, fit_key):
    """``fit`` for the CLI; on Ctrl-C or a non-finite loss writes history.json and an unfinished results.json."""
    import optax

    epochs = cfg["epochs"]
    try:
        return tr.fit(
            recipe.model,
            recipe.loss,
            train_ds,
            key=fit_key,
            optimizer=optax.adam(cfg["lr"]),
            epochs=epochs,
            batch_size=min(cfg["batch_size"], len(train_ds)),
            val_data=val_ds,
            progress=not args.no_progress,
            checkpoint_dir=os.path.join(out, "checkpoints"),
            resume=bool(args.resume),
            on_nonfinite=args.on_nonfinite,
            metric_update_every=cfg.get("metric_update_every", 1),
            callbacks=[tr.TensorBoard(args.tensorboard)] if getattr(args, "tensorboard", None) else (),
        )
    except (tr.TrainingInterrupted, tr.NonFiniteError) as err:
        tr.save_history(err.history, os.path.join(out, "history.json"))
        done = len(err.history.get("epoch", []))
        results = {"model": cfg["model"], "data": cfg["data"], "epochs": epochs, "epochs_done": done,
                   "finished": False, "checkpoint": err.checkpoint}
        if isinstance(err, tr.NonFiniteError):
            _write_json(os.path.join(out, "results.json"), {**results, "error": " ".join(str(err).split())})
            raise
        _write_json(os.path.join(out, "results.json"), {**results, "interrupted": True})
        if err.checkpoint is None:  # no epoch finished: nothing to resume from
            raise Interrupted(f"stopped before the first epoch ended (no checkpoint); start the run again "
                              "without --resume") from None
        raise Interrupted(
            f"stopped after epoch {done} of {epochs} (checkpoint {os.path.basename(err.checkpoint)}); "
            f"continue with: aet train --resume {out}"
        ) from None


def _check_resumable(ckpt, out: str) -> None:
    """``UserError`` unless ``out/checkpoints`` holds a checkpoint that reads back intact."""
    paths = ckpt.list_checkpoints(os.path.join(out, "checkpoints"))
    if not paths:
        raise UserError(f"--resume {out}: no checkpoint to resume from (no epoch finished); start it again "
                        "without --resume")
    for path in reversed(paths):
        try:
            ckpt.read_raw(path)
            return
        except (OSError, ValueError):
            continue
    raise UserError(f"--resume {out}: none of its {len(paths)} checkpoint(s) reads back intact (truncated or "
                    "corrupt); start it again without --resume")


def train(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from . import checkpoint as ckpt
    from . import train as tr
    from .run_plots import run_plots

    out, cfg = resolve_config(args)
    epochs = cfg["epochs"]
    if args.resume:
        _check_resumable(ckpt, out)
    train_ds, val_ds = _load_data(cfg)
    recipe = _recipe(cfg, train_ds)
    _check_support(recipe, cfg, train_ds, val_ds)
    cfg["hyper"] = recipe.hyper
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), cfg)
    key = jax.random.key(cfg["seed"])
    fit_key, eval_key, plot_key = jax.random.split(key, 3)
    t0 = time.perf_counter()
    variables, history = _fit_run(tr, recipe, cfg, args, out, train_ds, val_ds, fit_key)
    seconds = time.perf_counter() - t0
    tr.save_history(history, os.path.join(out, "history.json"))
    _collapse_warning(recipe, cfg, history)
    try:
        results = {"model": cfg["model"], "data": cfg["data"], "epochs": epochs, "train_seconds": seconds}
        results.update(_evaluate(recipe, variables, _inputs(recipe, val_ds), eval_key, 256))
        results["finished"] = True
        plots = [] if args.no_plots else run_plots(recipe, variables, train_ds, val_ds, history, out, plot_key)
    except KeyboardInterrupt:  # training is done and checkpointed; only the report was cut short
        raise Interrupted(f"stopped after training, before results.json; redo the report with: "
                          f"aet train --resume {out}") from None
    results["plots"] = [os.path.basename(p) for p in plots]
    _write_json(os.path.join(out, "results.json"), results)
    print(json.dumps({k: v for k, v in results.items() if k != "plots"}))
    print(f"wrote {out}/: config.json history.json results.json checkpoints/ " + " ".join(results["plots"]))
    return results


def _unfinished(run_dir: str, res: dict[str, float]) -> Optional[str]:
    """Why the numbers of ``run_dir`` are not the result of a finished run, or ``None``."""
    import math

    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return "the run never finished (no results.json)"
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"results.json is unreadable ({err})"
    if isinstance(results, dict) and results.get("finished") is False:
        why = results.get("error") or "it was interrupted"
        return f"the run did not finish after {results.get('epochs_done', '?')} of {results.get('epochs', '?')} " \
               f"epochs ({why})"
    try:
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
        values = [v for split in ("train", "val") for seq in history.get(split, {}).values() for v in seq]
    except (OSError, ValueError, AttributeError, TypeError):
        values = []
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return "its history.json holds non-finite values (the run diverged)"
    bad = [k for k, v in res.items() if not math.isfinite(v)]
    if bad:
        return f"the evaluated {', '.join(bad)} are not finite"
    return None


def evaluate_run(args: argparse.Namespace) -> dict[str, float]:
    """``aet evaluate DIR``; a run that did not finish gets an ``UnfinishedRunWarning`` (exit status 1)."""
    import jax

    from . import train as tr

    path = os.path.join(args.dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{args.dir}: not a training run (no config.json)")
    if args.n_importance < 1:
        raise UserError(f"--n-importance must be >= 1, got {args.n_importance}")
    cfg = _read_config(path)
    train_ds, val_ds = _load_data(cfg)
    recipe = _recipe(cfg, train_ds)
    _check_support(recipe, cfg, train_ds, val_ds)
    variables = tr.load_variables(recipe.model, os.path.join(args.dir, "checkpoints"), _inputs(recipe, train_ds, 1))
    res = _evaluate(recipe, variables, _inputs(recipe, val_ds), jax.random.key(args.seed), args.n_importance)
    print(json.dumps(res))
    why = _unfinished(args.dir, res)
    if why is not None:
        warnings.warn(f"{args.dir}: {why}; the numbers above are its newest checkpoint's, not a finished "
                      "run's result", UnfinishedRunWarning, stacklevel=2)
    return res


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report_warnings(command: str, caught: list) -> int:
    """Print each distinct warning on one line; 1 if one says the evaluated run did not finish, else 0."""
    seen = set()
    status = 0
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning)
    for w in caught:
        if issubclass(w.category, quiet):
            continue
        if issubclass(w.category, UnfinishedRunWarning):
            status = 1
        text = _one_line(str(w.message))
        if text not in seen:
            seen.add(text)
            print(f"aet {command}: warning: {text}", file=sys.stderr)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (see the module docstring: 0, 1, 2 or 130)."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            if args.command == "train":
                train(args)
            else:
                evaluate_run(args)
        except (UserError, ValueError, TypeError, OSError, FloatingPointError) as err:
            # user errors, unreadable files and NonFiniteError: one line, no traceback
            print(f"aet {args.command}: error: {_one_line(str(err)) or type(err).__name__}", file=sys.stderr)
            return 2
        except Interrupted as err:
            print(f"aet {args.command}: interrupted: {_one_line(str(err))}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # outside training (loading data, building the model, evaluating)
            print(f"aet {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
            return 130
    return _report_warnings(args.command, caught)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
