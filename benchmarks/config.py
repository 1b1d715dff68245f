"""Library-neutral benchmark configurations and the quick/full suites.

A :class:`Setting` fixes everything both libraries must agree on: the data set,
the MLP widths, the latent dimension, the batch size, the optimiser and each
model's hyper-parameters. ``jax_side`` and ``torch_side`` translate one
``Setting`` into an aetk_jax model and a pythae model with the same
architecture; the translation of hyper-parameters whose conventions differ is
written out in :func:`pythae_hyper` and :func:`aetk_hyper`.

No JAX or torch import here, so the harness can be configured (and tested)
without either back end.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

MODELS: tuple[str, ...] = ("vae", "betavae", "mmdvae", "hvae", "rhvae")
DATASETS: tuple[str, ...] = ("digits", "digits-b64", "mnist-synthetic")

# The input dimension and default widths of each data set. ``digits-b64`` is the bundled digits
# in the setting of issue #17's measurements: one hidden layer of 128, batch 64, 3 fixed-point
# iterations (its goals are epoch ratios in this setting).
INPUT_DIM = {"digits": 64, "digits-b64": 64, "mnist-synthetic": 784}
HIDDEN = {"digits": (128, 128), "digits-b64": (128,), "mnist-synthetic": (512, 256)}
SETTING_CHANGES: dict[str, dict[str, Any]] = {"digits-b64": {"batch_size": 64, "n_fixed_point": 3}}


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration (both libraries are built from it).

    ``hidden``: widths of the encoder body (the decoder body uses them
    reversed; each hidden layer is followed by a ReLU). The encoder has two
    linear heads (mean and log-scale), the decoder one linear head of Bernoulli
    logits. ``n_centroids`` is aetk_jax's RHVAE centroid count; pythae's RHVAE
    uses the current batch as its centroids during training, so the matched
    setting is ``n_centroids == batch_size`` (see :func:`rhvae_centroids`).
    """

    model: str = "vae"
    dataset: str = "mnist-synthetic"
    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    # β-VAE
    beta: float = 4.0
    # InfoVAE (MMD): loss = −log p + (1 − α) KL + (λ + α − 1) MMD²
    mmd_lam: float = 2.0
    mmd_alpha: float = 0.0
    kernel_bandwidth: float = 1.0
    # HVAE / RHVAE
    K: int = 3
    eps: float = 1e-3
    beta0: float = 0.3
    # RHVAE
    n_fixed_point: int = 5
    T: float = 1.5
    metric_lam: float = 1e-2
    n_centroids: Optional[int] = None  # None: equal to batch_size (pythae's training metric)
    # HVAE / RHVAE: differentiate what pythae differentiates (True: the leapfrog's ∇U (HVAE) or
    # the whole flow (RHVAE, flow_gradient="detached") is a constant to the optimiser); False:
    # aetk_jax's default, the paper's gradient through the leapfrog (timed as a variant)
    matched_gradient: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"`model` must be one of {MODELS}, got {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {DATASETS}, got {self.dataset!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("latent_dim", "batch_size", "K", "n_fixed_point"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("`batch_size` must be >= 2 (the MMD estimator needs two codes)")

    @property
    def input_dim(self) -> int:
        return INPUT_DIM[self.dataset]

    @property
    def centroids(self) -> int:
        return rhvae_centroids(self)

    def replace(self, **changes: Any) -> "Setting":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["input_dim"] = self.input_dim
        if self.model == "rhvae":
            d["n_centroids"] = self.centroids
        return d

    def label(self) -> str:
        return f"{self.model}/{self.dataset}/b{self.batch_size}/d{self.latent_dim}"


def rhvae_centroids(s: Setting) -> int:
    """aetk_jax's RHVAE centroid count for ``s`` (``batch_size`` unless set)."""
    return int(s.batch_size if s.n_centroids is None else s.n_centroids)


def default_setting(model: str, dataset: str, **changes: Any) -> Setting:
    """The reference setting of ``model`` on ``dataset`` (widths from :data:`HIDDEN`)."""
    return Setting(**{"model": model, "dataset": dataset, "hidden": HIDDEN[dataset],
                      **SETTING_CHANGES.get(dataset, {}), **changes})


def mmd_kernel_rho(s: Setting) -> float:
    """aetk_jax's Gaussian-kernel ρ matching pythae's RBF bandwidth.

    pythae: k = exp(−‖a − b‖² / C), C = 2·d·bandwidth²; aetk_jax: k = exp(−‖a − b‖² / (ρ²·d)).
    Equal when ρ = √2 · bandwidth.
    """
    return math.sqrt(2.0) * s.kernel_bandwidth


def aetk_hyper(s: Setting, **override: Any) -> dict[str, Any]:
    """The keyword arguments of aetk_jax's loss for ``s.model`` (the kernel is bound in ``jax_side``)."""
    if s.model == "vae":
        hp: dict[str, Any] = {"beta": 1.0}
    elif s.model == "betavae":
        hp = {"beta": s.beta}
    elif s.model == "mmdvae":
        # pythae draws as many prior samples as there are codes in the batch
        hp = {"lam": s.mmd_lam, "alpha": s.mmd_alpha, "n_latent_samples": s.batch_size, "unbiased": True}
    elif s.model == "hvae":
        hp = {"K": s.K, "eps": s.eps, "beta0": s.beta0}
    else:
        hp = {"K": s.K, "eps": s.eps, "beta0": s.beta0, "n_fixed_point": s.n_fixed_point,
              "flow_gradient": "detached" if s.matched_gradient else "full"}
        if s.n_fixed_point == 1:
            # pythae's explicit position step solves nothing: time it without the convergence check
            # (the default fixed_point_tol = 1e-3 would make its unsolved steps NaN)
            hp["fixed_point_tol"] = 1e30
    hp.update(override)
    return hp


def pythae_hyper(s: Setting) -> dict[str, Any]:
    """The fields of pythae's model config for ``s.model`` (besides input_dim, latent_dim, loss)."""
    if s.model == "vae":
        return {}
    if s.model == "betavae":
        return {"beta": s.beta}
    if s.model == "mmdvae":
        return {"kernel_choice": "rbf", "alpha": s.mmd_alpha, "lbd": s.mmd_lam, "kernel_bandwidth": s.kernel_bandwidth}
    if s.model == "hvae":
        return {"n_lf": s.K, "eps_lf": s.eps, "beta_zero": s.beta0}
    # pythae's RHVAE stores `beta_zero` as given in its `beta_zero_sqrt` and uses it as √β₀
    # (ρ₀ = γ / beta_zero, and in its tempering); its HVAE takes the square root itself. So the
    # RHVAE gets √β₀ for both libraries to start from the same inverse temperature β₀.
    return {"n_lf": s.K, "eps_lf": s.eps, "beta_zero": math.sqrt(s.beta0), "temperature": s.T,
            "regularization": s.metric_lam}


# --------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    """What one run measures and how often.

    ``models`` × ``datasets`` get the head-to-head table (step, compile,
    epoch, memory); ``scaling`` maps an axis name to its grid and
    ``scaling_models`` an axis name to the models measured along it, on the
    MNIST-sized data (K applies to HVAE/RHVAE, centroids to RHVAE only). ``rounds`` × ``steps_per_round``
    timed steps per library, after ``warmup`` untimed ones; the two libraries
    alternate round by round. ``epoch_examples``: training examples per timed
    epoch per data set (rounded down to a multiple of the batch size).
    """

    name: str
    models: tuple[str, ...] = MODELS
    datasets: tuple[str, ...] = DATASETS
    warmup: int = 3
    rounds: int = 3
    steps_per_round: int = 10
    epochs: int = 2
    epoch_examples: dict[str, int] = field(default_factory=dict)
    scaling: dict[str, tuple[int, ...]] = field(default_factory=dict)
    scaling_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scaling_rounds: int = 2
    scaling_steps: int = 5
    scaling_max_step_s: float = 2.0  # skip larger grid points of a curve once one step takes longer
    memory: bool = True
    memory_models: tuple[str, ...] = ()  # empty: every model (on the MNIST-sized data)
    rhvae_fixed_point_variants: tuple[int, ...] = (1,)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scaling"] = {k: list(v) for k, v in self.scaling.items()}
        d["scaling_models"] = {k: list(v) for k, v in self.scaling_models.items()}
        return d

    def scaling_model_list(self) -> tuple[str, ...]:
        """Every model on some scaling axis, in :data:`MODELS` order."""
        return tuple(m for m in MODELS if any(m in ms for ms in self.scaling_models.values()))


def quick_suite() -> Suite:
    """Every model once, a reduced scaling grid, memory for VAE/HVAE/RHVAE (10–15 minutes on a quiet 2-core CPU)."""
    return Suite(
        name="quick",
        warmup=3,
        rounds=3,
        steps_per_round=8,
        epochs=2,
        epoch_examples={"digits": 1438, "digits-b64": 1438, "mnist-synthetic": 4096},
        scaling={
            "batch_size": (32, 512),
            "latent_dim": (2, 16),
            "K": (1, 5),
            "n_centroids": (16, 1024),
        },
        scaling_models={
            "batch_size": ("vae", "rhvae"),
            "latent_dim": ("vae",),
            "K": ("hvae",),
            "n_centroids": ("rhvae",),
        },
        memory_models=("vae", "hvae", "rhvae"),
        scaling_rounds=2,
        scaling_steps=4,
        scaling_max_step_s=1.0,
    )


def full_suite() -> Suite:
    """The whole grid (tens of minutes to hours on a 2-core CPU; minutes on a GPU)."""
    return Suite(
        name="full",
        warmup=5,
        rounds=5,
        steps_per_round=20,
        epochs=3,
        epoch_examples={"digits": 1438, "digits-b64": 1438, "mnist-synthetic": 60000},
        scaling={
            "batch_size": (32, 64, 128, 256, 512, 1024, 2048, 4096),
            "latent_dim": (2, 4, 8, 16, 32, 64),
            "K": (1, 2, 3, 5, 7, 10),
            "n_centroids": (16, 64, 256, 1024, 4096),
        },
        scaling_models={
            "batch_size": ("vae", "hvae", "rhvae"),
            "latent_dim": ("vae", "hvae", "rhvae"),
            "K": ("hvae", "rhvae"),
            "n_centroids": ("rhvae",),
        },
        scaling_rounds=3,
        scaling_steps=10,
        scaling_max_step_s=10.0,
        rhvae_fixed_point_variants=(1, 3),
    )


def tiny_suite() -> Suite:
    """A seconds-long smoke run (used by the harness's own tests and ``--suite tiny``)."""
    return Suite(
        name="tiny",
        models=("vae",),
        datasets=("digits",),
        warmup=1,
        rounds=1,
        steps_per_round=2,
        epochs=1,
        epoch_examples={"digits": 256, "mnist-synthetic": 256},
        scaling={"batch_size": (32, 64)},
        scaling_models={"batch_size": ("vae",)},
        scaling_rounds=1,
        scaling_steps=2,
        memory=False,
        rhvae_fixed_point_variants=(),
    )


SUITES = {"quick": quick_suite, "full": full_suite, "tiny": tiny_suite}


def get_suite(name: str, models: Optional[Sequence[str]] = None) -> Suite:
    """The named suite, optionally restricted to ``models``."""
    if name not in SUITES:
        raise ValueError(f"`suite` must be one of {tuple(SUITES)}, got {name!r}")
    suite = SUITES[name]()
    if models:
        bad = [m for m in models if m not in MODELS]
        if bad:
            raise ValueError(f"unknown model(s) {bad}; choose from {MODELS}")
        suite = dataclasses.replace(
            suite,
            models=tuple(m for m in MODELS if m in models),
            scaling_models={axis: tuple(m for m in ms if m in models) for axis, ms in suite.scaling_models.items()},
        )
    return suite


def scaling_points(suite: Suite, model: str) -> list[tuple[str, int, Setting]]:
    """(axis, value, setting) for each scaling point of ``model`` on the MNIST-sized data."""
    base = default_setting(model, "mnist-synthetic")
    out: list[tuple[str, int, Setting]] = []
    for axis, grid in suite.scaling.items():
        if model not in suite.scaling_models.get(axis, ()):
            continue
        if axis == "K" and model not in ("hvae", "rhvae"):
            continue
        if axis == "n_centroids" and model != "rhvae":
            continue
        for v in grid:
            if axis == "batch_size":
                s = base.replace(batch_size=int(v))
            elif axis == "latent_dim":
                s = base.replace(latent_dim=int(v))
            elif axis == "K":
                s = base.replace(K=int(v))
            elif axis == "n_centroids":
                s = base.replace(n_centroids=int(v))
            else:
                raise ValueError(f"unknown scaling axis {axis!r}")
            out.append((axis, int(v), s))
    return out
