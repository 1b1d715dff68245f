"""pythae side: the same MLP architecture as ``jax_side``, trained with pythae's models.

Networks (``torch.nn``), for a :class:`~benchmarks.config.Setting` ``s``:

* encoder: Linear(n_in, h₁)–ReLU–…–Linear(·, h_L)–ReLU, then two heads
  Linear(h_L, d): ``embedding`` (μ) and ``log_covariance`` (pythae's log σ²);
* decoder: the reversed widths, each followed by ReLU, then Linear(·, n_in)
  giving Bernoulli logits. pythae's VAE, β-VAE, InfoVAE and RHVAE score
  ``F.binary_cross_entropy`` on probabilities, so their decoder ends with a
  sigmoid; pythae's HVAE scores ``Bernoulli(logits=…)``, so its decoder returns
  the logits. Either way the likelihood is the same Bernoulli.
* RHVAE metric: the encoder's body widths, then a diagonal head (exponentiated)
  and a strictly-lower-triangular head, L = diag(exp(·)) + tril(·).

A training step is what pythae's ``BaseTrainer`` does per batch:
``loss = model({"data": x}).loss; opt.zero_grad(); loss.backward(); opt.step()``
with ``torch.optim.Adam(lr)``. An epoch is measured two ways: pythae's own
``BaseTrainer.train_step`` (its DataLoader, collation, progress bar and the
``model.update()`` at the end) and a plain loop over a shuffled tensor with the
same step and ``model.update()`` (the fastest a user could drive pythae).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as tnn

from pythae.models import BetaVAE, BetaVAEConfig, HVAE, HVAEConfig, INFOVAE_MMD, INFOVAE_MMD_Config
from pythae.models import RHVAE, RHVAEConfig, VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder, BaseMetric

from .config import Setting, pythae_hyper

_PYTHAE = {
    "vae": (VAE, VAEConfig),
    "betavae": (BetaVAE, BetaVAEConfig),
    "mmdvae": (INFOVAE_MMD, INFOVAE_MMD_Config),
    "hvae": (HVAE, HVAEConfig),
    "rhvae": (RHVAE, RHVAEConfig),
}



def quiet_pythae() -> None:
    """pythae logs set-up chatter at INFO through its own handlers; keep the run's output readable."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)


quiet_pythae()

if os.environ.get("AETK_BENCH_THREADS"):  # set by `benchmarks.run --threads N`
    torch.set_num_threads(int(os.environ["AETK_BENCH_THREADS"]))


def _body(n_in: int, hidden: tuple[int, ...]) -> tnn.Sequential:
    layers: list[tnn.Module] = []
    prev = n_in
    for h in hidden:
        layers += [tnn.Linear(prev, h), tnn.ReLU()]
        prev = h
    return tnn.Sequential(*layers)


class MLPEncoder(BaseEncoder):
    """x ``(B, n_in)`` → ModelOutput(embedding=μ ``(B, d)``, log_covariance=log σ² ``(B, d)``)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], latent_dim: int):
        BaseEncoder.__init__(self)
        self.body = _body(n_in, hidden)
        self.mu = tnn.Linear(hidden[-1], latent_dim)
        self.log_var = tnn.Linear(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.body(x.reshape(x.shape[0], -1))
        return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))


class MLPDecoder(BaseDecoder):
    """z ``(B, d)`` → ModelOutput(reconstruction ``(B, n_out)``): probabilities or logits."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], n_out: int, logits: bool):
        BaseDecoder.__init__(self)
        self.body = _body(latent_dim, hidden)
        self.out = tnn.Linear(hidden[-1], n_out)
        self.logits = logits

    def forward(self, z: torch.Tensor) -> ModelOutput:
        a = self.out(self.body(z))
        return ModelOutput(reconstruction=a if self.logits else torch.sigmoid(a))


class MLPMetric(BaseMetric):
    """x → ModelOutput(L ``(B, d, d)``): L = diag(exp(h_diag)) + strictly-lower(h_lower)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], latent_dim: int):
        BaseMetric.__init__(self)
        self.body = _body(n_in, hidden)
        self.diag = tnn.Linear(hidden[-1], latent_dim)
        self.lower = tnn.Linear(hidden[-1], latent_dim * (latent_dim - 1) // 2)
        self.latent_dim = latent_dim
        rows, cols = np.tril_indices(latent_dim, -1)  # row-major strict lower triangle
        self.register_buffer("rows", torch.as_tensor(rows), persistent=False)
        self.register_buffer("cols", torch.as_tensor(cols), persistent=False)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.body(x.reshape(x.shape[0], -1))
        d = self.latent_dim
        L = torch.zeros(x.shape[0], d, d, device=x.device, dtype=h.dtype)
        L[:, self.rows, self.cols] = self.lower(h)
        return ModelOutput(L=L + torch.diag_embed(self.diag(h).exp()))


def build(s: Setting, *, seed: int = 0, device: str = "cpu") -> tuple[Any, torch.optim.Optimizer]:
    """The pythae model for ``s`` (on ``device``) and its Adam optimiser."""
    torch.manual_seed(seed)
    cls, cfg_cls = _PYTHAE[s.model]
    cfg = cfg_cls(input_dim=(s.input_dim,), latent_dim=s.latent_dim, reconstruction_loss="bce", **pythae_hyper(s))
    enc = MLPEncoder(s.input_dim, s.hidden, s.latent_dim)
    dec = MLPDecoder(s.latent_dim, s.hidden[::-1], s.input_dim, logits=(s.model == "hvae"))
    with warnings_silenced():
        if s.model == "rhvae":
            model = cls(cfg, encoder=enc, decoder=dec, metric=MLPMetric(s.input_dim, s.hidden, s.latent_dim))
        else:
            model = cls(cfg, encoder=enc, decoder=dec)
    model = model.to(device)
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=s.learning_rate)


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


class TorchRunner:
    """Drives one pythae model: ``step()`` runs one synchronous training step."""

    lib = "pythae"

    def __init__(self, s: Setting, x: np.ndarray, *, device: str = "cpu", seed: int = 0, n_batches: int = 16):
        self.s, self.device = s, device
        self.model, self.opt = build(s, seed=seed, device=device)
        self.x_all = torch.as_tensor(x, device=device)
        n = min(n_batches, max(1, len(x) // s.batch_size))
        self.batches = [self.x_all[i * s.batch_size : (i + 1) * s.batch_size] for i in range(n)]
        if len(self.batches[0]) < s.batch_size:
            raise ValueError(f"need at least {s.batch_size} examples, got {len(x)}")
        self.i = 0
        self.last_loss: Optional[float] = None

    def sync(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()

    def _one(self, xb: torch.Tensor) -> torch.Tensor:
        out = self.model({"data": xb})
        self.opt.zero_grad()
        out.loss.backward()
        self.opt.step()
        return out.loss

    def step(self) -> None:
        loss = self._one(self.batches[self.i % len(self.batches)])
        self.i += 1
        self.sync()
        self._loss = loss

    def loss_value(self) -> float:
        return float(self._loss.detach())

    def info(self) -> dict[str, Any]:
        return {
            "n_params": n_params(self.model),
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
        }

    def manual_epoch(self, x_epoch: np.ndarray, seed: int) -> tuple[float, float]:
        """(wall, CPU) seconds for one epoch of the plain loop (shuffle, step per batch, ``model.update()``)."""
        xt = torch.as_tensor(x_epoch, device=self.device)
        g = torch.Generator(device="cpu").manual_seed(seed)
        bs = self.s.batch_size
        nb = len(xt) // bs
        self.sync()
        c0, t0 = time.process_time(), time.perf_counter()
        perm = torch.randperm(len(xt), generator=g)[: nb * bs].to(self.device)
        for b in range(nb):
            self._one(xt[perm[b * bs : (b + 1) * bs]])
        self.model.update()
        self.sync()
        return time.perf_counter() - t0, time.process_time() - c0

    def trainer(self, x_epoch: np.ndarray, workdir: str) -> Any:
        """pythae's ``BaseTrainer`` on ``x_epoch`` (no evaluation set), prepared for ``train_step``."""
        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig

        quiet_pythae()

        xt = torch.as_tensor(x_epoch)
        ds = BaseDataset(xt, torch.zeros(len(xt)))
        cfg = BaseTrainerConfig(
            output_dir=workdir,
            per_device_train_batch_size=self.s.batch_size,
            learning_rate=self.s.learning_rate,
            num_epochs=1,
            no_cuda=(self.device == "cpu"),
        )
        with warnings_silenced(), contextlib.redirect_stdout(io.StringIO()):
            tr = BaseTrainer(self.model, train_dataset=ds, training_config=cfg)
            tr.prepare_training()
        return tr

    def trainer_epoch(self, tr: Any, epoch: int) -> tuple[float, float]:
        """(wall, CPU) seconds for pythae's ``BaseTrainer.train_step(epoch)`` (its progress bar goes to a buffer)."""
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            self.sync()
            c0, t0 = time.process_time(), time.perf_counter()
            tr.train_step(epoch)
            self.sync()
            return time.perf_counter() - t0, time.process_time() - c0


def tempdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="aetk-bench-pythae-")


def versions() -> dict[str, str]:
    import pythae

    return {"pythae": getattr(pythae, "__version__", _dist_version("pythae")), "torch": torch.__version__}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:  # noqa: BLE001
        return "unknown"


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return torch.cuda.get_device_name(0)
