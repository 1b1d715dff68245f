"""The ``aet`` command line: ``aet train`` and ``aet evaluate``.

    aet train --model vae --out runs/vae
    aet evaluate runs/vae

``train`` writes ``config.json``, ``history.json``, ``results.json``, a
``checkpoints/`` folder and PNG plots under ``--out``. ``aet train --resume
DIR`` continues the run in DIR (its ``config.json``; ``--epochs`` may raise the
total) from its newest intact checkpoint; ``aet train --resume --out DIR`` is
the same. Errors in the user's input (bad options, unreadable or malformed
data, a corrupt run folder, a non-finite loss) are printed as one line on
stderr and the command exits with status 2; warnings are printed one line each
after a successful run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Optional, Sequence

DEFAULT_EPOCHS = {"ae": 30, "vae": 30, "betavae": 30, "mmdvae": 30, "infomaxvae": 30, "hvae": 20, "rhvae": 10}
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
}


class UserError(Exception):
    """A problem with the command line or the data, reported in one line."""


def _parser() -> argparse.ArgumentParser:
    from .builders import DECODERS, MODELS

    p = argparse.ArgumentParser(prog="aet", description="Train and evaluate autoencoders with aetk_jax.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model and write checkpoints, history and plots")
    # None = not given: the default (RUN_DEFAULTS) or, when resuming, the run's config.json
    t.add_argument("--model", choices=MODELS, default=None, help="default vae")
    t.add_argument("--data", default=None, help="digits (default), or a .npz/.npy/.csv/MNIST-IDX file")
    t.add_argument("--decoder", choices=DECODERS, default=None, help="default bernoulli")
    t.add_argument("--latent-dim", type=int, default=None, help="default 2")
    t.add_argument("--epochs", type=int, default=None, help="total epochs (default: a few seconds' worth for the model)")
    t.add_argument("--batch-size", type=int, default=None, help="default 64")
    t.add_argument("--lr", type=float, default=None, help="default 1e-3")
    t.add_argument("--hidden", type=int, nargs="+", default=None, help="default 128 128")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
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
    e = sub.add_parser("evaluate", help="print held-out ELBO and log-likelihood of a trained run")
    e.add_argument("dir")
    e.add_argument("--n-importance", type=int, default=256)
    e.add_argument("--seed", type=int, default=0)
    return p


def _recipe(cfg: dict[str, Any], data_shape: Sequence[int]):
    from .builders import build

    return build(
        cfg["model"], data_shape, latent_dim=cfg["latent_dim"], decoder=cfg["decoder"], hidden=tuple(cfg["hidden"])
    )


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
    x_val = jnp.asarray(x_val)
    out: dict[str, float] = {}
    if recipe.name == "ae":
        out["val_mse"] = float(recipe.loss(variables, x_val, k1))
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
    DIR`` or ``--resume --out DIR``) an existing ``DIR/config.json`` supplies
    them instead, and an option given with another value than the run's is a
    ``UserError`` naming it; ``--epochs`` may change (the new total).
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
            stored_epochs = stored.get("epochs")
        elif resume_dir is not None:
            raise UserError(f"--resume {resume_dir}: not a training run (no config.json)")
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
    }
    return out, cfg


def train(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import optax

    from . import train as tr
    from .run_plots import run_plots

    out, cfg = resolve_config(args)
    epochs = cfg["epochs"]
    train_ds, val_ds = _load_data(cfg)
    recipe = _recipe(cfg, train_ds.x.shape[1:])
    cfg["hyper"] = recipe.hyper
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), cfg)
    key = jax.random.key(cfg["seed"])
    fit_key, eval_key, plot_key = jax.random.split(key, 3)
    t0 = time.perf_counter()
    variables, history = tr.fit(
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
    )
    seconds = time.perf_counter() - t0
    tr.save_history(history, os.path.join(out, "history.json"))
    results = {"model": cfg["model"], "data": cfg["data"], "epochs": epochs, "train_seconds": seconds}
    results.update(_evaluate(recipe, variables, val_ds.x, eval_key, 256))
    plots = [] if args.no_plots else run_plots(recipe, variables, train_ds, val_ds, history, out, plot_key)
    results["plots"] = [os.path.basename(p) for p in plots]
    _write_json(os.path.join(out, "results.json"), results)
    print(json.dumps({k: v for k, v in results.items() if k != "plots"}))
    print(f"wrote {out}/: config.json history.json results.json checkpoints/ " + " ".join(results["plots"]))
    return results


def evaluate_run(args: argparse.Namespace) -> dict[str, float]:
    import jax

    from . import train as tr

    path = os.path.join(args.dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{args.dir}: not a training run (no config.json)")
    if args.n_importance < 1:
        raise UserError(f"--n-importance must be >= 1, got {args.n_importance}")
    cfg = _read_config(path)
    train_ds, val_ds = _load_data(cfg)
    recipe = _recipe(cfg, train_ds.x.shape[1:])
    variables = tr.load_variables(recipe.model, os.path.join(args.dir, "checkpoints"), train_ds.x[:1])
    res = _evaluate(recipe, variables, val_ds.x, jax.random.key(args.seed), args.n_importance)
    print(json.dumps(res))
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after a one-line error on stderr)."""
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
            text = " ".join(str(err).split()) or type(err).__name__
            print(f"aet {args.command}: error: {text}", file=sys.stderr)
            return 2
    seen = set()
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning)
    for w in caught:  # after a successful run: each distinct warning on one line
        if issubclass(w.category, quiet):
            continue
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            print(f"aet {args.command}: warning: {text}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
