"""k-means and k-medoids centroid selection (aet.utils), against NumPy references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet

TRUE_CENTRES = np.array([[-6.0, -6.0], [-6.0, 6.0], [6.0, -6.0], [6.0, 6.0], [0.0, 0.0]])


def _clusters(rng, n_per=40, sd=0.4):
    """Five well-separated Gaussian clusters in 2-D (centres ≥ 8.4 apart, sd 0.4)."""
    labels = np.repeat(np.arange(len(TRUE_CENTRES)), n_per)
    x = TRUE_CENTRES[labels] + sd * rng.standard_normal((labels.size, 2))
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


def _match(found, reference):
    """Index of the nearest reference row for each found row."""
    d = np.linalg.norm(found[:, None, :] - reference[None, :, :], axis=-1)
    return np.argmin(d, axis=1)


def test_kmeans_recovers_cluster_means(rng):
    x, labels = _clusters(rng)
    centres = np.asarray(aet.utils.centroids_kmeans(jnp.asarray(x), 5, jax.random.key(0)))
    assert centres.shape == (5, 2)
    which = _match(centres, TRUE_CENTRES)
    assert sorted(which) == list(range(5))  # one centre per cluster
    # with separated clusters, Lloyd's fixed point is exactly each cluster's sample mean
    means = np.stack([x[labels == j].mean(0) for j in range(5)])
    np.testing.assert_allclose(centres, means[which], atol=1e-5)
    # ... which is within 4 standard errors (4·0.4/√40 ≈ 0.25) of the true centre
    assert np.max(np.linalg.norm(centres - TRUE_CENTRES[which], axis=1)) < 0.25


def test_kmedoids_returns_the_exact_medoids(rng):
    x, labels = _clusters(rng)
    med = np.asarray(aet.utils.centroids_kmedoids(jnp.asarray(x), 5, jax.random.key(1)))
    idx = np.asarray(aet.utils.centroids_kmedoids(jnp.asarray(x), 5, jax.random.key(1), return_index=True))
    np.testing.assert_array_equal(med, x[idx])  # medoids are data points
    which = labels[idx]
    assert sorted(which) == list(range(5))
    for i, j in zip(idx, which):  # brute-force medoid of each true cluster (float64)
        members = np.flatnonzero(labels == j)
        xs = x[members].astype(np.float64)
        cost = np.linalg.norm(xs[:, None] - xs[None], axis=-1).sum(1)
        assert i == members[np.argmin(cost)]


def test_kmeans_keeps_data_shape_and_jits(rng):
    x, labels = _clusters(rng, n_per=10)
    x3 = jnp.asarray(x.reshape(-1, 1, 2))  # data shape (1, 2)
    eager = aet.utils.centroids_kmeans(x3, 5, jax.random.key(2), n_iter=15)
    jitted = jax.jit(aet.utils.centroids_kmeans, static_argnums=1, static_argnames="n_iter")(
        x3, 5, jax.random.key(2), n_iter=15
    )
    assert eager.shape == (5, 1, 2)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)
    means = np.stack([x[labels == j].mean(0) for j in range(5)])
    got = np.asarray(eager)[:, 0]
    np.testing.assert_allclose(got, means[_match(got, TRUE_CENTRES)], atol=1e-5)


def test_kmedoids_jits_and_handles_duplicates():
    # 3 distinct points, each repeated: k = 3 must pick one copy of each
    base = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    x = jnp.asarray(np.repeat(base, 4, axis=0))
    f = jax.jit(aet.utils.centroids_kmedoids, static_argnums=1)
    med = np.asarray(f(x, 3, jax.random.key(3)))
    assert sorted(map(tuple, med.tolist())) == sorted(map(tuple, base.tolist()))


def test_centroids_bad_input():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="k"):
        aet.utils.centroids_kmeans(x, 5, jax.random.key(0))
    with pytest.raises(ValueError, match="k"):
        aet.utils.centroids_kmedoids(x, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="n_iter"):
        aet.utils.centroids_kmeans(x, 2, jax.random.key(0), n_iter=-1)


def test_locality_sampler_draws_true_nearest_neighbours(rng):
    x = rng.standard_normal((60, 3)).astype(np.float32)
    idx = np.asarray(aet.utils.locality_sampler(jnp.asarray(x), jax.random.key(0), 5, 3, 6, index=True))
    assert idx.shape == (5 + 5 * 3,)
    primary, secondary = idx[:5], idx[5:].reshape(5, 3)
    assert len(set(primary.tolist())) == 5  # without replacement
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=-1)
    for p, sec in zip(primary, secondary):
        knn = set(np.argsort(d[p])[:6].tolist())  # brute-force 6 nearest (the point itself included)
        assert set(sec.tolist()) <= knn and len(set(sec.tolist())) == 3
    pts = np.asarray(aet.utils.locality_sampler(jnp.asarray(x), jax.random.key(0), 5, 3, 6))
    np.testing.assert_array_equal(pts, x[idx])
    with pytest.raises(ValueError, match="n_secondary"):
        aet.utils.locality_sampler(jnp.asarray(x), jax.random.key(0), 5, 7, 6)


def _tiny_rhvae():
    import flax.linen as nn

    enc = aet.JointGaussianLogEncoder(aet.MLP([8], final_activation=nn.tanh), 2)
    dec = aet.BernoulliDecoder(aet.MLP([8], final_activation=nn.tanh), 16)
    return aet.RHVAE(enc, dec, aet.rhvae.MetricNetwork(aet.MLP([8]), 2), 6)


def test_rhvae_centroid_selection_uses_the_users_key(rng):
    """The k-means key comes from the init key (the stored seed) and the step count: fit's
    end-of-epoch update stores select_centroid_data with centroid_key(variables, step); another
    seed picks other centroids, the same seed the same ones (no hard-coded PRNGKey(0))."""
    import functools

    import optax

    model = _tiny_rhvae()
    x = jnp.asarray(rng.uniform(size=(96, 16)) > 0.5, jnp.float32)
    seeds = [int(model.init(jax.random.key(k), x[:1])["metric"]["seed"]) for k in (0, 1, 0)]
    assert seeds[0] == seeds[2] != seeds[1]
    v = model.init(jax.random.key(0), x[:1])
    trainer = aet.train.make_trainer(model, functools.partial(aet.rhvae.loss, model), optax.adam(1e-3))
    state = trainer.init(v)._replace(step=jnp.asarray(2))  # as after two training steps
    v = jax.jit(trainer.end_epoch)(state, x).variables  # fit's end-of-epoch metric update
    select = jax.jit(aet.rhvae.select_centroid_data, static_argnums=0)
    key = aet.rhvae.centroid_key(v, 2)
    np.testing.assert_array_equal(np.asarray(select(model, v, x, key)), np.asarray(v["metric"]["x"]))
    picks = {bytes(np.asarray(select(model, {**v, "metric": {**v["metric"], "seed": s}}, x,
                                     aet.rhvae.centroid_key({"metric": {"seed": s}}, 2))))
             for s in (seeds[0], seeds[1], seeds[0] + 1)}
    assert len(picks) == 3  # three seeds, three different choices
    old = np.asarray(select(model, v, x, jax.random.PRNGKey(0)))
    assert not np.array_equal(old, np.asarray(v["metric"]["x"]))


def test_kmeans_plusplus_draws_the_next_seed_with_probability_proportional_to_d_squared():
    """The seeding's joint law of (first, second) on 4 points of a line: P = ¼ · d²(i, j) / Σₗ d²(i, l),
    from 20 000 keys (each cell within 4.5 binomial standard deviations); identical points fall back
    to uniform draws."""
    from aetk_jax.utils import _plusplus_index

    pts = jnp.asarray([0.0, 1.0, 2.0, 5.0])
    d2 = (pts[:, None] - pts[None, :]) ** 2
    n_keys = 20000
    draw = jax.jit(jax.vmap(lambda k: _plusplus_index(k, lambda i: d2[i], 4, 2)))
    idx = np.asarray(draw(jax.random.split(jax.random.key(0), n_keys)))
    freq = np.zeros((4, 4))
    np.add.at(freq, (idx[:, 0], idx[:, 1]), 1.0)
    d2n = np.asarray(d2, np.float64)
    p = 0.25 * d2n / d2n.sum(1, keepdims=True)
    sd = np.sqrt(n_keys * p * (1 - p))
    assert np.all(np.diag(freq) == 0)  # a chosen point (D = 0) is never drawn again
    np.testing.assert_array_less(np.abs(freq - n_keys * p), 4.5 * sd + 1e-9)
    same = jnp.zeros(4)  # Σ D² = 0 after the first seed: uniform, valid indices
    idx = np.asarray(jax.vmap(lambda k: _plusplus_index(k, lambda i: same, 4, 3))(jax.random.split(jax.random.key(1), 400)))
    assert idx.min() >= 0 and idx.max() <= 3 and len(np.unique(idx[:, 2])) == 4
