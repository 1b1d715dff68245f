"""Model zoo III on the bundled digits: VQ-VAE reconstructions and codebook usage, a flowed (IAF)
posterior against its Gaussian base, S-VAE codes on the circle and Poincaré-VAE codes in the disc."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import aetk_jax as aet
from aetk_jax import plots

from _common import bernoulli_decoder, epochs, gaussian_encoder, mlp, out_dir

train, val = aet.data.load_digits()
x = jnp.asarray(val.x)
OUT = out_dir()


def fit(model, loss, n_epochs, lr=1e-3):
    variables, _ = aet.train.fit(model, functools.partial(loss, model), train, key=jax.random.key(0),
                                 optimizer=optax.adam(lr), epochs=epochs(n_epochs), batch_size=64, progress=False)
    return variables


# --------------------------------------------------------------------------- VQ-VAE: reconstructions, code usage
vq = aet.VQVAE(aet.Encoder(mlp(), 8), aet.Decoder(mlp(), 64), n_embeddings=64, use_ema=True, restart_after=20)
v_vq = fit(vq, aet.vqvae.loss, 20)
_, m = aet.vqvae.loss(vq, v_vq, x, aux=True)
codes = np.asarray(aet.vqvae.quantise(vq, v_vq, x).codes[:, 0])
x_hat = aet.decoder_mean(vq.decoder, aet.base.decode(vq, v_vq, aet.vqvae.quantise(vq, v_vq, x).z_q))
print(f"vqvae: held-out reconstruction {float(m['reconstruction']):.3f}, codes used {float(m['codes_used']):.1f} "
      f"of 64, perplexity {float(m['perplexity']):.2f}")
idx = plots.first_of_each_class(val.y)
plots.image_grid([np.asarray(x)[idx], np.asarray(x_hat)[idx]], ["held-out digits", "VQ-VAE (one code each)"],
                 os.path.join(OUT, "vq_reconstructions.png"), image_shape=(8, 8), value_range=(0.0, 1.0))
fig = plots.new_figure((6.0, 3.0))
ax = fig.subplots()
counts = np.bincount(codes, minlength=64)
order = np.argsort(-counts)
ax.bar(np.arange(64), counts[order], color="0.35")
ax.set_xlabel("code (by frequency)")
ax.set_ylabel("held-out examples")
ax.set_title(f"VQ-VAE codebook usage: {int((counts > 0).sum())} of 64 codes")
plots.save(fig, os.path.join(OUT, "vq_codebook_usage.png"))

# --------------------------------------------------------------------------- IAF posterior vs its Gaussian base
plain = aet.VAE(gaussian_encoder(2), bernoulli_decoder())
iaf = aet.VAE_IAF(gaussian_encoder(2), bernoulli_decoder(), n_made_blocks=4, made_hidden=(64, 64))
v_plain, v_iaf = fit(plain, aet.vae.loss, 20), fit(iaf, aet.vae_iaf.loss, 20)
for name, model, v in (("vae", plain, v_plain), ("vae_iaf", iaf, v_iaf)):
    elbo = float(aet.evaluate.elbo(model, v, x, jax.random.key(1), n_samples=8).mean())
    ll = float(aet.evaluate.marginal_loglikelihood(model, v, x, jax.random.key(2), 256).mean())
    print(f"{name}: held-out ELBO {elbo:.2f}, log-likelihood (256 samples) {ll:.2f} nats")
one = x[3:4]
draws = aet.flows.flowed_draws(iaf, v_iaf, one, jax.random.key(3), 600)
z0, zk = np.asarray(draws.z0[:, 0]), np.asarray(draws.z[:, 0])
both = np.concatenate([z0, zk])
lo, hi = both.min(0) - 0.5, both.max(0) + 0.5
g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
grid = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], 1), jnp.float32)[:, None, :]  # (G, 1, 2): G draws of one x
log_joint = aet.base.mc_loglikelihood(iaf, v_iaf, one, grid) + aet.base.log_prior(iaf, v_iaf, grid)
fig = plots.new_figure((9.0, 4.2))
for ax, z, title in zip(fig.subplots(1, 2), (z0, zk), ("Gaussian base q₀(z|x)", "after 4 IAF steps q_K(z|x)")):
    ax.contour(g1, g2, np.asarray(log_joint).reshape(g1.shape), levels=12, cmap="Greys")
    ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.4, color="tab:red")
    ax.set_title(title)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
fig.suptitle("draws for one held-out digit over the contours of log p(x|z) + log p(z)")
plots.save(fig, os.path.join(OUT, "flows_posterior.png"))

# --------------------------------------------------------------------------- S-VAE on the circle, P-VAE in the disc
sv = aet.SVAE(aet.svae.VMFEncoder(mlp(), 2), bernoulli_decoder())
pv = aet.PoincareVAE(aet.pvae.PoincareEncoder(mlp(), 2), bernoulli_decoder())
v_sv, v_pv = fit(sv, aet.svae.loss, 20, 3e-3), fit(pv, aet.pvae.loss, 20)
for name, model, v in (("svae", sv, v_sv), ("pvae", pv, v_pv)):
    elbo = float(aet.evaluate.elbo(model, v, x, jax.random.key(1), n_samples=8).mean())
    print(f"{name}: held-out ELBO {elbo:.2f} nats")
enc = aet.base.encode(sv, v_sv, x)
# the Euclidean mean A(κ)μ of each vMF posterior: on the circle's direction μ, nearer the centre when κ is small
mean = np.asarray(enc.mu * aet.svae.mean_resultant_length(enc.kappa, 2)[:, None])
zp = np.asarray(aet.encoder_mean(pv.encoder, aet.base.encode(pv, v_pv, x)))
fig = plots.new_figure((10.0, 4.6))
axes = fig.subplots(1, 2)
circle = np.linspace(0, 2 * np.pi, 200)
for ax, z, title in ((axes[0], mean, "S-VAE: E[z] = A(κ)μ on S¹"), (axes[1], zp, "P-VAE: posterior centres in the disc")):
    ax.plot(np.cos(circle), np.sin(circle), color="0.6", lw=1)
    plots.scatter_classes(ax, z, val.y)
    ax.set_aspect("equal")
    ax.set_title(title)
axes[0].get_legend().remove()  # one legend (right of the disc) for both panels
plots.save(fig, os.path.join(OUT, "manifold_latent.png"))
