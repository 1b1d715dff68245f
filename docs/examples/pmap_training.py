"""Data-parallel training with jax.pmap over every local device (one device works too).

``aet.parallel.pmap_step`` is ``jax.pmap`` of ``aet.train.make_step(..., axis_name="batch")``:
gradients and metrics are averaged over the devices with ``lax.pmean``. The same step runs
without ``pmap`` through ``aet.parallel.shard_map_step`` (``jit`` of ``jax.shard_map`` on a
mesh, one unreplicated state, the global batch); the last lines check that both give the
same update for the same key.
"""
import functools

import jax
import numpy as np
import optax

import aetk_jax as aet

from _common import bernoulli_decoder, epochs, gaussian_encoder

train, _ = aet.data.load_digits()
model = aet.VAE(gaussian_encoder(), bernoulli_decoder())
loss = functools.partial(aet.vae.loss, model)
optimizer = optax.adam(1e-3)
n_dev = jax.local_device_count()

variables = model.init(jax.random.key(0), train.x[:1])
states = aet.parallel.pmap_replicate(aet.train.init_state(variables, optimizer))
step = aet.parallel.pmap_step(loss, optimizer)

batch = 64 * n_dev
key = jax.random.key(1)
for epoch in range(epochs(5)):
    order = np.random.default_rng(epoch).permutation(len(train.x))
    for i in range(len(order) // batch):
        xb = aet.parallel.split_for_pmap(train.x[order[i * batch:(i + 1) * batch]])
        states, metrics = step(states, xb, jax.random.fold_in(key, epoch * 1000 + i))
print(f"{n_dev} device(s): last loss {float(metrics['loss'][0]):.2f}")

# one more step both ways: pmap on (n_dev, 64, ...) and shard_map on the global (64 n_dev, ...) batch
xb, k = train.x[:batch], jax.random.key(2)
by_pmap, _ = step(states, aet.parallel.split_for_pmap(xb), k)
mesh = aet.parallel.data_mesh(jax.local_devices())
by_shard_map, _ = aet.parallel.shard_map_step(loss, optimizer, mesh)(aet.parallel.unreplicate(states), xb, k)
gap = max(float(np.max(np.abs(np.asarray(a[0]) - np.asarray(b))))
          for a, b in zip(jax.tree_util.tree_leaves(by_pmap.params), jax.tree_util.tree_leaves(by_shard_map.params)))
print(f"shard_map_step vs pmap_step, same key: max |parameter difference| {gap:.3e}")
