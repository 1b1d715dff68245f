"""The importance-weighted family on the bundled digits: IWAE (standard and DReG gradients),
MIWAE, CIWAE and PIWAE against the VAE, scored by held-out bounds; how IWAE_K tightens with K."""
import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import aetk_jax as aet
from aetk_jax import ciwae, iwae, miwae, piwae

from _common import bernoulli_decoder, epochs, gaussian_encoder, out_dir

train, val = aet.data.load_digits()
x = jnp.asarray(val.x)
runs = {
    "VAE": (aet.VAE, functools.partial(aet.vae.loss)),
    "IWAE (K=5)": (iwae.IWAE, functools.partial(iwae.loss, n_samples=5)),
    "IWAE-DReG (K=5)": (iwae.IWAE, functools.partial(iwae.loss, n_samples=5, gradient="dreg")),
    "MIWAE (M=3, K=5)": (miwae.MIWAE, functools.partial(miwae.loss, n_samples=5, n_groups=3)),
    "CIWAE (β=0.5)": (ciwae.CIWAE, functools.partial(ciwae.loss, n_samples=5, beta=0.5)),
    "PIWAE (M=3, K=5)": (piwae.PIWAE, functools.partial(piwae.loss, n_samples=5, n_groups=3)),
}
scores, trained = {}, {}
for name, (cls, loss) in runs.items():
    model = cls(gaussian_encoder(), bernoulli_decoder())
    variables, _ = aet.train.fit(
        model, functools.partial(loss, model), train, key=jax.random.key(0), optimizer=optax.adam(1e-3),
        epochs=epochs(30), batch_size=64, progress=False,
    )
    elbo = float(aet.vae.elbo(model, variables, x, jax.random.key(1)).mean())
    ll = float(aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(2), 512).mean())
    scores[name], trained[name] = (elbo, ll), (model, variables)
    print(f"{name}: held-out ELBO {elbo:.2f}, log-likelihood (512 samples) {ll:.2f} nats")

fig, ax = plt.subplots(figsize=(7, 3.2))
names = list(scores)
pos = np.arange(len(names))
ax.plot([scores[n][0] for n in names], pos, "o", label="ELBO")
ax.plot([scores[n][1] for n in names], pos, "s", label="log p(x), 512 importance samples")
ax.set_yticks(pos, names)
ax.grid(axis="x", alpha=0.3)
ax.set_xlabel("held-out nats per digit (right is better)")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
fig.savefig(os.path.join(out_dir(), "iwae_scores.png"), dpi=120, bbox_inches="tight")
plt.close(fig)

# IWAE_K of the trained IWAE for growing K: a tighter bound on the same model
model, variables = trained["IWAE (K=5)"]
ks = [1, 5, 50, 1000]
bounds = [float(iwae.elbo(model, variables, x, jax.random.key(3), n_samples=k).mean()) for k in ks]
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.semilogx(ks, bounds, "o-")
ax.set_xlabel("K (importance samples)")
ax.set_ylabel("held-out IWAE_K (nats)")
ax.set_title("IWAE (K=5 in training): the bound tightens with K")
fig.savefig(os.path.join(out_dir(), "iwae_bound_vs_k.png"), dpi=120, bbox_inches="tight")
plt.close(fig)
print("IWAE_K for K = " + ", ".join(f"{k}: {b:.2f}" for k, b in zip(ks, bounds)))
