"""Packaging (issue 23): the default install pulls no TensorFlow (Probability), and every
runtime dependency is imported by the library."""
from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

ROOT = os.path.join(os.path.dirname(__file__), "..")
IMPORT_NAME = {"scikit-learn": "sklearn", "orbax-checkpoint": r"orbax\.checkpoint"}


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _closure(requirements):
    """Every installed distribution the requirements pull in (no extras), by normalised name."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo += [q for q in map(Requirement, dist.requires or []) if q.marker is None or q.marker.evaluate({"extra": ""})]
    return seen


def test_default_install_pulls_no_tensorflow():
    pulled = _closure(_project()["dependencies"])
    assert {"jax", "flax", "optax"} <= pulled  # the walk followed the installed metadata
    assert not {n for n in pulled if n.startswith(("tensorflow", "tfp", "tf-"))}, sorted(pulled)
    assert "distrax" not in pulled


def test_every_runtime_dependency_is_imported():
    sources = ""
    for folder, _, files in os.walk(os.path.join(ROOT, "aetk_jax")):
        sources += "".join(open(os.path.join(folder, f), encoding="utf-8").read() for f in files if f.endswith(".py"))
    for dep in _project()["dependencies"]:
        name = Requirement(dep).name.lower()
        module = IMPORT_NAME.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), f"{name} is a dependency but never imported"
