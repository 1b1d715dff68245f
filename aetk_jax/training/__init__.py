"""The training layer: devices → step → epoch → hooks → fit (each imports only those before it).

The public names are in ``aet.train`` (and ``aet.parallel`` for meshes); see
``aetk_jax/train.py`` for the map of this package.
"""
