"""InfoVAE (MMD) and InfoMaxVAE on the bundled digits."""
import functools
import os

import jax
import jax.numpy as jnp

import aetk_jax as aet
from aetk_jax import plots

from _common import bernoulli_decoder, epochs, gaussian_encoder, mlp, out_dir

train, val = aet.data.load_digits()
x = jnp.asarray(val.x)

mmd = aet.MMDVAE(gaussian_encoder(), bernoulli_decoder())
mmd_loss = functools.partial(aet.mmdvae.loss, mmd, lam=10.0, alpha=0.0)  # MMD weight λ + α − 1 = 9
v_mmd, _ = aet.train.fit(mmd, mmd_loss, train, key=jax.random.key(0), epochs=epochs(30), batch_size=64, progress=False)

imv = aet.InfoMaxVAE(gaussian_encoder(), bernoulli_decoder(), aet.infomaxvae.MutualInfoNetwork(mlp((128, 128))))
imv_loss = functools.partial(aet.infomaxvae.loss, imv, alpha=1.0, beta=1.0)
v_imv, hist = aet.train.fit(imv, imv_loss, train, key=jax.random.key(0), epochs=epochs(30), batch_size=64, progress=False)

for name, model, v in (("infovae", mmd, v_mmd), ("infomaxvae", imv, v_imv)):
    elbo = float(aet.evaluate.elbo(model, v, x, jax.random.key(1)).mean())
    z = aet.encoder_mean(model.encoder, aet.base.encode(model, v, x))
    plots.latent_codes(z, val.y, os.path.join(out_dir(), f"{name}_latent.png"), title=name)
    print(f"{name}: held-out ELBO {elbo:.2f} nats")
print("InfoMax critic's mutual-information estimate (last epoch):", round(hist["train"]["mi"][-1], 3))
